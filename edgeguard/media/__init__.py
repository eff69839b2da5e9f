"""Media input and output: decoding, encoding, and what kind of file a path is.

The readers and writers load on first use: importing `edgeguard.media.kinds`
imports this package first, and the config needs the extensions without
paying for PyAV and OpenCV.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from edgeguard.media.kinds import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, media_kind

if TYPE_CHECKING:
    from edgeguard.media.image import read_image, write_image
    from edgeguard.media.video import Frame, VideoInfo, VideoReader, VideoWriter

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

# Name -> the submodule that defines it.
_LAZY = {
    "read_image": "image",
    "write_image": "image",
    "Frame": "video",
    "VideoInfo": "video",
    "VideoReader": "video",
    "VideoWriter": "video",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value
