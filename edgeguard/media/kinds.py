"""Which files are media, by extension: the one list the CLI, the daemon and the config share.

Imports neither PyAV nor OpenCV, so the config can derive its default watch
patterns from it without loading a decoder.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Literal

VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".ts", ".mts", ".m2ts",
        ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".3g2", ".ogv",
    }
)  # fmt: skip

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})

MediaKind = Literal["video", "image"]


def media_kind(path: PurePath) -> MediaKind | None:
    """Classify by extension, case-insensitively ("clip.MP4" is a video)."""
    suffix = path.suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    return None
