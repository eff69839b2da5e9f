"""Protect one file: decode, detect, hide, encode, all or nothing.

Output goes to a temporary name and is renamed into place only when every
frame was analysed and written; on any failure the partial file is removed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeguard.config import Config
from edgeguard.detectors import Detector, create_detector
from edgeguard.errors import Cancelled, EdgeguardError, FileError, InputError
from edgeguard.media import image as image_io
from edgeguard.media import media_kind
from edgeguard.media import video as video_io
from edgeguard.protection import hide, rasterize

log = logging.getLogger(__name__)

Progress = Callable[[int, int | None], None]


@dataclass(frozen=True)
class Result:
    input: str
    output: str
    kind: str
    frames: int
    detections: int
    seconds: float
    fps: float
    model: str
    target: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def temp_name(dst: Path, tmp_dir: Path | None = None) -> Path:
    """A hidden name beside `dst` (or in `tmp_dir`) keeping the extension for the muxer."""
    folder = tmp_dir if tmp_dir is not None else dst.parent
    return folder / f".{dst.stem}.{uuid.uuid4().hex[:8]}.partial{dst.suffix}"


def default_output(src: Path, out_dir: Path) -> Path:
    kind = media_kind(src)
    return out_dir / (src.stem + ".mp4" if kind == "video" else src.name)


class Engine:
    """Holds the loaded model; protects one file at a time."""

    def __init__(self, cfg: Config, detector: Detector | None = None) -> None:
        self.cfg = cfg
        self.detector = detector if detector is not None else create_detector(cfg)

    def protect_file(
        self,
        src: Path,
        dst: Path,
        *,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
        tmp_dir: Path | None = None,
    ) -> Result:
        kind = media_kind(src)
        if kind is None:
            raise InputError(src, f"unsupported file type {src.suffix!r}")
        tmp = temp_name(dst, tmp_dir)
        started = time.monotonic()
        try:
            if kind == "video":
                frames, found = self._video(src, tmp, progress, cancel)
            else:
                frames, found = self._image(src, tmp)
            _fsync(tmp)
            os.replace(tmp, dst)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        seconds = time.monotonic() - started
        return Result(
            str(src), str(dst), kind, frames, found, round(seconds, 3),
            round(frames / seconds, 3) if seconds > 0 else 0.0,
            self.detector.model_name, self.detector.target,
        )

    def _image(self, src: Path, tmp: Path) -> tuple[int, int]:
        img = image_io.read_image(src, max_pixels=self.cfg.media.max_pixels)
        found = self._protect(img, src)
        image_io.write_image(tmp, img, fmt=src.suffix.lower().lstrip("."), quality=self.cfg.media.image_quality)
        return 1, found

    def _video(self, src: Path, tmp: Path, progress: Progress | None, cancel: threading.Event | None) -> tuple[int, int]:
        v = self.cfg.video
        frames = found = 0
        with video_io.VideoReader(src, max_pixels=self.cfg.media.max_pixels) as reader:
            total = reader.info.frames
            with video_io.VideoWriter(
                tmp, reader.info, source=src, crf=v.crf, preset=v.preset, audio=v.audio,
                keep_metadata=v.keep_metadata,
            ) as writer:
                for frame in reader.frames():
                    if cancel is not None and cancel.is_set():
                        raise Cancelled(src)
                    found += self._protect(frame.image, src)
                    writer.write(frame, frame.image)
                    frames += 1
                    if progress is not None:
                        progress(frames, total)
        return frames, found

    def _protect(self, img: Any, src: Path) -> int:
        try:
            det = self.detector.detect(img)
        except EdgeguardError:
            raise
        except Exception as exc:  # noqa: BLE001 - any analysis fault fails the file closed
            raise FileError(src, f"detection failed: {exc}", stage="detect") from exc
        h, w = img.shape[:2]
        c = self.cfg.protect
        shape = c.shape if self.detector.has_masks else "box"
        hide(img, rasterize(det, w, h, shape=shape, dilate=c.dilate), c)
        return len(det)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
