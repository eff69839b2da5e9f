"""ffprobe/PyAV helpers the media and engine tests share: what a user's player would see."""

from __future__ import annotations

import json
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import pytest

FFPROBE = shutil.which("ffprobe")


def ffprobe(path: Path) -> dict[str, Any]:
    if FFPROBE is None:
        pytest.skip("FFPROBE NOT INSTALLED: cannot inspect the written MP4 (apt-get install ffmpeg)")
    out = subprocess.run(
        [FFPROBE, "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def streams(probe: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [s for s in probe["streams"] if s["codec_type"] == kind]


def top_level_boxes(path: Path) -> list[str]:
    data = path.read_bytes()
    boxes, offset = [], 0
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset : offset + 4], "big")
        boxes.append(data[offset + 4 : offset + 8].decode("latin-1"))
        if size == 1:
            size = int.from_bytes(data[offset + 8 : offset + 16], "big")
        if size < 8:
            break
        offset += size
    return boxes


def frame_times(path: Path) -> list[Fraction]:
    """Presentation time of every decoded frame, in seconds, independent of the time base."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [Fraction(f.pts) * f.time_base for f in container.decode(stream) if f.pts is not None and f.time_base]


def ffmpeg(*args: str | Path) -> None:
    exe = shutil.which("ffmpeg")
    if exe is None:
        pytest.skip("FFMPEG NOT INSTALLED: cannot cut test clips (apt-get install ffmpeg)")
    subprocess.run([exe, "-v", "error", "-y", *map(str, args)], check=True)
