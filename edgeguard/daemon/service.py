"""`edgeguard run`: the watch-folder service.

The main thread owns signals, arrivals, systemd notifications and the clock
(time limits, watchdog); the worker thread (`worker`) owns the model, the
ledger and the files, and reports in events (`events`). Signal handlers only
set events; the main loop acts on them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from edgeguard import durable, seal
from edgeguard.cluster import engine_for, reconfigured
from edgeguard.config import Config, load_config
from edgeguard.daemon import events as E
from edgeguard.daemon.folders import FolderLocks, Folders, prepare
from edgeguard.daemon.metrics import Metrics
from edgeguard.daemon.notify import Notifier
from edgeguard.daemon.watcher import Arrivals
from edgeguard.daemon.worker import QUEUED, Setup, Worker
from edgeguard.engine import EngineLike
from edgeguard.errors import EdgeguardError, ExitCode
from edgeguard.publish import LocalFolder, Sink

log = logging.getLogger(__name__)

TICK = 0.25  # main-loop period, seconds
# A main-loop tick this late means the process was stopped (SIGSTOP) or the machine slept:
# that time is not the file's, and is not counted against its time limit.
STALL = 5.0
LEDGER_CHECK = 5.0  # seconds between checks that the ledger is still the file the daemon opened
STATUS_EVERY = 1.0  # seconds between progress statuses of one file


def sink_for(cfg: Config, folders: Folders) -> Sink:
    """Where outputs are published: the output folder (the one sink today)."""
    d = cfg.daemon
    mode = cfg.paths.mode.files
    return LocalFolder(folders.output, min_free=d.min_free_mb << 20, output_ratio=d.output_ratio, mode=mode)


def room_for(setup: Setup, size: int) -> tuple[str, str] | None:
    """Why the next file (of `size` bytes) must wait before it is claimed, as (metrics' pause reason,
    what to say): no room for its output, or, where originals are sealed, for its sealed original
    (found now, not after the work)."""
    problem = setup.sink.problem(size)
    if problem:
        return "output", problem
    d = setup.cfg.daemon
    if d.originals == "seal":
        need = (d.min_free_mb << 20) + seal.sealed_size(size, len(setup.cfg.seal.recipients))
        if durable.same_filesystem(setup.folders.sealed, setup.folders.output):
            need += int(size * d.output_ratio)  # the output takes its room there first
        problem = durable.short_of_space(setup.folders.sealed, need)
        if problem:
            return "sealed", problem
    return None


@dataclass
class Current:
    """The main loop's view of the worker, kept from its events (only the main thread touches it)."""

    busy: bool = False
    name: str | None = None
    started_at: float = 0.0  # when the current file was handed over (its time limit counts from here)
    last_progress: float = 0.0  # the watchdog is fed only while this moves
    fraction: float = 0.0
    queued: int = 0  # jobs waiting in the work folder
    resume_at: float = 0.0  # no new task before this (monotonic)
    waiting: str | None = None  # why: the cluster is away (cluster.mode: only); else the disk

    def on_event(self, event: E.Event) -> None:
        now = time.monotonic()
        if isinstance(event, E.Ready):
            self.queued = event.queued
        elif isinstance(event, E.Started):
            self.name, self.fraction, self.last_progress = event.name, 0.0, now
        elif isinstance(event, E.Progress):
            self.fraction, self.last_progress = event.fraction, now
        elif isinstance(event, E.Finished):
            self.busy, self.name, self.queued = False, None, event.queued
            self.resume_at = now + event.pause if event.pause else 0.0
            self.waiting = event.waiting


