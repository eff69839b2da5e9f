"""read_image/write_image on real photos and hand-made files: orientation, metadata, bombs."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeguard.errors import FileError, InputError
from edgeguard.frames import Image
from edgeguard.media import IMAGE_EXTENSIONS
from edgeguard.media.image import read_image, write_image
from tests.conftest import media

MAX_PIXELS = 40_000_000


def imread(path: Path, flags: int = cv2.IMREAD_COLOR) -> Image:
    image = cv2.imread(str(path), flags)
    assert image is not None, f"OpenCV cannot read {path}"
    return np.asarray(image, dtype=np.uint8)


def photo(name: str) -> Path:
    return media(name)


# ------------------------------------------------------------------ hand-made EXIF


def exif_tiff(orientation: int) -> bytes:
    """Little-endian TIFF: IFD0 with Make, Orientation and a GPS IFD (latitude 48°51'24\" N)."""
    make = b"Acme\0"
    ifd0_at, make_at = 8, 8 + 2 + 3 * 12 + 4
    gps_at = make_at + 8
    lat_at = gps_at + 2 + 2 * 12 + 4
    out = b"II" + struct.pack("<HI", 42, ifd0_at)
    out += struct.pack("<H", 3)
    out += struct.pack("<HHII", 0x010F, 2, len(make), make_at)  # Make, ASCII
    out += struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)  # Orientation, SHORT
    out += struct.pack("<HHII", 0x8825, 4, 1, gps_at)  # GPSInfo IFD pointer
    out += struct.pack("<I", 0)
    out += make.ljust(8, b"\0")
    out += struct.pack("<H", 2)
    out += struct.pack("<HHI2s2x", 0x0001, 2, 2, b"N\0")  # GPSLatitudeRef
    out += struct.pack("<HHII", 0x0002, 5, 3, lat_at)  # GPSLatitude, 3 RATIONALs
    out += struct.pack("<I", 0)
    out += struct.pack("<6I", 48, 1, 51, 1, 2400, 100)
    return out


def jpeg_with_exif(image: Image, orientation: int) -> bytes:
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    payload = b"Exif\0\0" + exif_tiff(orientation)
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    data: bytes = encoded.tobytes()
    return data[:2] + app1 + data[2:]  # right after SOI, where EXIF lives


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_with_exif(image: Image, orientation: int) -> bytes:
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    data: bytes = encoded.tobytes()
    ihdr_end = 8 + 8 + 13 + 4
    extra = png_chunk(b"eXIf", exif_tiff(orientation)) + png_chunk(b"tEXt", b"Comment\0GPS 48.8584N")
    return bytes(data[:ihdr_end] + extra + data[ihdr_end:])


def webp_with_exif(image: Image, orientation: int) -> bytes:
    """Extended (VP8X) WebP around OpenCV's simple lossy WebP, plus an EXIF chunk."""
    ok, encoded = cv2.imencode(".webp", image, [cv2.IMWRITE_WEBP_QUALITY, 90])
    assert ok
    simple: bytes = encoded.tobytes()
    assert simple[12:16] == b"VP8 "
    height, width = image.shape[:2]
    vp8x: bytes = struct.pack("<B3x", 0x08) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    exif = exif_tiff(orientation)
    body = b"WEBP" + b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x + simple[12:]
    body += b"EXIF" + struct.pack("<I", len(exif)) + exif + (b"\0" if len(exif) % 2 else b"")
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_orientation_tag_is_written(tmp_path: Path) -> None:
    # Guard the helpers: OpenCV's own reader must see the tag we wrote.
    source = imread(photo("city.jpg"))
    path = tmp_path / "tagged.jpg"
    path.write_bytes(jpeg_with_exif(source, 6))
    assert imread(path).shape == (800, 564, 3)


def sample() -> Image:
    """A small asymmetric picture, so every flip and turn shows."""
    return np.ascontiguousarray(imread(photo("city.jpg"))[:120, :200])


# ------------------------------------------------------------------ reading


def test_extensions() -> None:
    assert {".jpg", ".jpeg", ".png", ".webp", ".bmp"} <= IMAGE_EXTENSIONS


@pytest.mark.parametrize("name", ["city.jpg", "messi5.jpg"])
def test_reads_shared_photos_like_opencv(name: str) -> None:
    path = photo(name)
    image = read_image(path, max_pixels=MAX_PIXELS)
    assert image.dtype == np.uint8
    assert image.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(image, imread(path))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_opencv(tmp_path: Path, orientation: int) -> None:
    path = tmp_path / f"o{orientation}.jpg"
    path.write_bytes(jpeg_with_exif(sample(), orientation))
    image = read_image(path, max_pixels=MAX_PIXELS)
    # OpenCV's IMREAD_COLOR applies EXIF orientation itself: an independent oracle.
    np.testing.assert_array_equal(image, imread(path))
    assert image.shape[:2] == ((200, 120) if orientation >= 5 else (120, 200))
    assert image.flags["C_CONTIGUOUS"]


