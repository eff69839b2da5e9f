"""Still images: header-checked reads with EXIF orientation applied, metadata-free writes.

The size is read from the file header before any pixel is decoded, so a
decompression bomb is refused without allocating it. Pillow is not needed: the
four headers and the one EXIF tag we use (Orientation) take a few lines each.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import numpy as np
import numpy.typing as npt

from edgeguard.errors import FileError, InputError
from edgeguard.frames import Image
from edgeguard.media.checks import check_input

__all__ = ["read_image", "write_image"]

log = logging.getLogger(__name__)

# Write failures worth retrying later: the disk, not the input, is the problem.
_TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO})

_EXIF_ORIENTATION_TAG = 0x0112
_TIFF_SHORT = 3
_MAX_EXIF_BYTES = 1 << 20  # EXIF beyond 1 MiB is not worth reading for one tag
# JPEG start-of-frame markers: C0-CF except DHT (C4), JPG (C8) and DAC (CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_NO_LENGTH = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RSTn stand alone


class _BadHeaderError(Exception):
    """The header is not what its signature promises."""


@dataclass(frozen=True)
class _Header:
    fmt: str  # "jpeg", "png", "webp" or "bmp"
    width: int
    height: int
    orientation: int = 1  # EXIF orientation 1..8
    data_start: int = 0  # JPEG: offset of the first scan, for the truncation check
    # Bytes per decoded pixel at the file's own sample depth (16-bit PNG: up to 8).
    pixel_bytes: int = 4


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise _BadHeaderError("file ends inside the header")
    return data


def _exif_orientation(tiff: bytes) -> int:
    """Orientation (1..8) from a TIFF-structured EXIF block; 1 if absent or unreadable."""
    if tiff.startswith(b"Exif\0\0"):  # some WebP/PNG writers keep the JPEG prefix
        tiff = tiff[6:]
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    order = "<" if tiff[:2] == b"II" else ">"
    magic, ifd = struct.unpack_from(order + "HI", tiff, 2)
    if magic != 42 or ifd + 2 > len(tiff):
        return 1
    (count,) = struct.unpack_from(order + "H", tiff, ifd)
    for i in range(count):
        entry = ifd + 2 + 12 * i
        if entry + 12 > len(tiff):
            break
        tag, kind, _n = struct.unpack_from(order + "HHI", tiff, entry)
        if tag == _EXIF_ORIENTATION_TAG and kind == _TIFF_SHORT:
            (value,) = struct.unpack_from(order + "H", tiff, entry + 8)
            return int(value) if 1 <= value <= 8 else 1
    return 1


def _jpeg_header(f: BinaryIO) -> _Header:
    f.seek(2)
    orientation = 1
    size: tuple[int, int] | None = None
    while True:
        if _read_exact(f, 1) != b"\xff":
            raise _BadHeaderError("JPEG marker expected")
        marker = _read_exact(f, 1)[0]
        while marker == 0xFF:  # fill bytes
            marker = _read_exact(f, 1)[0]
        if marker in _JPEG_NO_LENGTH:
            continue
        if marker == 0xD9:
            raise _BadHeaderError("JPEG ends before its first scan")
        (length,) = struct.unpack(">H", _read_exact(f, 2))
        if length < 2:
            raise _BadHeaderError("JPEG segment length below 2")
        if marker == 0xDA:  # start of scan: everything we need came before it
            if size is None:
                raise _BadHeaderError("JPEG scan before any frame header")
            return _Header("jpeg", size[0], size[1], orientation, data_start=f.tell())
        if marker in _JPEG_SOF and size is None:
            _precision, height, width = struct.unpack(">BHH", _read_exact(f, 5))
            size = (width, height)
            f.seek(length - 7, os.SEEK_CUR)
        elif marker == 0xE1 and orientation == 1:
            segment = _read_exact(f, length - 2)
            if segment.startswith(b"Exif\0\0"):
                orientation = _exif_orientation(segment[6:])
        else:
            f.seek(length - 2, os.SEEK_CUR)


def _png_header(f: BinaryIO) -> _Header:
    f.seek(8)
    length, kind = struct.unpack(">I4s", _read_exact(f, 8))
    if kind != b"IHDR" or length < 8:
        raise _BadHeaderError("PNG without IHDR")
    width, height, depth, color = struct.unpack(">IIBB", _read_exact(f, 10))
    f.seek(length - 10 + 4, os.SEEK_CUR)  # rest of IHDR and its CRC
    # Grey, -, RGB, palette (decoded to RGB), grey+alpha, -, RGBA.
    channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(color, 4)
    pixel_bytes = channels * (2 if depth == 16 and color != 3 else 1)
    orientation = 1
    # eXIf belongs before the image data; stop there.
    while True:
        head = f.read(8)
        if len(head) < 8:
            break
        length, kind = struct.unpack(">I4s", head)
        if kind in (b"IDAT", b"IEND"):
            break
        if kind == b"eXIf" and length <= _MAX_EXIF_BYTES:
            orientation = _exif_orientation(_read_exact(f, length))
            f.seek(4, os.SEEK_CUR)
        else:
            f.seek(length + 4, os.SEEK_CUR)
    return _Header("png", width, height, orientation, pixel_bytes=pixel_bytes)


def _webp_header(f: BinaryIO, file_size: int) -> _Header:
    riff_size, form = struct.unpack("<I4s", _read_exact(f, 8)[0:8])
    if form != b"WEBP":
        raise _BadHeaderError("RIFF file is not WebP")
    if riff_size + 8 > file_size:
        raise _BadHeaderError(f"WebP truncated ({file_size} of {riff_size + 8} bytes)")
    kind, length = struct.unpack("<4sI", _read_exact(f, 8))
    data = _read_exact(f, min(length, 10))
    if kind == b"VP8X" and len(data) >= 10:
        width = 1 + int.from_bytes(data[4:7], "little")
        height = 1 + int.from_bytes(data[7:10], "little")
    elif kind == b"VP8 " and len(data) >= 10 and data[3:6] == b"\x9d\x01\x2a":
        width = struct.unpack("<H", data[6:8])[0] & 0x3FFF
        height = struct.unpack("<H", data[8:10])[0] & 0x3FFF
    elif kind == b"VP8L" and len(data) >= 5 and data[0] == 0x2F:
        bits = struct.unpack("<I", data[1:5])[0]
        width, height = 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    else:
        raise _BadHeaderError(f"unknown WebP chunk {kind!r}")
    orientation = 1
    if kind == b"VP8X":  # only the extended format carries EXIF
        f.seek(20 + length + (length & 1))
        while True:
            head = f.read(8)
            if len(head) < 8:
                break
            kind, length = struct.unpack("<4sI", head)
            if kind == b"EXIF" and length <= _MAX_EXIF_BYTES:
                orientation = _exif_orientation(_read_exact(f, length))
                break
            f.seek(length + (length & 1), os.SEEK_CUR)
    return _Header("webp", width, height, orientation)


def _bmp_header(f: BinaryIO) -> _Header:
    f.seek(14)
    (dib_size,) = struct.unpack("<I", _read_exact(f, 4))
    if dib_size == 12:  # OS/2 BITMAPCOREHEADER
        width, height = struct.unpack("<HH", _read_exact(f, 4))
    else:
        width, height = struct.unpack("<ii", _read_exact(f, 8))
    return _Header("bmp", width, abs(height))  # negative height: top-down rows


def _read_header(path: Path, file_size: int) -> _Header:
    with path.open("rb") as f:
        magic = f.read(12)
        f.seek(0)
        if magic.startswith(b"\xff\xd8"):
            return _jpeg_header(f)
        if magic.startswith(b"\x89PNG\r\n\x1a\n"):
            return _png_header(f)
        if magic.startswith(b"RIFF") and magic[8:12] == b"WEBP":
            f.seek(4)
            return _webp_header(f, file_size)
        if magic.startswith(b"BM"):
            return _bmp_header(f)
    raise InputError(path, "not a JPEG, PNG, WebP or BMP image")


def _orient(image: Image, orientation: int) -> Image:
    """Turn pixels as EXIF orientation 2..8 asks (the same result as cv2.IMREAD_COLOR)."""
    if orientation == 2:
        image = image[:, ::-1]
    elif orientation == 3:
        image = image[::-1, ::-1]
    elif orientation == 4:
        image = image[::-1]
    elif orientation == 5:
        image = image.swapaxes(0, 1)
    elif orientation == 6:
        image = np.rot90(image, k=-1)
    elif orientation == 7:
        image = image.swapaxes(0, 1)[::-1, ::-1]
    elif orientation == 8:
        image = np.rot90(image, k=1)
    return np.ascontiguousarray(image)


def _to_bgr(path: Path, image: npt.NDArray[np.integer[Any] | np.floating[Any]]) -> Image:
    if image.dtype == np.uint16:  # 16-bit PNG: keep the high byte
        image = (image.astype(np.uint16) >> 8).astype(np.uint8)
    if image.dtype != np.uint8:
        raise InputError(path, f"unsupported sample type {image.dtype}", stage="decode")
    if image.ndim == 2:
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), dtype=np.uint8)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return np.asarray(image, dtype=np.uint8)
    raise InputError(path, f"unsupported channel layout {image.shape}", stage="decode")


def read_image(path: Path, *, max_pixels: int, max_frame_bytes: int | None = None) -> Image:
    """Decode an image to HxWx3 BGR (HxWx4 BGRA if it has alpha), EXIF orientation applied.

    Raises InputError for a missing, empty, truncated or undecodable file, and
    for dimensions above `max_pixels` or a decoded picture above `max_frame_bytes`
    at the file's own sample depth (both checked from the header, before decoding).
    """
    file_size = check_input(path)
    try:
        header = _read_header(path, file_size)
    except _BadHeaderError as exc:
        raise InputError(path, f"corrupt image header: {exc}") from exc
    except (OSError, struct.error) as exc:
        raise InputError(path, f"unreadable image header: {exc}") from exc
    if header.width <= 0 or header.height <= 0:
        raise InputError(path, f"invalid image dimensions {header.width}x{header.height}")
    if header.width * header.height > max_pixels:
        raise InputError(
            path,
            f"absurd dimensions {header.width}x{header.height} exceed media.max_pixels={max_pixels}",
        )
    decoded_bytes = header.width * header.height * header.pixel_bytes
    if max_frame_bytes is not None and decoded_bytes > max_frame_bytes:
        raise InputError(
            path,
            f"decoding {header.width}x{header.height} at {header.pixel_bytes} bytes per pixel takes"
            f" {decoded_bytes >> 20} MiB, over media.max_frame_mb={max_frame_bytes >> 20}",
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(path, f"cannot read file: {exc.strerror or exc}") from exc
    # libjpeg pads a cut-off JPEG with grey and calls it a success; insist on
    # the end-of-image marker (FF D9 cannot occur inside entropy-coded data).
    if header.fmt == "jpeg" and data.find(b"\xff\xd9", header.data_start) < 0:
        raise InputError(path, "truncated JPEG (no end-of-image marker)", stage="decode", incomplete=True)
    if header.fmt == "png" and data.rfind(b"IEND") < 0:
        raise InputError(path, "truncated PNG (no IEND chunk)", stage="decode", incomplete=True)
    # UNCHANGED keeps alpha; it also skips OpenCV's own EXIF rotation, which
    # `_orient` does instead, identically for every format.
    try:
        decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # some malformed files trip OpenCV assertions
        raise InputError(path, f"corrupt {header.fmt.upper()} image ({exc})", stage="decode") from exc
    if decoded is None:
        raise InputError(path, f"corrupt {header.fmt.upper()} image (decoder refused it)", stage="decode")
    image = _to_bgr(path, decoded)
    if image.shape[:2] != (header.height, header.width):
        raise InputError(
            path,
            f"decoded size {image.shape[1]}x{image.shape[0]} differs from the header's {header.width}x{header.height}",
            stage="decode",
        )
    if header.orientation != 1:
        log.debug("%s: applying EXIF orientation %d", path, header.orientation)
        image = _orient(image, header.orientation)
    return image


_ENCODE_EXT = {"jpg": ".jpg", "jpeg": ".jpg", "png": ".png", "webp": ".webp", "bmp": ".bmp"}


def write_image(path: Path, image: Image, *, fmt: str, quality: int = 95) -> None:
    """Encode `image` (BGR or BGRA uint8) as `fmt` ("jpg", "png", ...) without any metadata.

    OpenCV writes no EXIF, XMP or text chunks for these formats, so GPS, camera
    and orientation tags of the input are gone; orientation was already applied
    to the pixels by `read_image`. Write errors become FileError (transient for
    a full disk); a partial file is removed.
    """
    ext = _ENCODE_EXT.get(fmt.lower().lstrip("."))
    if ext is None:
        raise ValueError(f"unsupported image format {fmt!r}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be 1..100, got {quality}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected a BGR or BGRA uint8 image, got {image.shape} {image.dtype}")
    if ext == ".jpg" and image.shape[2] == 4:
        image = np.ascontiguousarray(image[:, :, :3])  # JPEG has no alpha channel
    params: list[int] = []
    if ext == ".jpg":
        params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    elif ext == ".webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, quality]
    elif ext == ".png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, encoded = cv2.imencode(ext, image, params)
    if not ok:
        raise FileError(path, f"OpenCV could not encode {ext}", stage="encode")
    try:
        with path.open("wb") as f:
            f.write(encoded.tobytes())
    except OSError as exc:
        _remove_partial(path)
        raise FileError(
            path,
            f"writing the image failed: {exc.strerror or exc}",
            stage="encode",
            transient=exc.errno in _TRANSIENT_ERRNOS,
        ) from exc


def _remove_partial(path: Path) -> None:
    # Only a regular file we were writing: never a device such as /dev/full.
    try:
        if path.is_file():
            path.unlink()
    except OSError as exc:
        log.warning("%s: could not remove the partial output: %s", path, exc)