class Service:
    def __init__(self, config_path: Path | None, overrides: Sequence[str] = ()) -> None:
        self.config_path = config_path
        self.overrides = list(overrides)
        self.stop = threading.Event()
        self.hup = threading.Event()
        self.notifier = Notifier()
        self._status = ""
        self.locks = FolderLocks()
        self._ledger_id: tuple[int, int] | None = None
        self.exit_code = ExitCode.OK
        self.events: queue.SimpleQueue[E.Event] = queue.SimpleQueue()
        self.current = Current()
        self.pause_reason = "output"  # why the last hand-over paused (the metrics' reason label)
        self.metrics = Metrics()
        # Every event goes to each handler in turn, on the main thread.
        self.handlers: list[E.Handler] = [self.current.on_event, self.metrics.on_event]

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        (self.hup if signum == signal.SIGHUP else self.stop).set()

    def _load(self, cfg: Config | None = None, engine: EngineLike | None = None) -> Setup:
        cfg = cfg or load_config(self.config_path, self.overrides)
        folders = prepare(cfg.paths)
        self.locks.hold(folders)  # before the model loads: a second daemon refuses at once
        return Setup(cfg, folders, engine or engine_for(cfg), sink_for(cfg, folders))

    def _next_event(self, timeout: float) -> E.Event | None:
        """The worker's next event, after every handler has seen it; None after `timeout` without one."""
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            return None
        for handle in self.handlers:
            handle(event)
        return event

    def set_status(self, text: str) -> None:
        if text != self._status:
            self._status = text
            self.notifier.status(text)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        # Owner-only until each file is given its paths.mode: what a library creates (the encoder's
        # output, SQLite's files) is never readable by others for an instant, whatever umask we got.
        os.umask(0o077)
        setup = self._load()
        worker = Worker(setup, self.events)
        worker.start()
        first = None
        while first is None:
            first = self._next_event(TICK)
        if isinstance(first, E.StartFailed):
            raise first.error
        self._ledger_id = _file_id(worker.ledger_path)
        self._configure_metrics(setup)
        arrivals = Arrivals(setup.folders.incoming, setup.cfg.watch)
        arrivals.start()
        log.info("watching %s (model %s on %s)", setup.folders.incoming, setup.engine.model_name, setup.engine.target)
        self.notifier.ready("idle")
        try:
            setup = self._loop(setup, worker, arrivals)
        finally:
            arrivals.stop()
        return self._shutdown(setup, worker)

    def _configure_metrics(self, setup: Setup) -> None:
        folder = setup.cfg.metrics.folder
        if folder is not None and not folder.is_dir():
            # Not a reason to stop protecting files: said once, and the metrics stay in memory.
            log.error("metrics.folder %s is not a folder; no metrics are written", folder)
            folder = None
        self.metrics.configure(folder, setup.engine.model_name, setup.engine.target)

    def _loop(self, setup: Setup, worker: Worker, arrivals: Arrivals) -> Setup:
        interval = self.notifier.watchdog_interval()
        last_ping = status_at = 0.0
        paused_until = 0.0
        last_tick = next_ledger_check = time.monotonic()
        current = self.current
        while not self.stop.is_set():
            now = time.monotonic()
            if now - last_tick > STALL:
                # Stopped (SIGSTOP) or asleep: the file in progress did not use that time.
                log.info(
                    "the daemon did not run for %.0f s (stopped or asleep); not counted against the time limit",
                    now - last_tick,
                )
                current.started_at += now - last_tick
                current.last_progress = now
            last_tick = now
            if not worker.is_alive():
                # A bug killed it (it ends every task with an event otherwise): nothing would run again.
                log.error("the worker thread stopped unexpectedly; exiting (the next start recovers)")
                self.exit_code = ExitCode.INTERNAL
                break
            if now >= next_ledger_check:
                next_ledger_check = now + LEDGER_CHECK
                # The worker's ledger: a reload does not reopen it, even if paths.state changed.
                if _file_id(worker.ledger_path) != self._ledger_id:
                    log.error(
                        "the ledger %s was deleted or replaced while running; stopping (a restart begins a new"
                        " one, and what it no longer knows may be processed again)",
                        worker.ledger_path,
                    )
                    self.exit_code = ExitCode.SETUP
                    self.stop.set()
                    break
            if (
                interval
                and now - last_ping >= interval / 2
                and (not current.busy or now - current.last_progress < interval)
            ):
                # Pings only while the worker makes progress: a hung inference lets systemd restart us.
                self.notifier.watchdog()
                last_ping = now
            if self.hup.is_set() and not current.busy:
                self.hup.clear()
                setup, arrivals = self._reload(setup, worker, arrivals)
                paused_until = 0.0  # look at the disk again now, with the new config's limits
            if current.busy:
                self._watch_time_limit(setup, worker, now)
                # At most one progress status a second: each is a datagram to the manager, which
                # may be slow to read (a full queue costs a send timeout each).
                if now - status_at >= STATUS_EVERY or not self._status.startswith(f"processing {current.name} "):
                    status_at = now
                    self.set_status(
                        f"processing {current.name or '...'} {current.fraction:.0%} (queue {arrivals.pending()})"
                    )
            elif now >= max(paused_until, current.resume_at) and not self.hup.is_set():
                paused_until = self._hand_over(setup, worker, arrivals, now)
            elif now < current.resume_at and current.waiting:
                self.set_status(f"paused: {current.waiting}")
            paused = self.pause_reason if now < paused_until else None
            if paused is None and now < current.resume_at:
                paused = "cluster" if current.waiting else "storage"
            self.metrics.tick(now, queue=arrivals.pending() + current.queued, busy=current.busy, paused=paused)
            # Signals are seen within a tick; an event (a finished file) wakes the loop at once.
            event = self._next_event(TICK)
            while event is not None:
                if isinstance(event, E.Verdict):
                    if event.retry:
                        arrivals.unsettle(event.name, event.reason)
                    else:
                        arrivals.hold(event.name, event.reason, event.until, event.seen)
                event = self._next_event(0)
        return setup

    def _hand_over(self, setup: Setup, worker: Worker, arrivals: Arrivals, now: float) -> float:
        """Give the worker its next file; returns the time until which to pause."""
        current = self.current
        if current.queued:
            task = QUEUED
            size = 0
        else:
            ready = arrivals.settled()
            if not ready:
                self.set_status(f"idle (queue {arrivals.pending()})")
                return 0.0
            task = ready[0]
            try:
                size = task.lstat().st_size
            except FileNotFoundError:
                arrivals.forget(task)
                return 0.0
        short = room_for(setup, size)
        if short:
            self.pause_reason, problem = short
            self.set_status(f"paused: {problem}")
            log.warning("paused: %s; retrying in %.0f s", problem, setup.cfg.daemon.pause_seconds)
            return now + setup.cfg.daemon.pause_seconds
        # The time limit and the watchdog count from the hand-over, not from the claim.
        current.busy, current.started_at, current.last_progress = True, now, now
        worker.tasks.put(task)
        return 0.0

    def _watch_time_limit(self, setup: Setup, worker: Worker, now: float) -> None:
        limit = setup.cfg.daemon.file_timeout
        if limit and not worker.cancel.is_set() and now - self.current.started_at > limit:
            log.error("%s: time limit of %g s exceeded; stopping it", self.current.name, limit)
            worker.timed_out.set()
            worker.cancel.set()

    def _reload(self, setup: Setup, worker: Worker, arrivals: Arrivals) -> tuple[Setup, Arrivals]:
        self.notifier.reloading()
        try:
            cfg = load_config(self.config_path, self.overrides)
            engine, reloaded = reconfigured(setup.engine, cfg)
            new = self._load(cfg, engine)
        except EdgeguardError as exc:
            for line in str(exc).splitlines():
                log.error("reload refused, keeping the running config: %s", line)
            self.notifier.ready(self._status or "idle")
            return setup, arrivals
        worker.tasks.put(new)  # taken before any next task: the worker swaps it in on its own thread
        if new.folders.incoming != setup.folders.incoming or new.cfg.watch != setup.cfg.watch:
            arrivals.stop()
            arrivals = Arrivals(new.folders.incoming, new.cfg.watch)
            arrivals.start()
        self._configure_metrics(new)
        log.info("configuration reloaded%s", " (model reloaded)" if reloaded else "")
        self.notifier.ready(self._status or "idle")
        return new, arrivals

    def _shutdown(self, setup: Setup, worker: Worker) -> int:
        self.notifier.stopping()
        grace = setup.cfg.daemon.stop_grace
        current = self.current
        if current.busy and worker.is_alive():
            log.info("stopping: letting %s finish for up to %g s", current.name, grace)
            deadline = time.monotonic() + grace
            while current.busy and time.monotonic() < deadline:
                self._next_event(min(TICK, max(0.0, deadline - time.monotonic())))
            if current.busy:
                log.info("stopping: rolling back %s", current.name)
                worker.stopping.set()
                worker.cancel.set()
        with contextlib.suppress(queue.Full):  # a worker hung before taking its task: see below
            worker.tasks.put(None, timeout=10)
        worker.join(timeout=10)
        if worker.is_alive():
            # A hung native call; the ledger shows the job as in progress and the next start retries it.
            log.error("worker did not stop; exiting anyway")
            logging.shutdown()
            os._exit(ExitCode.INTERNAL)
        setup.engine.close()  # a cluster's driver process, if any
        self.metrics.write(time.monotonic())  # what the last file did, even within the last second
        self.locks.release()
        log.info("stopped")
        return self.exit_code


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino
