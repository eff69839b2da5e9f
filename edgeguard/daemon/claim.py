"""Taking a file from the incoming folder without trusting anything in it.

The incoming folder is written by other users, so between two looks at a name
anything may have been swapped in. The rules:

- a name is only ever opened with ``O_NOFOLLOW`` relative to the folder's own
  descriptor, and what was opened is judged by ``fstat``, never by the name;
- a file is taken only while no process has it open for writing (a read lease,
  which the kernel refuses while any writer exists; /proc where leases are not
  allowed);
- taking it is a hard link into the private work folder: the name in incoming
  stays, so a writer that reopens it later appends to the very file being
  worked on, and the change is seen before anything is published. The link is
  checked to be the inode that was opened; anything else is unlinked again;
- what is hashed is exactly the claimed size, and before anything is published the
  file is compared with the claim again (`changes`).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgeguard.daemon.watcher import Seen
from edgeguard.durable import candidate_names
from edgeguard.errors import Cancelled

log = logging.getLogger(__name__)

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


@dataclass(frozen=True)
class Snapshot:
    """What a claimed file was when it was claimed (ctime also moves when a name is added or removed)."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Snapshot:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def same_file(self, st: os.stat_result) -> bool:
        return (self.dev, self.ino) == (st.st_dev, st.st_ino)


class Refused(Exception):
    """The file cannot be taken now; `reason` is one line, `retry` says whether waiting may help."""

    def __init__(self, reason: str, *, retry: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry
        self.seen: Seen | None = None  # the file as it was refused (set by the claim)


class Changed(Exception):
    """The claimed file is no longer what was claimed (a writer came back, or it was truncated)."""


def hash_claimed(path: Path, snapshot: Snapshot, cancel: threading.Event, alive: Callable[[], None]) -> str:
    """The sha256 of exactly the claimed bytes; Changed if the file is not what was claimed.

    Reads at most the claimed size, so nothing (a file still growing, a device) can
    keep it reading, and stops when `cancel` is set (the time limit, SIGTERM).
    """
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        # Not ctime: adding or removing a name moves it. A same-size rewrite with mtime put back
        # is hashed as it is now, so the digest still describes what the engine reads.
        if not snapshot.same_file(st) or (st.st_size, st.st_mtime_ns) != (snapshot.size, snapshot.mtime_ns):
            raise Changed("changed since it was claimed")
        left = snapshot.size
        while left:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                raise Changed(f"shrank to {snapshot.size - left} bytes since it was claimed")
            h.update(chunk)
            left -= len(chunk)
            alive()
            if cancel.is_set():
                raise Cancelled(path)
    finally:
        os.close(fd)
    return h.hexdigest()


def changes(path: Path, snapshot: Snapshot, digest: str) -> str | None:
    """How the claimed file differs from the claim, or None if it is what was claimed and processed."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return "it vanished from the work folder"
    if not snapshot.same_file(st):
        return "it was replaced"
    if (st.st_size, st.st_mtime_ns) != (snapshot.size, snapshot.mtime_ns):
        return f"it changed ({snapshot.size} -> {st.st_size} bytes)"
    if st.st_ctime_ns != snapshot.ctime_ns:
        # ctime also moves when a link is added or removed: only the bytes can tell.
        try:
            same = hash_claimed_now(path) == digest
        except OSError:
            same = False
        if not same:
            return "its content changed"
    return None


def hash_claimed_now(path: Path) -> str:
    """The sha256 of the file as it is now (never through a link)."""
    with open(path, "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW)) as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def open_regular(name: str, dir_fd: int) -> tuple[int, os.stat_result]:
    """Open `name` in the folder `dir_fd` for reading, never through a link; Refused unless a regular file."""
    try:
        fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        raise Refused("vanished", retry=True) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Refused("a symlink, not a regular file (never followed)") from None
        raise Refused(f"cannot open: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused("not a regular file (never read)")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def being_written(fd: int, st: os.stat_result) -> bool:
    """Whether any process has the file open for writing."""
    try:
        # The kernel grants a read lease only while nobody has the file open for writing.
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EBUSY):
            return True
        # Not the owner and no CAP_LEASE, or a filesystem without leases: look in /proc instead.
        return _open_for_writing_in_proc(st)
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return False


def _open_for_writing_in_proc(st: os.stat_result) -> bool:
    """Scan /proc for a descriptor on this inode opened for writing (only processes we may inspect)."""
    me = os.getpid()
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != me]
    except OSError:
        return False
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.stat(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if (target.st_dev, target.st_ino) != (st.st_dev, st.st_ino):
                continue
            try:
                with open(f"/proc/{pid}/fdinfo/{fd}", encoding="ascii") as info:
                    flags = next((int(line.split()[1], 8) for line in info if line.startswith("flags:")), 0)
            except (OSError, ValueError):
                return True  # it has the file open and we cannot tell how: assume writing
            if flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR):
                return True
    return False


def link_into(name: str, dir_fd: int, work: Path, expect: os.stat_result) -> None:
    """Hard-link incoming `name` as `work` (a path in the private work folder); Refused if not `expect`'s inode."""
    try:
        os.link(name, work, src_dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise Refused("vanished", retry=True) from None
    except OSError as exc:
        if exc.errno == errno.EPERM:
            raise Refused(
                "cannot take it: the daemon may not hard-link a file it cannot write"
                " (fs.protected_hardlinks); let the daemon's group write uploads (umask 002)"
            ) from None
        # EMLINK (a file given thousands of links), EACCES, ...: this file's problem, not the queue's.
        raise Refused(f"cannot take it: {exc.strerror or exc}") from None
    got = work.lstat()
    if not Snapshot.of(expect).same_file(got):
        # Swapped between the open and the link: what was linked is not what was checked.
        work.unlink()
        raise Refused("replaced while being taken (not followed)", retry=True)


def release(name: str, dir_fd: int, snapshot: Snapshot, holding: Path) -> bool:
    """Take incoming `name` away if it is still the claimed file, unchanged; True if it was.

    The name is first renamed to `holding` (in the private work folder) and only
    then compared, so whatever else arrived under the name meanwhile (a new upload,
    bytes appended after the last check) is never deleted: it is put back.
    """
    try:
        here = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if not (stat.S_ISREG(here.st_mode) and snapshot.same_file(here)):
        return False  # another file has the name now: it is not ours to take
    if os.path.lexists(holding):
        raise OSError(errno.EEXIST, f"{holding} is still there from before a crash")
    try:
        os.rename(name, holding, src_dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    st = holding.lstat()
    # Size and mtime, not ctime: the rename itself moves ctime.
    if snapshot.same_file(st) and (st.st_size, st.st_mtime_ns) == (snapshot.size, snapshot.mtime_ns):
        holding.unlink()
        return True
    put_back(holding, name, dir_fd)
    return False


def put_back(holding: Path, name: str, dir_fd: int) -> str:
    """Return a file taken from incoming by mistake under `name` (or name-1, ...); returns the name used."""
    if not stat.S_ISREG(holding.lstat().st_mode):
        # A directory or link made by someone else: renamed back as it is, never opened.
        for candidate in candidate_names(name):
            if not _exists(candidate, dir_fd):
                os.rename(holding, candidate, dst_dir_fd=dir_fd)
                return candidate
        raise OSError(errno.EEXIST, f"no free name for {name} in incoming")
    for candidate in candidate_names(name):
        try:
            os.link(holding, candidate, dst_dir_fd=dir_fd, follow_symlinks=False)
        except FileExistsError:
            continue
        holding.unlink()
        if candidate != name:
            log.warning("%s arrived while its namesake was processed; kept as %s", name, candidate)
        return candidate
    raise OSError(errno.EEXIST, f"no free name for {name} in incoming")


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True