@pytest.mark.parametrize(("maker", "suffix"), [(png_with_exif, ".png"), (webp_with_exif, ".webp")])
def test_exif_orientation_in_png_and_webp(tmp_path: Path, maker: object, suffix: str) -> None:
    base = sample()
    path = tmp_path / f"rotated{suffix}"
    path.write_bytes(maker(base, 6))  # type: ignore[operator]
    upright = read_image(path, max_pixels=MAX_PIXELS)
    plain = imread(path, cv2.IMREAD_IGNORE_ORIENTATION | cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(upright, np.rot90(plain, -1))  # 6 = turn 90° clockwise


def test_alpha_is_kept(tmp_path: Path) -> None:
    bgra = np.asarray(cv2.cvtColor(sample(), cv2.COLOR_BGR2BGRA), dtype=np.uint8)
    bgra[:, :50, 3] = 0
    for suffix, params in ((".png", []), (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101])):  # 101: lossless
        path = tmp_path / f"alpha{suffix}"
        ok, encoded = cv2.imencode(suffix, bgra, params)
        assert ok
        path.write_bytes(encoded.tobytes())
        image = read_image(path, max_pixels=MAX_PIXELS)
        assert image.shape == (120, 200, 4)
        np.testing.assert_array_equal(image[:, :, 3], bgra[:, :, 3])


def test_grey_and_16_bit_become_bgr(tmp_path: Path) -> None:
    grey16 = (np.linspace(0, 65535, 200 * 120).reshape(120, 200)).astype(np.uint16)
    path = tmp_path / "grey16.png"
    assert cv2.imwrite(str(path), grey16)
    image = read_image(path, max_pixels=MAX_PIXELS)
    assert image.shape == (120, 200, 3) and image.dtype == np.uint8
    assert image[-1, -1, 0] == 255


def test_bmp(tmp_path: Path) -> None:
    path = tmp_path / "a.bmp"
    assert cv2.imwrite(str(path), sample())
    np.testing.assert_array_equal(read_image(path, max_pixels=MAX_PIXELS), sample())


# ------------------------------------------------------------------ writing


@pytest.mark.parametrize("fmt", ["jpg", "jpeg", "png", "webp", "bmp"])
def test_write_drops_exif_and_keeps_orientation_in_pixels(tmp_path: Path, fmt: str) -> None:
    source = tmp_path / "in.jpg"
    source.write_bytes(jpeg_with_exif(sample(), 6))
    image = read_image(source, max_pixels=MAX_PIXELS)
    out = tmp_path / f"out.{fmt}"
    write_image(out, image, fmt=fmt)
    data = out.read_bytes()
    for leak in (b"Exif", b"eXIf", b"Acme", b"II*\0", b"MM\0*", b"GPS", b"XMP", b"tEXt", b"iTXt"):
        assert leak not in data, f"{leak!r} survived in {fmt}"
    if fmt in ("jpg", "jpeg"):
        assert b"\xff\xe1" not in data, "no APP1 segment at all"
    back = imread(out, cv2.IMREAD_UNCHANGED)
    assert back.shape == (200, 120, 3), "orientation is in the pixels, nothing left to rotate"
    assert np.abs(back.astype(int) - image.astype(int)).mean() < 4


def test_png_metadata_chunks_are_dropped(tmp_path: Path) -> None:
    source = tmp_path / "in.png"
    source.write_bytes(png_with_exif(sample(), 1))
    out = tmp_path / "out.png"
    write_image(out, read_image(source, max_pixels=MAX_PIXELS), fmt="png")
    data = out.read_bytes()
    assert b"eXIf" not in data and b"tEXt" not in data and b"48.8584" not in data


def test_jpeg_quality_and_alpha_drop(tmp_path: Path) -> None:
    bgra = np.asarray(cv2.cvtColor(sample(), cv2.COLOR_BGR2BGRA), dtype=np.uint8)
    low, high = tmp_path / "low.jpg", tmp_path / "high.jpg"
    write_image(low, bgra, fmt="jpg", quality=20)
    write_image(high, bgra, fmt="jpg", quality=95)
    assert low.stat().st_size < high.stat().st_size
    assert imread(high, cv2.IMREAD_UNCHANGED).shape == (120, 200, 3)


def test_write_rejects_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported image format"):
        write_image(tmp_path / "x.gif", sample(), fmt="gif")


