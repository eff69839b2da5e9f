"""`edgeguard run`: the watch-folder service.

The main thread owns signals, arrivals, systemd notifications and time limits;
one worker thread owns the model, the ledger and the files. Signal handlers
only set events; the main loop acts on them.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from edgeguard.config import Config, load_config
from edgeguard.daemon import ledger as L
from edgeguard.daemon.claim import Refused
from edgeguard.daemon.folders import FolderLocks, Folders, free_bytes, output_problem, prepare
from edgeguard.daemon.jobs import Jobs, Withdrawn
from edgeguard.daemon.notify import Notifier
from edgeguard.daemon.watcher import Arrivals
from edgeguard.engine import Engine
from edgeguard.errors import Cancelled, EdgeguardError, ExitCode, FileError

log = logging.getLogger(__name__)

TICK = 0.25  # main-loop period, seconds
# A main-loop tick this late means the process was stopped (SIGSTOP) or the machine slept:
# that time is not the file's, and is not counted against its time limit.
STALL = 5.0
LEDGER_CHECK = 5.0  # seconds between checks that the ledger is still the file the daemon opened


@dataclass(frozen=True)
class Verdict:
    """What the worker learnt about a file in incoming, for the main loop's arrivals."""

    name: str
    reason: str | None  # to log once (None: the worker logged it)
    retry: bool  # still being written: settle it again; else hold it until it changes (or `until`)
    until: float | None = None


@dataclass(frozen=True)
class Setup:
    cfg: Config
    folders: Folders
    engine: Engine


def space_short(cfg: Config, folders: Folders, size: int) -> str | None:
    """Why there is no room now for the output of an input of `size` bytes, or None."""
    need = cfg.daemon.min_free_mb * (1 << 20) + int(size * cfg.daemon.output_ratio)
    free = free_bytes(folders.output)
    if free < need:
        return f"{free >> 20} MiB free on {folders.output}, need {need >> 20} MiB"
    return None


