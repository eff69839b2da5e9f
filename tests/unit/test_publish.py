"""Publish: output names, staging names, and the local folder sink."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgeguard.publish import LocalFolder, is_staging, output_name, staging_path


@pytest.mark.parametrize(
    ("name", "out"),
    [("clip.MOV", "clip.mp4"), ("a.b.avi", "a.b.mp4"), ("x.mp4", "x.mp4"), ("p.PNG", "p.PNG"), ("q.jpeg", "q.jpeg")],
)
def test_videos_become_mp4_and_images_keep_their_name(name: str, out: str) -> None:
    assert output_name(name) == out


def test_staging_names_are_hidden_unique_and_keep_the_extension(tmp_path: Path) -> None:
    a, b = staging_path(tmp_path, "clip.mp4"), staging_path(tmp_path, "clip.mp4")
    assert a != b and a.parent == tmp_path and a.suffix == ".mp4"
    assert is_staging(a.name) and is_staging(b.name)
    assert not is_staging("x.partial.mp4"), "an original may be called that: only hidden names are ours"


def test_the_sink_publishes_without_clobbering_and_records_first(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    work.mkdir()
    (out / "a.mp4").write_bytes(b"earlier")
    staged = staging_path(work, "a.mp4")
    staged.write_bytes(b"new")
    seen: list[tuple[str, bool]] = []
    sink = LocalFolder(out, min_free=0, output_ratio=1.0)
    address = sink.publish(staged, "a.mp4", before=lambda where: seen.append((where, Path(where).exists())))
    assert address == str(out / "a-1.mp4") and seen == [(address, False)]
    assert (out / "a.mp4").read_bytes() == b"earlier" and Path(address).read_bytes() == b"new"
    assert not staged.exists() and sink.exists(address)


def test_recovery_removes_only_copies_a_crash_interrupted(tmp_path: Path) -> None:
    (tmp_path / "a.mp4").write_bytes(b"output")
    os.link(tmp_path / "a.mp4", tmp_path / ".a.mp4.1234abcd.copying")
    (tmp_path / "b.copying").write_bytes(b"a consumer's file, not hidden")
    LocalFolder(tmp_path, min_free=0, output_ratio=1.0).recover()
    assert sorted(os.listdir(tmp_path)) == ["a.mp4", "b.copying"]
    assert (tmp_path / "a.mp4").read_bytes() == b"output"
