"""Durable files (`edgeguard.durable`, used for the daemon's folders): the no-clobber move never
replaces a file, and what is created gets exactly the mode asked for, whatever the umask.

The copy path is exercised with a folder on another filesystem (/dev/shm, a
tmpfs), where a hard link is impossible and the file must be copied.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
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


# exact modes whatever the umask: create_new, write_file, make_folders, move_noclobber(mode=...)


@pytest.fixture(params=[0o000, 0o077], ids=["umask0000", "umask0077"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run the test under this process umask (restored after it)."""
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.parametrize("mode", [0o640, 0o600, 0o664], ids=lambda mode: f"{mode:04o}")
def test_create_new_gives_exactly_the_mode(tmp_path: Path, umask: int, mode: int) -> None:
    path = tmp_path / "record.json"
    with durable.create_new(path, mode) as stream:
        assert mode_of(path) == mode  # already while it is written, not only once closed
        stream.write(PAYLOAD)
    assert mode_of(path) == mode
    assert path.read_bytes() == PAYLOAD


def test_create_new_never_opens_an_existing_file(tmp_path: Path) -> None:
    path = make(tmp_path / "record.json", b"someone's")
    path.chmod(0o644)
    with pytest.raises(FileExistsError):
        durable.create_new(path, 0o600)
    assert path.read_bytes() == b"someone's"
    assert mode_of(path) == 0o644


def test_create_new_never_follows_a_link(tmp_path: Path) -> None:
    target = tmp_path / "target"
    (tmp_path / "record.json").symlink_to(target)
    with pytest.raises(FileExistsError):
        durable.create_new(tmp_path / "record.json", 0o600)
    assert not target.exists()


