"""Media input and output: decoding, encoding, and what kind of file a path is."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from edgeguard.media.image import IMAGE_EXTENSIONS, read_image, write_image
from edgeguard.media.video import VIDEO_EXTENSIONS, Frame, VideoInfo, VideoReader, VideoWriter

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "Frame",
    "VideoInfo",
    "VideoReader",
    "VideoWriter",
    "media_kind",
    "read_image",
    "write_image",
]


def media_kind(path: Path) -> Literal["video", "image"] | None:
    """Classify by extension, case-insensitively ("clip.MP4" is a video)."""
    suffix = path.suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    return None