def test_disk_full_is_transient() -> None:
    device = Path("/dev/full")
    if not device.is_char_device():
        pytest.skip("/dev/full MISSING: cannot simulate a full disk")
    with pytest.raises(FileError) as caught:
        write_image(device, sample(), fmt="png")
    assert caught.value.transient and caught.value.stage == "encode"
    assert device.is_char_device()


# ------------------------------------------------------------------ bad inputs


def test_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        read_image(tmp_path / "gone.jpg", max_pixels=MAX_PIXELS)
    empty = tmp_path / "empty.jpg"
    empty.touch()
    with pytest.raises(InputError, match="empty file"):
        read_image(empty, max_pixels=MAX_PIXELS)


def test_not_an_image(tmp_path: Path) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("hello\n" * 100)
    with pytest.raises(InputError, match="not a JPEG, PNG, WebP or BMP"):
        read_image(text, max_pixels=MAX_PIXELS)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n" + np.random.default_rng(3).bytes(5000))
    with pytest.raises(InputError):
        read_image(junk, max_pixels=MAX_PIXELS)


@pytest.mark.parametrize("name", ["city.jpg", "messi5.jpg"])
def test_truncated_jpeg(tmp_path: Path, name: str) -> None:
    data = photo(name).read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(InputError, match="truncated JPEG") as caught:
        read_image(cut, max_pixels=MAX_PIXELS)
    assert caught.value.stage == "decode"


def test_truncated_png(tmp_path: Path) -> None:
    ok, encoded = cv2.imencode(".png", sample())
    assert ok
    cut = tmp_path / "cut.png"
    cut.write_bytes(encoded.tobytes()[:3000])
    with pytest.raises(InputError, match="truncated PNG"):
        read_image(cut, max_pixels=MAX_PIXELS)


def test_big_real_photo_refused_by_max_pixels() -> None:
    with pytest.raises(InputError) as caught:
        read_image(photo("messi5.jpg"), max_pixels=1_000_000)
    assert caught.value.reason == "absurd dimensions 1680x1050 exceed media.max_pixels=1000000"


def test_decompression_bomb_png_refused_from_header(tmp_path: Path) -> None:
    # 100000 x 100000 RGB would need 30 GB; the header alone must stop it.
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 10_000)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )
    with pytest.raises(InputError, match=r"absurd dimensions 100000x100000 exceed media.max_pixels=40000000"):
        read_image(bomb, max_pixels=MAX_PIXELS)


def test_decompression_bomb_jpeg_refused_from_header(tmp_path: Path) -> None:
    data = bytearray(photo("city.jpg").read_bytes())
    sof = next(i for i in range(2, len(data) - 1) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC1, 0xC2))
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60_000, 60_000)  # height, width
    bomb = tmp_path / "bomb.jpg"
    bomb.write_bytes(bytes(data))
    with pytest.raises(InputError, match="absurd dimensions 60000x60000"):
        read_image(bomb, max_pixels=MAX_PIXELS)


def test_webp_header_sizes(tmp_path: Path) -> None:
    for params, chunk in (([cv2.IMWRITE_WEBP_QUALITY, 80], b"VP8 "), ([cv2.IMWRITE_WEBP_QUALITY, 101], b"VP8L")):
        ok, encoded = cv2.imencode(".webp", sample(), params)
        assert ok and encoded.tobytes()[12:16] == chunk
        path = tmp_path / "a.webp"
        path.write_bytes(encoded.tobytes())
        with pytest.raises(InputError, match="absurd dimensions 200x120"):
            read_image(path, max_pixels=100)
        assert read_image(path, max_pixels=MAX_PIXELS).shape == (120, 200, 3)


def test_memory_per_pixel_is_budgeted_from_the_header(tmp_path: Path) -> None:
    """16-bit RGBA decodes to 8 bytes a pixel: the budget counts that, not only the pixel count."""
    rgba16 = np.full((600, 800, 4), 40000, np.uint16)
    deep = tmp_path / "deep.png"
    assert cv2.imwrite(str(deep), rgba16)
    budget = 600 * 800 * 8 - 1
    with pytest.raises(InputError, match=r"at 8 bytes per pixel .* over media.max_frame_mb"):
        read_image(deep, max_pixels=MAX_PIXELS, max_frame_bytes=budget)
    # The same picture at 8 bits (4 bytes a pixel) fits the same budget.
    shallow = tmp_path / "shallow.png"
    assert cv2.imwrite(str(shallow), (rgba16 >> 8).astype(np.uint8))
    assert read_image(shallow, max_pixels=MAX_PIXELS, max_frame_bytes=budget).shape == (600, 800, 4)
