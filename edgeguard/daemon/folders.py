"""The daemon's folders: checked at start, and moves that never clobber or half-happen."""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgeguard.config import PathsConfig
from edgeguard.durable import make_folders
from edgeguard.errors import SetupError

log = logging.getLogger(__name__)

LEDGER_NAME = "ledger.sqlite3"
# Only the daemon may write these: what is in them is trusted (no link can be swapped in).
PRIVATE = ("work", "state")
PRIVATE_MODE = 0o700
# Each of these must be a folder of its own.
DISTINCT = ("incoming", "output", "work", "state", "sealed")
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
    sealed: Path

    @property
    def ledger(self) -> Path:
        return self.state / LEDGER_NAME


def prepare(paths: PathsConfig) -> Folders:
    """Create the folders (with paths.mode.folders; work and state owner-only), check they are
    writable and that atomic renames are possible."""
    given = {k: v.absolute() for k, v in paths.folders().items()}
    # Resolved once: a folder given as a symlink is watched where it points now (inotify
    # does not follow links), and a later change of the link is not followed.
    folders = Folders(**{k: Path(os.path.realpath(v)) for k, v in given.items()})
    for key, path in vars(folders).items():
        if path != given[key] and given[key].is_symlink():
            log.info("paths.%s: %s is a symlink; using %s", key, given[key], path)
    problems: list[str] = []
    # These hold what no other folder may (uploads, outputs, claims, the ledger, sealed files): one
    # shared with another would have its files taken for the other's (e.g. sealed files adopted
    # from work as originals).
    keys = list(vars(folders))
    for i, key in enumerate(keys):
        for other in keys[i + 1 :]:
            if getattr(folders, key) == getattr(folders, other) and {key, other} & set(DISTINCT):
                problems.append(f"paths.{key} and paths.{other} are the same folder ({getattr(folders, key)})")
    for key, path in vars(folders).items():
        try:
            make_folders(path, paths.mode.folders)
            if key in PRIVATE:
                path.chmod(PRIVATE_MODE)
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
