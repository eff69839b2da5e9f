"""The daemon's no-clobber move (`edgeguard.durable`, used for the daemon's folders): a file is never replaced.

The copy path is exercised with a folder on another filesystem (/dev/shm, a
tmpfs), where a hard link is impossible and the file must be copied.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeguard import durable
from edgeguard.durable import candidate_names, move_noclobber

NAME = "clip.mp4"
PAYLOAD = b"the protected video"


def make(path: Path, data: bytes = PAYLOAD) -> Path:
    path.write_bytes(data)
    return path


@pytest.fixture
def src(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    return make(work / "job-1.mp4")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    out = tmp_path / "output"
    out.mkdir()
    return out


@pytest.fixture
def other_fs(tmp_path: Path) -> Iterator[Path]:
    """A folder on another filesystem than tmp_path, so os.link fails with EXDEV."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        pytest.skip("no writable /dev/shm: no second filesystem to move across")
    path = Path(tempfile.mkdtemp(dir=shm, prefix="edgeguard-test-"))
    try:
        if path.stat().st_dev == tmp_path.stat().st_dev:
            pytest.skip(f"/dev/shm and {tmp_path} are one filesystem here: the copy path cannot be reached")
        yield path
    finally:
        shutil.rmtree(path)


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# candidate_names


def test_candidate_names_start_with_the_name_then_number_before_the_extension() -> None:
    found = candidate_names(NAME)
    assert found[:4] == ["clip.mp4", "clip-1.mp4", "clip-2.mp4", "clip-3.mp4"]
    assert len(set(found)) == len(found), "a name offered twice"


@pytest.mark.parametrize(
    ("name", "second"),
    [
        ("README", "README-1"),
        (".hidden", ".hidden-1"),  # a dot file has no extension
        ("archive.tar.gz", "archive.tar-1.gz"),
        ("CLIP.MP4", "CLIP-1.MP4"),
    ],
)
def test_candidate_names_for_odd_names(name: str, second: str) -> None:
    assert candidate_names(name)[:2] == [name, second]


# move_noclobber, one filesystem (hard link)


def test_move_to_a_free_name(src: Path, folder: Path) -> None:
    dst = move_noclobber(src, folder, NAME)
    assert dst == folder / NAME
    assert dst.read_bytes() == PAYLOAD
    assert not src.exists()
    assert names(folder) == [NAME]


def test_move_never_overwrites_and_takes_the_next_free_name(src: Path, folder: Path) -> None:
    make(folder / NAME, b"first")
    make(folder / "clip-1.mp4", b"second")
    dst = move_noclobber(src, folder, NAME)
    assert dst == folder / "clip-2.mp4"
    assert dst.read_bytes() == PAYLOAD
    assert (folder / NAME).read_bytes() == b"first"
    assert (folder / "clip-1.mp4").read_bytes() == b"second"
    assert not src.exists()


def test_before_sees_the_destination_before_anything_moves(src: Path, folder: Path) -> None:
    make(folder / NAME, b"first")
    seen: list[Path] = []

    def before(dst: Path) -> None:
        # The caller records this name durably before the move: nothing may have happened yet.
        assert src.exists(), "the source is already gone"
        assert not dst.exists(), "the destination already exists"
        seen.append(dst)

    dst = move_noclobber(src, folder, NAME, before=before)
    assert seen == [folder / "clip-1.mp4"] == [dst]


def test_a_name_taken_after_the_check_is_not_clobbered(src: Path, folder: Path) -> None:
    seen: list[Path] = []

    def before(dst: Path) -> None:
        seen.append(dst)
        if len(seen) == 1:
            make(dst, b"an upload that got there first")  # between the free-name check and the link

    dst = move_noclobber(src, folder, NAME, before=before)
    assert (folder / NAME).read_bytes() == b"an upload that got there first"
    assert dst == folder / "clip-1.mp4"
    assert dst.read_bytes() == PAYLOAD
    assert seen == [folder / NAME, folder / "clip-1.mp4"], "before() must see the name finally used"
    assert not src.exists()


def test_a_move_interrupted_after_the_link_is_finished_not_repeated(src: Path, folder: Path) -> None:
    make(folder / NAME, b"first")
    os.link(src, folder / "clip-1.mp4")  # a crash came right after the link
    seen: list[Path] = []
    dst = move_noclobber(src, folder, NAME, before=seen.append)
    assert dst == folder / "clip-1.mp4"
    assert seen == [dst], "the caller must learn where the file is, this time too"
    assert not src.exists()
    assert names(folder) == ["clip-1.mp4", NAME]


def test_no_free_name_is_an_error_not_an_overwrite(src: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(durable, "candidate_names", lambda name: [name, "clip-1.mp4"])
    make(folder / NAME, b"first")
    make(folder / "clip-1.mp4", b"second")
    with pytest.raises(OSError, match="no free name") as caught:
        move_noclobber(src, folder, NAME)
    assert caught.value.errno == errno.EEXIST
    assert src.read_bytes() == PAYLOAD
    assert (folder / NAME).read_bytes() == b"first"
    assert (folder / "clip-1.mp4").read_bytes() == b"second"


# move_noclobber across filesystems (the copy path)


def test_move_across_filesystems_copies_and_never_overwrites(src: Path, other_fs: Path) -> None:
    make(other_fs / NAME, b"first")
    seen: list[Path] = []
    dst = move_noclobber(src, other_fs, NAME, before=seen.append)
    assert dst == other_fs / "clip-1.mp4"
    assert dst.read_bytes() == PAYLOAD
    assert (other_fs / NAME).read_bytes() == b"first"
    assert seen == [dst]
    assert not src.exists()
    assert names(other_fs) == ["clip-1.mp4", NAME], "a temporary copy was left behind"


def test_across_filesystems_the_copy_is_flushed_before_it_takes_the_name(
    src: Path, other_fs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsync_file = durable.fsync_file
    flushed: list[tuple[Path, bool]] = []

    def watched(path: Path) -> None:
        flushed.append((path, (other_fs / NAME).exists()))
        fsync_file(path)

    monkeypatch.setattr(durable, "fsync_file", watched)
    dst = move_noclobber(src, other_fs, NAME)
    # A crash mid-copy must never leave a partial file under the final name.
    assert [(p.parent, taken) for p, taken in flushed] == [(other_fs, False)]
    assert flushed[0][0] != dst
    assert dst.read_bytes() == PAYLOAD


def test_across_filesystems_a_name_taken_after_the_check_is_not_clobbered(src: Path, other_fs: Path) -> None:
    seen: list[Path] = []

    def before(dst: Path) -> None:
        seen.append(dst)
        if len(seen) == 1:
            make(dst, b"an upload that got there first")

    dst = move_noclobber(src, other_fs, NAME, before=before)
    assert (other_fs / NAME).read_bytes() == b"an upload that got there first"
    assert dst == other_fs / "clip-1.mp4"
    assert dst.read_bytes() == PAYLOAD
    assert not src.exists()


def test_across_filesystems_a_name_taken_during_the_copy_is_not_clobbered(
    src: Path, other_fs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsync_file = durable.fsync_file

    def slow_copy(path: Path) -> None:
        # While a large video is being copied, someone else writes the same name.
        if path.name.endswith(".copying"):
            make(other_fs / NAME, b"an upload that got there first")
        fsync_file(path)

    monkeypatch.setattr(durable, "fsync_file", slow_copy)
    dst = move_noclobber(src, other_fs, NAME)
    assert (other_fs / NAME).read_bytes() == b"an upload that got there first"
    assert dst.read_bytes() == PAYLOAD
