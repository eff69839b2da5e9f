"""The worker thread: takes one task at a time from the main loop and reports back in events.

It owns the model (through the engine), the files and the ledger. The main loop
talks to it only through `tasks` (what to do next) and the events `cancel` and
`timed_out` (stop the current file, and why); it answers only in events, and
always ends a task with `Finished`, whatever went wrong.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgeguard.cluster import STAGE as CLUSTER_STAGE
from edgeguard.config import Config
from edgeguard.daemon import events as E
from edgeguard.daemon import ledger as L
from edgeguard.daemon.claim import Refused
from edgeguard.daemon.folders import Folders
from edgeguard.daemon.jobs import Jobs, Stopped, Withdrawn
from edgeguard.engine import EngineLike
from edgeguard.errors import Cancelled, FileError, SetupError
from edgeguard.publish import Sink

log = logging.getLogger(__name__)

SAVE_PROGRESS = 2.0  # seconds between progress writes to the ledger (what `edgeguard status` shows)
POST_PROGRESS = 0.2  # seconds between progress events to the main loop


@dataclass(frozen=True)
class Setup:
    cfg: Config
    folders: Folders
    engine: EngineLike
    sink: Sink


QUEUED = Path()  # the task "take the next queued job" (a claimed file that waits in work)


class Worker(threading.Thread):
    """Claims and processes one file at a time, handed over by the main loop."""

    def __init__(self, setup: Setup, events: queue.SimpleQueue[E.Event]) -> None:
        super().__init__(name="edgeguard-worker", daemon=True)
        self.setup = setup
        self.events = events
        self.tasks: queue.Queue[Path | Setup | None] = queue.Queue(maxsize=1)
        self.cancel = threading.Event()
        self.timed_out = threading.Event()
        self.stopping = threading.Event()  # the daemon stops: interrupts even sealing (see Jobs)
        self.ledger_path = setup.folders.ledger
        self.waiting: str | None = None  # why the last task waits for the cluster (see E.Finished)

    def run(self) -> None:
        try:
            self.ledger = L.Ledger(self.ledger_path, mode=self.setup.cfg.paths.mode.files)
            self.jobs = self._jobs(self.setup)
            self.jobs.recover()
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread, which exits
            self.events.put(E.StartFailed(exc))
            return
        self.queued = len(self.jobs.queued())
        self.events.put(E.Ready(self.queued))
        while True:
            task = self.tasks.get()
            if task is None:
                break
            if isinstance(task, Setup):
                self._swap(task)
            else:
                self._task(task)
        self.jobs.close()
        self.ledger.close()

    def _swap(self, setup: Setup) -> None:
        """Use a reloaded setup; on failure keep the running one (the reload is logged as refused)."""
        try:
            jobs = self._jobs(setup)
        except OSError as exc:  # the new incoming folder cannot be opened
            log.error("reload refused, keeping the running config: cannot open %s: %s", setup.folders.incoming, exc)
            return
        except SetupError as exc:  # a recipients file that changed since the config was checked
            log.error("reload refused, keeping the running config: %s", exc)
            return
        self.jobs.close()
        self.setup, self.jobs = setup, jobs

    def _jobs(self, setup: Setup) -> Jobs:
        return Jobs(setup.cfg, setup.folders, self.ledger, setup.engine, setup.sink, self.stopping)

    def _task(self, path: Path) -> None:
        name: str | None = path.name or None
        outcome, pause, report = "error", 0.0, None
        self.waiting = None
        try:
            name, outcome, pause, report = self._one(path)
        except (sqlite3.Error, OSError) as exc:  # the ledger's or the folders' disk, not the file
            what = "the ledger" if isinstance(exc, sqlite3.Error) else "the folders"
            pause = self.setup.cfg.daemon.pause_seconds
            log.error("cannot write %s now (%s); retrying in %.0f s", what, exc, pause)
        except Exception as exc:  # a bug must not end the thread: the daemon would hang, busy forever
            pause = self.setup.cfg.daemon.pause_seconds
            log.error("unexpected error (%s: %s); the job stays queued and is retried", type(exc).__name__, exc)
            log.debug("traceback of the unexpected error", exc_info=True)
        finally:
            try:
                self.queued = len(self.jobs.queued())
            except sqlite3.Error as exc:  # the ledger's disk again: keep the last count, and run on
                log.error("cannot read the ledger now (%s)", exc)
                pause = pause or self.setup.cfg.daemon.pause_seconds
            self.events.put(E.Finished(name, outcome, self.queued, pause, report, self.waiting))

    def _one(self, path: Path) -> tuple[str | None, str, float, E.FileReport | None]:
        """Run one task; returns the file's name, the outcome, a pause before the next and, for a
        file that reached a final state, its report."""
        self.cancel.clear()
        self.timed_out.clear()
        queued = self.jobs.queued()
        if queued:
            job_id = queued[0]
        elif path == QUEUED:
            return None, "idle", 0.0, None
        else:
            try:
                job_id = self.jobs.claim(path.name)
            except Refused as exc:
                self.events.put(E.Verdict(path.name, exc.reason, exc.retry, seen=exc.seen))
                return path.name, "refused", 0.0, None
        job = self.ledger.get(job_id)
        assert job is not None
        self.events.put(E.Started(job.name, job_id))
        pause = self.setup.cfg.daemon.pause_seconds
        since = time.monotonic()
        progress = self._progress(job.name, job_id)
        try:
            try:
                ended = self.jobs.run(job_id, self.cancel, progress)
            except Cancelled:
                if not self.timed_out.is_set():
                    log.info("%s: rolled back; it stays in the work folder and is taken first next time", job.name)
                    return job.name, "rolled back", 0.0, None
                # Failing it may itself be stopped or refused (sealing): the handlers below, as for a run.
                limit = self.setup.cfg.daemon.file_timeout
                ended = self.jobs.fail(job_id, f"time limit of {limit:g} s exceeded", "timeout", since, progress)
            return job.name, ended.outcome, 0.0, ended.report
        except Withdrawn as exc:
            self.events.put(E.Verdict(exc.name, None, retry=exc.until is None, until=exc.until, seen=exc.seen))
            return job.name, "withdrawn", 0.0, None
        except Stopped:
            log.info("%s: stopped while sealing its original; the next start finishes it", job.name)
            return job.name, "rolled back", 0.0, None
        except FileError as exc:  # transient: disk full, the cluster away, and the like
            log.warning("%s: %s; kept for a retry in %.0f s", job.name, exc.reason, pause)
            if exc.stage == CLUSTER_STAGE:
                self.waiting = exc.reason
            return job.name, "retry", pause, None
        except OSError as exc:
            # The folders themselves misbehave (e.g. disk full while moving); nothing is lost,
            # the job goes back to the queue (the attempt counts, as a crash's would).
            self._requeue(job_id)
            log.error("%s: %s; will retry", job.name, exc)
            return job.name, "retry", pause, None
        except Exception:
            self._requeue(job_id)
            raise

    def _progress(self, name: str, job_id: int) -> Callable[[float], None]:
        """The progress callback for one job: called on this thread (the engine reports from its caller)."""
        saved = posted = 0.0

        def progress(fraction: float) -> None:
            nonlocal saved, posted
            now = time.monotonic()
            if now - posted >= POST_PROGRESS or fraction >= 1.0:
                posted = now
                self.events.put(E.Progress(name, fraction))
            if now - saved >= SAVE_PROGRESS:
                saved = now
                self.ledger.update(job_id, progress=round(fraction, 4))

        return progress

    def _requeue(self, job_id: int) -> None:
        """Put a job an error interrupted mid-attempt back in the queue (else it waits for a restart)."""
        job = self.ledger.get(job_id)
        if job is not None and job.state == L.PROCESSING:
            self.ledger.update(job_id, state=L.QUEUED)
