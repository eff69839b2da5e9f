"""PyAV pieces the video and audio modules both need: opening an input, its start offset, error text."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import av.error
from av.container import InputContainer

from edgeguard.errors import InputError


def ffmpeg_reason(exc: BaseException) -> str:
    """FFmpeg's own words for `exc` when it has them (PyAV's str() adds the errno and file name)."""
    if isinstance(exc, av.error.FFmpegError) and exc.strerror:
        return exc.strerror
    return str(exc)


def open_input(path: Path) -> InputContainer:
    """Open `path` for demuxing; InputError if FFmpeg cannot read it."""
    try:
        # "replace": odd bytes in a tag must not make a valid video unreadable.
        return av.open(os.fspath(path), "r", metadata_errors="replace")
    except av.error.FFmpegError as exc:
        raise InputError(path, f"not a readable media file ({ffmpeg_reason(exc)})", incomplete=True) from exc
    except OSError as exc:
        raise InputError(path, f"cannot open file: {exc.strerror or exc}") from exc


def start_offset(container: InputContainer) -> Fraction:
    """Seconds to subtract so the output starts at 0, as the ffmpeg CLI does.

    MPEG-TS/AVCHD clips start at an arbitrary clock (1.4 s, 10 h...); kept as is,
    an MP4 would open with that much empty edit. Reader and writer shift video
    and audio by the same amount, so sync is untouched.
    """
    start = container.start_time
    return Fraction(start, av.time_base) if start is not None and start > 0 else Fraction(0)
