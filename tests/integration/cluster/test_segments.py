"""Cutting a video at its keyframes and joining the protected segments, against protecting it whole.

The cluster protects the segments on its actors; here the same engine protects them in-process, so
what is checked is the cutting and the joining: the joined output must have the input's frames,
timestamps and audio, and match the one-machine output within a small pixel tolerance.
"""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest

from edgeguard.cluster import segments
from edgeguard.config import load_config
from edgeguard.engine import Engine
from tests.conftest import media


@pytest.fixture(scope="module")
def engine(models_dir: Path) -> Engine:
    os.environ["EDGEGUARD_MODELS_DIR"] = str(models_dir)
    try:
        return Engine(load_config(None, ["detector.model=yolox_nano", "video.preset=ultrafast"]))
    finally:
        del os.environ["EDGEGUARD_MODELS_DIR"]


def _streams(path: Path) -> tuple[list[int], list[int], str]:
    """The video's pts (presentation order, seconds as Fractions' numerators are not comparable), the
    audio packets' pts, and the video codec."""
    with av.open(os.fspath(path)) as c:
        v = c.streams.video[0]
        codec = v.codec_context.name
        tb = v.time_base
        video = sorted(p.pts for p in c.demux(v) if p.size)
    with av.open(os.fspath(path)) as c:
        audio = [p.pts for p in c.demux(c.streams.audio[0]) if p.size] if c.streams.audio else []
    assert tb is not None
    return [int(x * tb * 1_000_000) for x in video], audio, codec


def _frames(path: Path) -> list[np.ndarray]:
    with av.open(os.fspath(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def _protect_in_segments(engine: Engine, src: Path, seconds: float, tmp: Path) -> tuple[Path, segments.Plan]:
    plan = segments.plan(src, seconds)
    assert plan is not None
    parts = []
    for segment, data in segments.cut(src, plan.segments):
        piece = tmp / f"in{segment.index}.mp4"
        piece.write_bytes(data)
        part = tmp / f"out{segment.index}.mp4"
        engine.protect_file(piece, part)
        parts.append(part)
    joined = tmp / "joined.mp4"
    segments.join(src, parts, plan, joined, audio=True)
    return joined, plan


def test_joined_segments_equal_the_whole_file_in_frames_pts_audio_and_nearly_in_pixels(
    engine: Engine, tmp_path: Path
) -> None:
    src = media("pedestrians.mp4")  # 96 frames, a keyframe every 12, AAC audio
    joined, plan = _protect_in_segments(engine, src, 0.5, tmp_path)
    assert len(plan.segments) == 4
    assert [s.first_packet for s in plan.segments] == [0, 24, 48, 72]
    whole = tmp_path / "whole.mp4"
    engine.protect_file(src, whole)

    j_video, j_audio, j_codec = _streams(joined)
    w_video, w_audio, w_codec = _streams(whole)
    assert j_codec == w_codec == "h264"
    assert len(j_video) == len(w_video) == 96
    assert j_video == w_video
    assert j_audio == w_audio and len(j_audio) > 100

    a, b = _frames(joined), _frames(whole)
    assert len(a) == len(b) == 96
    diffs = [float(np.abs(x.astype(np.int16) - y).mean()) for x, y in zip(a, b, strict=True)]
    # Each segment starts with a detection of its own and is encoded on its own: close, not equal.
    assert max(diffs) < 3.0, diffs


def test_a_video_of_one_keyframe_or_shorter_than_two_segments_is_not_cut() -> None:
    assert segments.plan(media("dos.mp4"), 1.0) is None  # one keyframe
    assert segments.plan(media("pedestrians.mp4"), 10.0) is None  # 3.8 s long


def test_segments_that_do_not_make_the_input_again_are_refused_and_nothing_is_left(
    engine: Engine, tmp_path: Path
) -> None:
    src = media("pedestrians.mp4")
    plan = segments.plan(src, 0.5)
    assert plan is not None
    parts = []
    for segment, data in segments.cut(src, plan.segments):
        piece = tmp_path / f"in{segment.index}.mp4"
        piece.write_bytes(data)
        parts.append(piece)
    out = tmp_path / "joined.mp4"
    with pytest.raises(segments.JoinError, match="segments for"):
        segments.join(src, parts[:3], plan, out, audio=True)
    # The input's own segments, unprotected, are another encoding than a protected one: refused.
    protected = tmp_path / "p0.mp4"
    engine.protect_file(parts[0], protected)
    with pytest.raises(segments.JoinError, match="other parameters"):
        segments.join(src, [protected, *parts[1:]], plan, out, audio=True)
    # A protected segment of another length (a segment of another cut): frames and timestamps differ.
    other = segments.plan(src, 1.0)
    assert other is not None
    longer = next(data for s, data in segments.cut(src, other.segments) if s.index == 1)
    (tmp_path / "long.mp4").write_bytes(longer)
    protected1 = tmp_path / "p1.mp4"
    engine.protect_file(tmp_path / "long.mp4", protected1)
    fitting = [tmp_path / f"f{k}.mp4" for k in (2, 3)]
    for k, path in zip((2, 3), fitting, strict=True):
        engine.protect_file(parts[k], path)
    with pytest.raises(segments.JoinError, match="segment 2 overlaps"):
        segments.join(src, [protected, protected1, *fitting], plan, out, audio=False)
    assert not out.exists()
