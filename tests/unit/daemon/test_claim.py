"""Taking files from a folder other users write: links, writers, swaps, names that come back."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeguard.config import PathsConfig
from edgeguard.daemon.claim import (
    Changed,
    Refused,
    Snapshot,
    _open_for_writing_in_proc,
    being_written,
    changes,
    hash_claimed,
    link_into,
    open_regular,
    release,
)
from edgeguard.daemon.folders import FolderLocks, prepare
from edgeguard.daemon.logs import OneLine, escape
from edgeguard.errors import Cancelled, SetupError
from tests.conftest import REPO


@pytest.fixture
def incoming(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    folder = tmp_path / "incoming"
    folder.mkdir()
    (tmp_path / "work").mkdir()
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield folder, fd
    finally:
        os.close(fd)


def test_links_and_special_files_are_never_opened(incoming: tuple[Path, int], tmp_path: Path) -> None:
    folder, dir_fd = incoming
    secret = tmp_path / "secret"
    secret.write_bytes(b"s")
    (folder / "link.mp4").symlink_to(secret)
    os.mkfifo(folder / "fifo.mp4")  # opening a FIFO for reading would block without O_NONBLOCK
    (folder / "dir.mp4").mkdir()
    for name, words in (("link.mp4", "symlink"), ("fifo.mp4", "not a regular file"), ("dir.mp4", "not a regular")):
        with pytest.raises(Refused, match=words) as caught:
            open_regular(name, dir_fd)
        assert not caught.value.retry, name
    with pytest.raises(Refused, match="vanished") as gone:
        open_regular("gone.mp4", dir_fd)
    assert gone.value.retry


def test_a_writer_is_seen_by_the_lease_and_in_proc(incoming: tuple[Path, int]) -> None:
    folder, dir_fd = incoming
    path = folder / "a.mp4"
    path.write_bytes(b"x" * 100)
    # Another process holding it open for writing (inotify never saw it open: it opened first).
    writer = subprocess.Popen(
        [sys.executable, "-c", f"import sys,time; f=open({str(path)!r},'ab'); print(1, flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline()
        fd, st = open_regular("a.mp4", dir_fd)
        try:
            assert being_written(fd, st)
            assert _open_for_writing_in_proc(st), "the /proc fallback sees it too"
        finally:
            os.close(fd)
    finally:
        writer.kill()
        writer.wait()
    reader = subprocess.Popen([sys.executable, "-c", f"import time; f=open({str(path)!r},'rb'); time.sleep(60)"])
    try:
        time.sleep(0.5)
        fd, st = open_regular("a.mp4", dir_fd)
        try:
            assert not being_written(fd, st), "a reader is not a writer"
            assert not _open_for_writing_in_proc(st)
        finally:
            os.close(fd)
    finally:
        reader.kill()
        reader.wait()


def test_a_link_to_another_inode_than_the_one_checked_is_undone(incoming: tuple[Path, int], tmp_path: Path) -> None:
    folder, dir_fd = incoming
    (folder / "a.jpg").write_bytes(b"checked")
    fd, st = open_regular("a.jpg", dir_fd)
    os.close(fd)
    # Swapped after the check: a symlink to a secret now has the name.
    secret = tmp_path / "secret"
    secret.write_bytes(b"secret")
    os.rename(folder / "a.jpg", tmp_path / "aside.jpg")
    (folder / "a.jpg").symlink_to(secret)
    work = tmp_path / "work" / "00000001-a.jpg"
    with pytest.raises(Refused, match="replaced"):
        link_into("a.jpg", dir_fd, work, st)
    assert not work.exists() and not work.is_symlink()
    assert secret.read_bytes() == b"secret"
    # Unswapped, the link is the very inode that was opened.
    os.unlink(folder / "a.jpg")
    os.rename(tmp_path / "aside.jpg", folder / "a.jpg")
    link_into("a.jpg", dir_fd, work, st)
    assert work.stat().st_ino == st.st_ino and (folder / "a.jpg").exists()


def test_release_takes_only_the_claimed_file(incoming: tuple[Path, int], tmp_path: Path) -> None:
    folder, dir_fd = incoming
    work = tmp_path / "work"
    (folder / "a.mp4").write_bytes(b"claimed")
    os.link(folder / "a.mp4", work / "1-a.mp4")
    snap = Snapshot.of((work / "1-a.mp4").stat())
    assert release("a.mp4", dir_fd, snap, work / ".1.release")
    assert os.listdir(folder) == [] and (work / "1-a.mp4").read_bytes() == b"claimed"
    # A new file arrived under the name meanwhile: it is put back, never deleted.
    (folder / "a.mp4").write_bytes(b"new upload")
    assert not release("a.mp4", dir_fd, snap, work / ".1.release")
    assert (folder / "a.mp4").read_bytes() == b"new upload"
    assert not (work / ".1.release").exists()
    assert not release("gone.mp4", dir_fd, snap, work / ".1.release")


def test_snapshot_sees_appends_truncation_and_rewrites(tmp_path: Path) -> None:
    path = tmp_path / "a.mp4"
    path.write_bytes(b"x" * 10)
    snap = Snapshot.of(path.stat())
    assert Snapshot.of(path.stat()) == snap
    os.truncate(path, 4)
    assert Snapshot.of(path.stat()) != snap
    snap = Snapshot.of(path.stat())
    st = path.stat()
    with path.open("r+b") as f:  # same size, mtime put back: ctime still moves
        f.write(b"y")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert Snapshot.of(path.stat()) != snap


def test_a_second_holder_of_the_folders_is_refused(tmp_path: Path) -> None:
    paths = PathsConfig.model_validate({k: str(tmp_path / k) for k in PathsConfig.FOLDERS})
    folders = prepare(paths)
    first, second = FolderLocks(), FolderLocks()
    first.hold(folders)
    with pytest.raises(SetupError, match=r"another edgeguard is already running on paths\.state"):
        second.hold(folders)
    first.hold(folders)  # holding again what it holds (a reload) is fine
    first.release()
    second.hold(folders)
    second.release()
    assert oct(folders.work.stat().st_mode & 0o777) == "0o700", "nobody else may swap links into work"


def test_a_name_with_a_newline_cannot_forge_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    assert escape("evil\nINFO forged.mp4") == "evil\\nINFO forged.mp4"
    assert escape("café clip 1.mp4") == "café clip 1.mp4"
    assert escape("x\x1b[31m\r\t") == "x\\x1b[31m\\r\\t"
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "claimed %s as job %d", ("a\nb.mp4", 3), None)
    assert OneLine().filter(record)
    assert record.getMessage() == "claimed a\\nb.mp4 as job 3"


def test_release_leaves_what_is_not_the_claimed_file_as_it_was(incoming: tuple[Path, int], tmp_path: Path) -> None:
    folder, dir_fd = incoming
    work = tmp_path / "work"
    (folder / "a.mp4").write_bytes(b"claimed")
    os.link(folder / "a.mp4", work / "1-a.mp4")
    snap = Snapshot.of((work / "1-a.mp4").stat())
    # Bytes appended after the last check: not taken away, nothing of them lost.
    with (folder / "a.mp4").open("ab") as f:
        f.write(b" and more")
    assert not release("a.mp4", dir_fd, snap, work / ".1.release")
    assert (folder / "a.mp4").read_bytes() == b"claimed and more"
    assert not (work / ".1.release").exists()
    # A folder made under the name by someone else is not moved at all.
    (folder / "a.mp4").unlink()
    (folder / "a.mp4").mkdir()
    assert not release("a.mp4", dir_fd, snap, work / ".1.release")
    assert (folder / "a.mp4").is_dir() and not (work / ".1.release").exists()


def test_hashing_reads_exactly_the_claimed_bytes_and_stops_when_told(tmp_path: Path) -> None:
    """Bounded by the claimed size (a file still growing cannot keep it reading) and cancellable
    (the time limit and SIGTERM stop it, where reading a device once never ended)."""
    path = tmp_path / "a.mp4"
    path.write_bytes(b"x" * (3 << 20))
    snap = Snapshot.of(path.stat())
    never = threading.Event()
    digest = hash_claimed(path, snap, never, lambda: None)
    assert digest == hashlib.sha256(b"x" * (3 << 20)).hexdigest()
    assert changes(path, snap, digest) is None
    stop = threading.Event()
    calls = []

    def alive() -> None:
        calls.append(1)
        stop.set()  # as the main loop would when the time limit passes

    with pytest.raises(Cancelled):
        hash_claimed(path, snap, stop, alive)
    assert len(calls) == 1, "stopped after the first chunk"
    with path.open("ab") as f:
        f.write(b"late")
    with pytest.raises(Changed):
        hash_claimed(path, snap, never, lambda: None)
    assert changes(path, snap, digest) == f"it changed ({3 << 20} -> {(3 << 20) + 4} bytes)"
    # Rewritten in place at the same size with mtime put back: only the bytes tell.
    os.truncate(path, 3 << 20)
    st = path.stat()
    with path.open("r+b") as f:
        f.write(b"y")
    os.utime(path, ns=(st.st_atime_ns, snap.mtime_ns))
    assert changes(path, snap, digest) == "its content changed"


def test_a_sticky_incoming_folder_not_ours_is_a_setup_error() -> None:
    """In a +t folder only a file's owner may rename it away: a daemon that does not own the folder
    could never take finished uploads out, so it says so at start instead of at every file."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("SKIPPED: needs root and setpriv to run prepare() as another user")
    root = Path(tempfile.mkdtemp(prefix="eg-sticky-"))  # not under pytest's 0700 tmp: nobody must reach it
    try:
        root.chmod(0o755)
        for name in PathsConfig.FOLDERS:
            (root / name).mkdir()
            if name != "incoming":
                os.chown(root / name, 65534, 65534)
        (root / "incoming").chmod(0o1777)  # root's, like /tmp: anyone may add, only owners remove
        script = (
            "from edgeguard.config import PathsConfig; from edgeguard.daemon.folders import prepare;"
            f"prepare(PathsConfig.model_validate({{k: {str(root)!r} + '/' + k for k in PathsConfig.FOLDERS}}))"
        )
        done = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            check=False,
        )
        assert done.returncode != 0 and "is sticky (+t) and not owned by the daemon's user" in done.stderr, done
    finally:
        shutil.rmtree(root, ignore_errors=True)
