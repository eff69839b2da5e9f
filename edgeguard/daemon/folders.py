"""The daemon's folders: checked at start, and moves that never clobber or half-happen."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgeguard.config import PathsConfig
from edgeguard.durable import fsync_dir, fsync_file
from edgeguard.errors import SetupError

log = logging.getLogger(__name__)

LEDGER_NAME = "ledger.sqlite3"
# Only the daemon may write these: what is in them is trusted (no link can be swapped in).
PRIVATE = ("work", "state")
# A second daemon on any of these would take the same files or the same ledger.
LOCKED = ("state", "incoming", "work")


@dataclass(frozen=True)
class Folders:
    incoming: Path
    output: Path
    quarantine: Path
    failed: Path
    processed: Path
    work: Path
    state: Path

    @property
    def ledger(self) -> Path:
        return self.state / LEDGER_NAME


def prepare(paths: PathsConfig) -> Folders:
    """Create the folders, check they are writable and that atomic renames are possible."""
    given = {k: Path(v).absolute() for k, v in paths.model_dump().items()}
    # Resolved once: a folder given as a symlink is watched where it points now (inotify
    # does not follow links), and a later change of the link is not followed.
    folders = Folders(**{k: Path(os.path.realpath(v)) for k, v in given.items()})
    for key, path in vars(folders).items():
        if path != given[key] and given[key].is_symlink():
            log.info("paths.%s: %s is a symlink; using %s", key, given[key], path)
    problems: list[str] = []
    for key, path in vars(folders).items():
        try:
            path.mkdir(parents=True, exist_ok=True)
            if key in PRIVATE:
                path.chmod(0o700)
            with tempfile.NamedTemporaryFile(dir=path, prefix=".edgeguard-probe-"):
                pass
        except OSError as exc:
            problems.append(f"paths.{key}: {path} is not a writable folder: {exc.strerror or exc}")
    if problems:
        raise SetupError("; ".join(problems))
    incoming, me = folders.incoming.stat(), os.geteuid()
    if incoming.st_mode & stat.S_ISVTX and me not in (0, incoming.st_uid):
        # The daemon takes each upload's name away when done: a sticky folder forbids that.
        raise SetupError(
            f"paths.incoming: {folders.incoming} is sticky (+t) and not owned by the daemon's user;"
            " it could not remove the files it finished"
        )
    # Claims (incoming -> work) and publishing (work -> output) must be atomic renames.
    work_dev = folders.work.stat().st_dev
    for key in ("incoming", "output"):
        path = getattr(folders, key)
        if path.stat().st_dev != work_dev:
            raise SetupError(
                f"paths.{key} ({path}) and paths.work ({folders.work}) are on different filesystems;"
                " atomic renames need them on one (put work next to them)"
            )
    for key in ("failed", "quarantine", "processed"):
        path = getattr(folders, key)
        if path.stat().st_dev != work_dev:
            log.warning(
                "paths.%s (%s) is on another filesystem than paths.work: originals are copied there, not renamed",
                key,
                path,
            )
    return folders


class FolderLocks:
    """Exclusive locks (flock) on the folders one daemon must own alone, held while the process lives."""

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}

    def hold(self, folders: Folders) -> None:
        """Lock `folders` (those already held stay held; others are released); SetupError if taken."""
        wanted = {getattr(folders, key): key for key in LOCKED}
        new: dict[Path, int] = {}
        try:
            for path, key in wanted.items():
                if path in self._fds:
                    continue
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                new[path] = fd
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise SetupError(
                        f"another edgeguard is already running on paths.{key} ({path}); refusing to start a second"
                    ) from None
        except BaseException:
            for fd in new.values():
                os.close(fd)
            raise
        for path in [p for p in self._fds if p not in wanted]:
            os.close(self._fds.pop(path))
        self._fds.update(new)

    def release(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def output_problem(folders: Folders) -> str | None:
    """Why nothing can be published into the output folder now, or None.

    access(), not a probe file: a kill between creating and removing one would leave
    it in the output folder, where consumers look. access() also reports a read-only mount.
    """
    if not os.access(folders.output, os.W_OK | os.X_OK):
        return f"{folders.output} is not writable by the daemon"
    return None


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


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
            if dst.exists():
                continue
            _copy_in(src, dst)
        fsync_dir(folder)
        src.unlink()
        fsync_dir(src.parent)
        return dst
    raise OSError(errno.EEXIST, f"no free name for {name} in {folder}")


def _copy_in(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.copying")
    shutil.copyfile(src, tmp, follow_symlinks=False)
    fsync_file(tmp)
    os.replace(tmp, dst)