class Worker(threading.Thread):
    """Claims and processes one file at a time, handed over by the main loop."""

    def __init__(self, setup: Setup) -> None:
        super().__init__(name="edgeguard-worker", daemon=True)
        self.setup = setup
        self.tasks: queue.Queue[Path | None] = queue.Queue(maxsize=1)
        self.cancel = threading.Event()
        self.ready = threading.Event()
        self.failed_start: BaseException | None = None
        self.busy = False  # set by the main loop when it hands over a task
        self.done = threading.Event()  # set when a task ends
        self.current: str | None = None
        self.started_at = 0.0
        self.last_progress = time.monotonic()
        self.fraction = 0.0
        self.retry_after = 0.0  # monotonic time before which no new work is handed over
        self.timed_out = False
        self.queued_jobs = 0
        self.verdicts: queue.SimpleQueue[Verdict] = queue.SimpleQueue()

    def run(self) -> None:
        try:
            self.ledger = L.Ledger(self.setup.folders.ledger)
            self.jobs = Jobs(self.setup.cfg, self.setup.folders, self.ledger, self.setup.engine)
            self.jobs.recover()
            self.queued_jobs = len(self.jobs.queued())
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread, which exits
            self.failed_start = exc
            self.ready.set()
            return
        self.ready.set()
        while True:
            task = self.tasks.get()
            if task is None:
                break
            try:
                self._one(task)
            except (sqlite3.Error, OSError) as exc:  # the ledger's or the folders' disk, not the file
                what = "the ledger" if isinstance(exc, sqlite3.Error) else "the folders"
                log.error(
                    "cannot write %s now (%s); retrying in %.0f s", what, exc, self.setup.cfg.daemon.pause_seconds
                )
                self.retry_after = time.monotonic() + self.setup.cfg.daemon.pause_seconds
            except Exception:  # a bug must not end the thread: the daemon would hang, busy forever
                log.exception("unexpected error; the job stays queued and is retried")
                self.retry_after = time.monotonic() + self.setup.cfg.daemon.pause_seconds
            finally:
                self.current = None
                self.busy = False
                self.done.set()  # wake the main loop: the next file is handed over now, not next tick
        self.jobs.close()
        self.ledger.close()

    def replace(self, setup: Setup) -> None:
        """Use a reloaded setup; only called while the worker is idle."""
        self.setup = setup
        self.jobs.close()
        self.jobs = Jobs(setup.cfg, setup.folders, self.ledger, setup.engine)

    def _one(self, path: Path) -> None:
        self.cancel.clear()
        self.timed_out = False
        queued = self.jobs.queued()
        if queued:
            job_id = queued[0]
        elif not path.name:
            return
        else:
            try:
                job_id = self.jobs.claim(path.name)
            except Refused as exc:
                self.verdicts.put(Verdict(path.name, exc.reason, exc.retry))
                return
        job = self.ledger.get(job_id)
        assert job is not None
        self.current, self.started_at, self.fraction = job.name, time.monotonic(), 0.0
        self.last_progress = self.started_at
        last_saved = [0.0]

        def progress(fraction: float) -> None:
            now = time.monotonic()
            self.fraction, self.last_progress = fraction, now
            if now - last_saved[0] >= 2.0:
                last_saved[0] = now
                self.ledger.update(job_id, progress=round(fraction, 4))

        try:
            self.jobs.run(job_id, self.cancel, progress)
        except Withdrawn as exc:
            self.verdicts.put(Verdict(exc.name, None, retry=exc.until is None, until=exc.until))
        except Cancelled:
            if self.timed_out:
                self.jobs.fail(job_id, f"time limit of {self.setup.cfg.daemon.file_timeout:g} s exceeded", "timeout")
            else:
                log.info("%s: rolled back; it stays in the work folder and is taken first next time", job.name)
        except FileError as exc:  # transient: disk full and the like
            self.retry_after = time.monotonic() + self.setup.cfg.daemon.pause_seconds
            log.warning("%s: %s; kept for a retry in %.0f s", job.name, exc.reason, self.setup.cfg.daemon.pause_seconds)
        except OSError as exc:
            # The folders themselves misbehave (e.g. disk full while moving); nothing is lost,
            # the job goes back to the queue (the attempt counts, as a crash's would).
            self._requeue(job_id)
            self.retry_after = time.monotonic() + self.setup.cfg.daemon.pause_seconds
            log.error("%s: %s; will retry", job.name, exc)
        except Exception:
            self._requeue(job_id)
            raise
        finally:
            self.queued_jobs = len(self.jobs.queued())

    def _requeue(self, job_id: int) -> None:
        """Put a job an error interrupted mid-attempt back in the queue (else it waits for a restart)."""
        job = self.ledger.get(job_id)
        if job is not None and job.state == L.PROCESSING:
            self.ledger.update(job_id, state=L.QUEUED)


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

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        (self.hup if signum == signal.SIGHUP else self.stop).set()

    def _load(self, cfg: Config | None = None, engine: Engine | None = None) -> Setup:
        cfg = cfg or load_config(self.config_path, self.overrides)
        folders = prepare(cfg.paths)
        self.locks.hold(folders)  # before the model loads: a second daemon refuses at once
        return Setup(cfg, folders, engine or Engine(cfg))

    def set_status(self, text: str) -> None:
        if text != self._status:
            self._status = text
            self.notifier.status(text)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        setup = self._load()
        worker = Worker(setup)
        worker.start()
        worker.ready.wait()
        if worker.failed_start is not None:
            raise worker.failed_start
        self._ledger_id = _file_id(worker.ledger.path)
        arrivals = Arrivals(setup.folders.incoming, setup.cfg.watch)
        arrivals.start()
        log.info(
            "watching %s (model %s on %s)",
            setup.folders.incoming,
            setup.engine.detector.model_name,
            setup.engine.detector.target,
        )
        self.notifier.ready("idle")
        try:
            setup = self._loop(setup, worker, arrivals)
        finally:
            arrivals.stop()
        return self._shutdown(setup, worker)

    def _loop(self, setup: Setup, worker: Worker, arrivals: Arrivals) -> Setup:
        interval = self.notifier.watchdog_interval()
        last_ping = 0.0
        paused_until = 0.0
        last_tick = next_ledger_check = time.monotonic()
        while not self.stop.is_set():
            now = time.monotonic()
            if now - last_tick > STALL:
                # Stopped (SIGSTOP) or asleep: the file in progress did not use that time.
                log.info(
                    "the daemon did not run for %.0f s (stopped or asleep); not counted against the time limit",
                    now - last_tick,
                )
                worker.started_at += now - last_tick
                worker.last_progress = now
            last_tick = now
            if now >= next_ledger_check:
                next_ledger_check = now + LEDGER_CHECK
                # The worker's ledger: a reload does not reopen it, even if paths.state changed.
                if _file_id(worker.ledger.path) != self._ledger_id:
                    log.error(
                        "the ledger %s was deleted or replaced while running; stopping (a restart begins a new"
                        " one, and what it no longer knows may be processed again)",
                        worker.ledger.path,
                    )
                    self.exit_code = ExitCode.SETUP
                    self.stop.set()
                    break
            while not worker.verdicts.empty():
                verdict = worker.verdicts.get()
                if verdict.retry:
                    arrivals.unsettle(verdict.name)
                else:
                    arrivals.hold(verdict.name, verdict.reason, verdict.until)
            if (
                interval
                and now - last_ping >= interval / 2
                and (not worker.busy or now - worker.last_progress < interval)
            ):
                # Pings only while the worker makes progress: a hung inference lets systemd restart us.
                self.notifier.watchdog()
                last_ping = now
            if self.hup.is_set() and not worker.busy:
                self.hup.clear()
                setup, arrivals = self._reload(setup, worker, arrivals)
                paused_until = 0.0  # look at the disk again now, with the new config's limits
            if worker.busy:
                self._watch_time_limit(setup, worker, now)
                self.set_status(
                    f"processing {worker.current or '...'} {worker.fraction:.0%} (queue {arrivals.pending()})"
                )
            elif now >= max(paused_until, worker.retry_after) and not self.hup.is_set():
                paused_until = self._hand_over(setup, worker, arrivals, now)
            # Signals are seen within a tick; a finished file wakes the loop at once.
            worker.done.wait(TICK)
            worker.done.clear()
        return setup

    def _hand_over(self, setup: Setup, worker: Worker, arrivals: Arrivals, now: float) -> float:
        """Give the worker its next file; returns the time until which to pause."""
        if worker.queued_jobs:
            task: Path | None = Path()
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
        short = space_short(setup.cfg, setup.folders, size)
        problem = f"disk space low ({short})" if short else output_problem(setup.folders)
        if problem:
            self.set_status(f"paused: {'disk' if short else 'output'} ({short or problem})")
            log.warning("paused: %s; retrying in %.0f s", problem, setup.cfg.daemon.pause_seconds)
            return now + setup.cfg.daemon.pause_seconds
        # The time limit and the watchdog count from now: until the worker has claimed the file,
        # started_at would be the previous job's (or 0.0 at first) and trip the limit at once.
        worker.started_at = worker.last_progress = now
        worker.busy = True
        worker.tasks.put(task)
        return 0.0

    def _watch_time_limit(self, setup: Setup, worker: Worker, now: float) -> None:
        limit = setup.cfg.daemon.file_timeout
        if limit and not worker.cancel.is_set() and now - worker.started_at > limit:
            log.error("%s: time limit of %g s exceeded; stopping it", worker.current, limit)
            worker.timed_out = True
            worker.cancel.set()

    def _reload(self, setup: Setup, worker: Worker, arrivals: Arrivals) -> tuple[Setup, Arrivals]:
        self.notifier.reloading()
        try:
            cfg = load_config(self.config_path, self.overrides)
            same_model = (
                cfg.detector == setup.cfg.detector
                and cfg.models == setup.cfg.models
                # the lowest score the loaded model returns depends on it (Mask R-CNN's graph)
                and cfg.temporal.keyframe_confidence == setup.cfg.temporal.keyframe_confidence
            )
            # The engine reads protect/video/media settings from its config: a new one around
            # the already loaded model, so they take effect without reloading the model.
            new = self._load(cfg, Engine(cfg, setup.engine.detector) if same_model else None)
        except EdgeguardError as exc:
            for line in str(exc).splitlines():
                log.error("reload refused, keeping the running config: %s", line)
            self.notifier.ready(self._status or "idle")
            return setup, arrivals
        worker.replace(new)
        if new.folders.incoming != setup.folders.incoming or new.cfg.watch != setup.cfg.watch:
            arrivals.stop()
            arrivals = Arrivals(new.folders.incoming, new.cfg.watch)
            arrivals.start()
        log.info("configuration reloaded%s", "" if same_model else " (model reloaded)")
        self.notifier.ready(self._status or "idle")
        return new, arrivals

    def _shutdown(self, setup: Setup, worker: Worker) -> int:
        self.notifier.stopping()
        grace = setup.cfg.daemon.stop_grace
        if worker.busy:
            log.info("stopping: letting %s finish for up to %g s", worker.current, grace)
            deadline = time.monotonic() + grace
            while worker.busy and time.monotonic() < deadline:
                time.sleep(0.05)
            if worker.busy:
                log.info("stopping: rolling back %s", worker.current)
                worker.cancel.set()
        worker.tasks.put(None)
        worker.join(timeout=10)
        if worker.is_alive():
            # A hung native call; the ledger shows the job as in progress and the next start retries it.
            log.error("worker did not stop; exiting anyway")
            logging.shutdown()
            os._exit(ExitCode.INTERNAL)
        self.locks.release()
        log.info("stopped")
        return self.exit_code


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino
