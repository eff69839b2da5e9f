"""Durable files: fsync helpers (a rename is only as durable as the file and folder flushed around
it), the move that never clobbers, and files and folders made with exact modes whatever the umask."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

COPYING_MARK = ".copying"  # a copy on its way into another filesystem's folder
WRITING_MARK = ".writing"  # a file `write_file` has not yet given its name


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_new(path: Path, mode: int) -> BinaryIO:
    """Create `path` for writing (never over an existing file) with exactly `mode`, whatever the umask.

    Created owner-only first: the file is never readable by others for an instant."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, mode)
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


class FlushingWriter:
    """Writes to `file`, flushing what it wrote to disk every `every` bytes, then calling `alive`.

    A large file written whole and fsynced once gathers gigabytes of dirty pages for that one
    fsync, which on a slow disk takes longer than the watchdog allows with nothing to report.
    Flushed as it goes, the last fsync is short and each flush is a sign of life.
    """

    def __init__(self, file: BinaryIO, every: int = 64 << 20, alive: Callable[[], None] | None = None) -> None:
        self.file, self.every, self.alive = file, every, alive
        self._unflushed = 0

    def write(self, data: bytes) -> int:
        n = self.file.write(data)
        self._unflushed += n
        if self._unflushed >= self.every:
            self.file.flush()
            os.fdatasync(self.file.fileno())
            self._unflushed = 0
            if self.alive is not None:
                self.alive()
        return n

    def flush(self) -> None:
        self.file.flush()


def short_of_space(folder: Path, need: int) -> str | None:
    """Why `folder` cannot take `need` bytes now (the free space its filesystem gives the daemon), or None."""
    try:
        st = os.statvfs(folder)
    except OSError as exc:  # removed, or a share gone: wait for it rather than fail what arrives
        return f"cannot see the free space on {folder}: {exc.strerror or exc}"
    free = st.f_bavail * st.f_frsize
    if free < need:
        return f"disk space low ({free >> 20} MiB free on {folder}, need {need >> 20} MiB)"
    return None


def same_filesystem(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_dev == b.stat().st_dev
    except OSError:
        return False


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Make `path` hold `data` with `mode`, atomically (a hidden temporary, flushed, renamed over it)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{WRITING_MARK}")
    try:
        with create_new(tmp, mode) as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def make_folders(path: Path, mode: int) -> None:
    """Create `path` and any missing parent, each with exactly `mode`; existing folders are left as they are."""
    missing = []
    while not path.exists():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:  # made meanwhile by someone else: theirs to set
            continue
        folder.chmod(mode)


def set_mode(path: Path, mode: int) -> None:
    """Give a file the daemon did not create (an original) `mode`, where the daemon owns it."""
    with contextlib.suppress(PermissionError):  # another user's upload: its owner decides
        path.chmod(mode)


def sweep_temporaries(folder: Path) -> list[str]:
    """Remove the hidden temporaries a crash cut short in `folder` (`_copy_in`'s copies and
    `write_file`'s files); return their names.

    Only ever temporaries: a copy's source stays where it was until the copy is linked under its
    name, and a written file has its name only once it is whole."""
    removed = []
    for entry in os.scandir(folder):
        if entry.name.startswith(".") and entry.name.endswith((COPYING_MARK, WRITING_MARK)):
            Path(entry.path).unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


def candidate_names(name: str) -> list[str]:
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    sfx = f".{ext}" if ext else ""
    return [name] + [f"{stem}-{i}{sfx}" for i in range(1, 10000)]


def move_noclobber(
    src: Path,
    folder: Path,
    name: str,
    before: Callable[[Path], None] | None = None,
    mode: int | None = None,
    suffix: str = "",
    alive: Callable[[], None] | None = None,
) -> Path:
    """Move `src` into `folder` as `name` (or name-1, name-2, ...), never replacing a file.

    A hard link is the atomic "create only if absent"; a filesystem without
    hard links, or another filesystem, gets a copy that is fsynced first.
    `before(dst)` is called with the chosen name before anything moves, so the
    caller can record where the file is going (after a crash, `src` may be gone).
    `mode`: the mode the file gets where it lands (a copy is made with it). `suffix` follows
    the numbered name (clip-1.mp4.age, not clip.mp4-1.age). `alive` is called as a copy
    makes progress (a sign of life for the watchdog: a large copy takes seconds).
    A move a crash interrupted after the link (`src` still there, and already
    linked under a candidate name) is finished, not made a second time.
    """
    if mode is not None:
        set_mode(src, mode)
    src_st = src.lstat()
    for candidate in candidate_names(name):
        dst = folder / (candidate + suffix)
        try:
            dst_st = dst.lstat()
        except FileNotFoundError:
            pass
        else:
            if (dst_st.st_dev, dst_st.st_ino) != (src_st.st_dev, src_st.st_ino):
                continue
            if before is not None:
                before(dst)
            fsync_dir(folder)
            src.unlink()
            fsync_dir(src.parent)
            return dst
        if before is not None:
            before(dst)
        try:
            os.link(src, dst, follow_symlinks=False)
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
                raise
            if dst.exists() or not _copy_in(src, dst, stat.S_IMODE(src_st.st_mode) if mode is None else mode, alive):
                continue
        fsync_dir(folder)
        src.unlink()
        fsync_dir(src.parent)
        return dst
    raise OSError(errno.EEXIST, f"no free name for {name} in {folder}")


def _copy_in(src: Path, dst: Path, mode: int, alive: Callable[[], None] | None = None) -> bool:
    """Copy `src` to `dst` on another filesystem, flushed first; False if `dst` was taken meanwhile."""
    # Unique: a leftover of a crash (still linked to an output) is never written through again.
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}{COPYING_MARK}")
    with src.open("rb") as source, create_new(tmp, mode) as copy:
        # Flushed as it goes (see FlushingWriter): the fsync below is then short.
        shutil.copyfileobj(source, FlushingWriter(copy, alive=alive), 1 << 20)
    fsync_file(tmp)
    try:
        return take_name(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def take_name(tmp: Path, dst: Path) -> bool:
    """Give the finished file `tmp` the name `dst` only if no file has it; False if one has.

    A hard link beside it is the atomic "create only if absent" (`tmp` is then the caller's to
    remove). Where there are no hard links (FAT, some network shares), a rename after a last look
    is the best left: it can only replace a file that appeared in the instant since."""
    try:
        os.link(tmp, dst, follow_symlinks=False)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EMLINK):
            raise
        if dst.exists():
            return False
        os.replace(tmp, dst)
    return True