def test_write_file_gives_the_mode_and_leaves_no_temporary(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "clip.mp4.error.json"
    durable.write_file(path, PAYLOAD, 0o640)
    assert path.read_bytes() == PAYLOAD
    assert mode_of(path) == 0o640
    assert names(tmp_path) == [path.name]


def test_write_file_replaces_a_file_atomically_with_the_new_mode(tmp_path: Path) -> None:
    path = make(tmp_path / "clip.mp4.error.json", b"the old record")
    path.chmod(0o644)
    with path.open("rb") as reader:  # someone reading it meanwhile
        durable.write_file(path, b"the new record", 0o600)
        # A new file renamed over the old one: the reader still has the whole old record.
        assert reader.read() == b"the old record"
    assert path.read_bytes() == b"the new record"
    assert mode_of(path) == 0o600
    assert names(tmp_path) == [path.name]


def test_write_file_that_fails_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make(tmp_path / "clip.mp4.error.json", b"the old record")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # the disk fills while the record is flushed
    with pytest.raises(OSError, match="No space"):
        durable.write_file(path, b"the new record", 0o640)
    assert path.read_bytes() == b"the old record"
    assert names(tmp_path) == [path.name]


def test_make_folders_makes_every_missing_parent_with_the_mode(tmp_path: Path, umask: int) -> None:
    tmp_path.chmod(0o711)
    top = tmp_path / "srv"
    durable.make_folders(top / "edgeguard" / "output", 0o750)
    for folder in (top, top / "edgeguard", top / "edgeguard" / "output"):
        assert folder.is_dir() and mode_of(folder) == 0o750, folder
    assert mode_of(tmp_path) == 0o711  # the parent that was there is not the daemon's


def test_make_folders_leaves_existing_folders_as_the_operator_made_them(tmp_path: Path) -> None:
    srv = tmp_path / "srv"
    srv.mkdir()
    srv.chmod(0o775)
    durable.make_folders(srv / "output", 0o750)
    assert mode_of(srv) == 0o775
    assert mode_of(srv / "output") == 0o750
    (srv / "output").chmod(0o755)
    durable.make_folders(srv / "output", 0o700)  # already there: nothing changes
    assert mode_of(srv / "output") == 0o755


def test_move_gives_the_moved_file_the_mode(src: Path, folder: Path, umask: int) -> None:
    src.chmod(0o666)
    dst = move_noclobber(src, folder, NAME, mode=0o640)
    assert dst == folder / NAME and dst.read_bytes() == PAYLOAD
    assert mode_of(dst) == 0o640


def test_move_without_a_mode_keeps_the_file_s_own(src: Path, folder: Path) -> None:
    src.chmod(0o604)
    assert mode_of(move_noclobber(src, folder, NAME)) == 0o604


def test_move_across_filesystems_makes_the_copy_with_the_mode(src: Path, other_fs: Path, umask: int) -> None:
    src.chmod(0o666)
    dst = move_noclobber(src, other_fs, NAME, mode=0o640)
    assert dst.stat().st_dev != src.parent.stat().st_dev  # really a copy
    assert dst.read_bytes() == PAYLOAD
    assert mode_of(dst) == 0o640
    assert names(other_fs) == [NAME]


def test_move_across_filesystems_without_a_mode_copies_the_file_s_own(src: Path, other_fs: Path, umask: int) -> None:
    src.chmod(0o644)
    assert mode_of(move_noclobber(src, other_fs, NAME)) == 0o644


def test_a_large_move_across_filesystems_is_a_sign_of_life_as_it_copies(tmp_path: Path, other_fs: Path) -> None:
    # A copy of gigabytes fsynced once at its end went seconds without one: the watchdog's limit.
    big = tmp_path / "big.mp4"
    with big.open("wb") as f:
        f.truncate(200 << 20)  # sparse: quick to make, 200 MiB to copy
    copied: list[int] = []

    def alive() -> None:
        copied.append(sum(p.stat().st_size for p in other_fs.iterdir()))

    dst = move_noclobber(big, other_fs, NAME, alive=alive)
    assert copied == [64 << 20, 128 << 20, 192 << 20], "one sign of life per 64 MiB copied, each once it was on disk"
    assert dst.stat().st_size == 200 << 20 and not big.exists()


def test_a_flushing_writer_puts_what_it_wrote_on_disk_as_it_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A large file sealed in one go used to meet a single fsync of all of it at the end: seconds
    # on a slow disk, with no sign of life for the watchdog meanwhile.
    synced: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd))[-1])
    alive: list[int] = []
    path = tmp_path / "big"
    with path.open("wb", buffering=1 << 20) as f:
        w = durable.FlushingWriter(f, every=256 << 10, alive=lambda: alive.append(path.stat().st_size))
        for _ in range(10):
            assert w.write(b"x" * (100 << 10)) == 100 << 10
    # Each time 256 KiB or more are unflushed (at 300, 600 and 900 KiB written): flushed and synced there.
    assert alive == [300 << 10, 600 << 10, 900 << 10]
    assert len(synced) == 3
    assert path.stat().st_size == 1000 << 10


# short_of_space


def test_short_of_space_compares_the_filesystem_s_free_space_with_the_need(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    free = st.f_bavail * st.f_frsize
    assert durable.short_of_space(tmp_path, 0) is None
    assert durable.short_of_space(tmp_path, free // 2) is None
    short = durable.short_of_space(tmp_path, free + (1 << 40))
    assert short == f"disk space low ({free >> 20} MiB free on {tmp_path}, need {(free + (1 << 40)) >> 20} MiB)"


def test_short_of_space_names_a_folder_that_is_not_there(tmp_path: Path) -> None:
    gone = tmp_path / "output"
    assert durable.short_of_space(gone, 0) == f"cannot see the free space on {gone}: No such file or directory"


# sweep_temporaries


def test_a_file_written_when_the_process_was_killed_is_swept_and_nothing_else(tmp_path: Path) -> None:
    # A SIGKILL between the write and the rename (as the crash tests of sealed failures met once)
    # left NAME.error.json's temporary in failed/ for good.
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, signal, sys; from pathlib import Path; from edgeguard import durable;"
            "os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL);"
            "durable.write_file(Path(sys.argv[1]), b'{}', 0o640)",
            str(tmp_path / "clip.mp4.error.json"),
        ],
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL
    (tmp_path / "clip.mp4").write_bytes(b"an original")
    (tmp_path / ".hidden.tmp").write_bytes(b"someone else's")
    [left] = [p.name for p in tmp_path.iterdir() if p.name.endswith(durable.WRITING_MARK)]
    assert durable.sweep_temporaries(tmp_path) == [left]
    assert names(tmp_path) == [".hidden.tmp", "clip.mp4"]
