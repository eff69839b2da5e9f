"""Durable files: fsync helpers (a rename is only as durable as the file and folder flushed around
it) and the move that never clobbers."""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

COPYING_MARK = ".copying"  # a copy on its way into another filesystem's folder


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


def candidate_names(name: str) -> list[str]:
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    sfx = f".{ext}" if ext else ""
    return [name] + [f"{stem}-{i}{sfx}" for i in range(1, 10000)]


def move_noclobber(src: Path, folder: Path, name: str, before: Callable[[Path], None] | None = None) -> Path:
    """Move `src` into `folder` as `name` (or name-1, name-2, ...), never replacing a file.

    A hard link is the atomic "create only if absent"; a filesystem without
    hard links, or another filesystem, gets a copy that is fsynced first.
    `before(dst)` is called with the chosen name before anything moves, so the
    caller can record where the file is going (after a crash, `src` may be gone).
    A move a crash interrupted after the link (`src` still there, and already
    linked under a candidate name) is finished, not made a second time.
    """
    src_st = src.lstat()
    for candidate in candidate_names(name):
        dst = folder / candidate
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
            if dst.exists() or not _copy_in(src, dst):
                continue
        fsync_dir(folder)
        src.unlink()
        fsync_dir(src.parent)
        return dst
    raise OSError(errno.EEXIST, f"no free name for {name} in {folder}")


def _copy_in(src: Path, dst: Path) -> bool:
    """Copy `src` to `dst` on another filesystem, flushed first; False if `dst` was taken meanwhile."""
    # Unique: a leftover of a crash (still linked to an output) is never written through again.
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}{COPYING_MARK}")
    shutil.copyfile(src, tmp, follow_symlinks=False)
    fsync_file(tmp)
    try:
        # The copy sits beside `dst`, so a link is the atomic "create only if absent" again.
        os.link(tmp, dst, follow_symlinks=False)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EMLINK):
            raise
        # No hard links there (FAT, some network shares): a rename is the best left; it can
        # only replace a file that appeared in the instant since the check.
        if dst.exists():
            return False
        os.replace(tmp, dst)
        return True
    finally:
        tmp.unlink(missing_ok=True)
    return True
