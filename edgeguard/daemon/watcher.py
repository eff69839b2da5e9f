"""Arrivals: which files in the incoming folder have fully arrived.

inotify (through watchdog) gives the hints: a close-after-write is the best
"finished" signal, but a file moved in from another filesystem gives only a
create event and events are lost when the queue overflows. So every name that
an event or a periodic rescan mentions is settled by size and mtime, and no
file is taken while a writer still has it open.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from edgeguard.config import WatchConfig

log = logging.getLogger(__name__)

# Longest name (UTF-8 bytes) taken: the work folder adds a job prefix and the temporary
# and failed-folder names add suffixes, all within the filesystem's 255-byte NAME_MAX.
MAX_NAME_BYTES = 200


@dataclass(frozen=True)
class Seen:
    """A file as the worker judged it: `hold` holds only that file, unchanged since.

    `ctime_ns` None: not compared (the daemon's own link and unlink move it).
    """

    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int | None = None

    @classmethod
    def of(cls, st: os.stat_result, *, ctime: bool = True) -> Seen:
        return cls(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns if ctime else None)

    def still(self, st: os.stat_result) -> bool:
        same = (self.ino, self.size, self.mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)
        return same and (self.ctime_ns is None or self.ctime_ns == st.st_ctime_ns)


@dataclass
class _Entry:
    size: int
    mtime_ns: int
    stable_since: float
    open_writers: int = 0
    ctime_ns: int = 0
    held: bool = False  # refused or given back: not offered again until it changes (or `held_until`)
    held_until: float | None = None
    waiting: bool = False  # said once that it is still being written


class _Handler(FileSystemEventHandler):
    def __init__(self, arrivals: Arrivals) -> None:
        self.arrivals = arrivals

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            if raw:
                name = os.path.basename(os.fsdecode(raw))
                if isinstance(event, FileOpenedEvent):
                    self.arrivals.note(name, +1)
                elif isinstance(event, FileClosedEvent | FileClosedNoWriteEvent):
                    self.arrivals.note(name, -1)
                else:
                    self.arrivals.note(name, 0)


class Arrivals:
    """Tracks the incoming folder; `settled()` returns the files ready to claim."""

    def __init__(self, folder: Path, cfg: WatchConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.folder = folder
        self.cfg = cfg
        self.clock = clock
        self._lock = threading.Lock()
        self._touched: dict[str, int] = {}  # name -> open/close balance since last look
        self._entries: dict[str, _Entry] = {}
        self._reported: set[str] = set()
        self._next_rescan = 0.0
        self._observer: Observer | None = None  # type: ignore[valid-type]

    def start(self) -> None:
        observer = Observer()
        observer.schedule(_Handler(self), str(self.folder), recursive=False)
        observer.daemon = True
        observer.start()
        self._observer = observer

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

    def note(self, name: str, writers: int) -> None:
        """Called from the observer thread for every event on `name`."""
        with self._lock:
            self._touched[name] = self._touched.get(name, 0) + writers

    def rescan_now(self) -> None:
        self._next_rescan = 0.0

    def wanted(self, name: str) -> bool:
        low = name.lower()
        if any(fnmatch.fnmatchcase(low, p.lower()) for p in self.cfg.ignore):
            return False
        return any(fnmatch.fnmatchcase(low, p.lower()) for p in self.cfg.patterns)

    def pending(self) -> int:
        return len(self._entries)

    def settled(self) -> list[Path]:
        """Files whose size and mtime held still for settle_seconds with no writer open, oldest first."""
        now = self.clock()
        with self._lock:
            touched, self._touched = self._touched, {}
        names = set(touched)
        if now >= self._next_rescan:
            self._next_rescan = now + self.cfg.rescan_seconds
            try:
                names.update(e.name for e in os.scandir(self.folder))
            except OSError as exc:
                log.error("cannot list %s: %s", self.folder, exc.strerror or exc)
        names.update(self._entries)
        ready: list[tuple[float, Path]] = []
        for name in names:
            entry = self._look(name, touched.get(name, 0), name in touched, now)
            if entry is not None and entry.open_writers <= 0 and now - entry.stable_since >= self.cfg.settle_seconds:
                ready.append((entry.stable_since, self.folder / name))
        return [p for _, p in sorted(ready)]

    def forget(self, path: Path) -> None:
        self._entries.pop(path.name, None)

    def hold(self, name: str, reason: str | None, until: float | None = None, seen: Seen | None = None) -> None:
        """Do not offer `name` again until it changes, or until wall-clock time `until`; logs `reason` once.

        `seen` is the file the worker judged: if a writer came back (or the file was replaced)
        since then, the change the hold would wait for is over, and the file settles again.
        """
        try:
            st = os.lstat(self.folder / name)
        except OSError:
            self._entries.pop(name, None)
            return
        if seen is not None and not seen.still(st):
            log.info("%s: changed while it was judged; taken again once it settles", self.folder / name)
            old = self._entries.get(name)
            entry = _Entry(st.st_size, st.st_mtime_ns, self.clock(), ctime_ns=st.st_ctime_ns)
            entry.open_writers = old.open_writers if old is not None else 0
            self._entries[name] = entry
            return
        # As it is now: giving a claim back unlinks a name, which moves ctime.
        entry = _Entry(st.st_size, st.st_mtime_ns, self.clock(), ctime_ns=st.st_ctime_ns, held=True, held_until=until)
        self._entries[name] = entry
        if reason is not None:
            self._report(name, reason)
        else:
            self._reported.add(name)

    def unsettle(self, name: str, reason: str | None = None) -> None:
        """Start `name`'s settle time again (it turned out to be still written); says `reason` once a file."""
        entry = self._entries.get(name)
        if entry is not None:
            entry.stable_since = self.clock()
            if reason is not None and not entry.waiting:
                entry.waiting = True  # once: an upload can stall for hours, refused at every settle
                log.info("%s: waiting: %s", self.folder / name, reason)

    def _look(self, name: str, writers: int, evented: bool, now: float) -> _Entry | None:
        if not self.wanted(name):
            self._entries.pop(name, None)
            return None
        try:
            st = os.lstat(self.folder / name)
        except FileNotFoundError:
            self._entries.pop(name, None)
            self._reported.discard(name)
            return None
        except OSError as exc:
            self._report(name, f"cannot stat: {exc.strerror or exc}")
            return None
        if not stat.S_ISREG(st.st_mode):
            kind = (
                "symlink" if stat.S_ISLNK(st.st_mode) else "directory" if stat.S_ISDIR(st.st_mode) else "special file"
            )
            self._report(name, f"skipped: a {kind}, not a regular file (never followed or opened)")
            self._entries.pop(name, None)
            return None
        problem = _name_problem(name)
        if problem is not None:
            # Claiming it would fail (ENAMETOOLONG, or the ledger refusing the name) every time,
            # and as the oldest file it would hold up every file behind it.
            self._report(name, f"skipped: {problem}")
            self._entries.pop(name, None)
            return None
        entry = self._entries.get(name)
        if entry is None:
            entry = _Entry(st.st_size, st.st_mtime_ns, now, ctime_ns=st.st_ctime_ns)
            self._entries[name] = entry
        elif (entry.size, entry.mtime_ns, entry.ctime_ns) != (st.st_size, st.st_mtime_ns, st.st_ctime_ns):
            entry.size, entry.mtime_ns, entry.ctime_ns, entry.stable_since = (
                st.st_size,
                st.st_mtime_ns,
                st.st_ctime_ns,
                now,
            )
            if entry.held:  # changed (rewritten, chmod-ed, ...): worth another look, and another report
                entry.held, entry.held_until = False, None
                self._reported.discard(name)
        entry.open_writers = max(0, entry.open_writers + writers)
        if writers:
            entry.stable_since = now
        if entry.held:
            if entry.held_until is None or time.time() < entry.held_until:
                return None
            entry.held, entry.held_until = False, None
        return entry

    def _report(self, name: str, what: str) -> None:
        if name not in self._reported:
            self._reported.add(name)
            log.warning("%s: %s", self.folder / name, what)


def _name_problem(name: str) -> str | None:
    """Why the daemon cannot carry a file of this name through its folders, or None."""
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "the name is not valid UTF-8"
    if size > MAX_NAME_BYTES:
        return f"the name is {size} bytes long; names of at most {MAX_NAME_BYTES} bytes are taken"
    return None
