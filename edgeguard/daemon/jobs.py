"""One input's life: claim, process, publish, dispose of the original; or fail it.

Each step is recorded in the ledger *before* it happens, so `recover()` can
finish or undo whatever a crash interrupted. Only complete, verified outputs
are ever renamed into the output folder.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeguard import __version__, seal
from edgeguard.config import Config
from edgeguard.daemon import audit, vault
from edgeguard.daemon import ledger as L
from edgeguard.daemon.claim import (
    Changed,
    Refused,
    Snapshot,
    being_written,
    changes,
    hash_claimed,
    link_into,
    open_regular,
    put_back,
    release,
)
from edgeguard.daemon.events import FileReport
from edgeguard.daemon.folders import Folders
from edgeguard.daemon.watcher import Seen
from edgeguard.durable import fsync_dir, move_noclobber, sweep_temporaries, write_file
from edgeguard.engine import EngineLike, Result
from edgeguard.errors import Cancelled, EdgeguardError, FileError, InputError, SetupError
from edgeguard.media import image as image_io
from edgeguard.media import media_kind
from edgeguard.media import video as video_io
from edgeguard.publish import Sink, is_staging, output_name, staging_path

log = logging.getLogger(__name__)

RELEASE_MARK = ".release"


class Withdrawn(Exception):
    """A job given back to the incoming folder; `until` is when to look at it again if it stays unchanged."""

    def __init__(self, name: str, reason: str, until: float | None, seen: Seen | None = None) -> None:
        super().__init__(reason)
        self.name = name  # where in incoming it is now
        self.reason = reason
        self.until = until
        self.seen = seen  # the file as it was claimed (and judged)


class Stopped(Exception):
    """The daemon stopped while a job's original was being sealed; the next start finishes it."""


@dataclass(frozen=True)
class Ended:
    """How a job ended: its final ledger state and what it took."""

    outcome: str
    report: FileReport


class Jobs:
    """Runs jobs for the daemon; every method is called from the one worker thread."""

    def __init__(
        self,
        cfg: Config,
        folders: Folders,
        ledger: L.Ledger,
        engine: EngineLike,
        sink: Sink,
        stopping: threading.Event | None = None,
    ) -> None:
        """`stopping`: set when the daemon stops; the one thing that interrupts sealing (a time limit
        does not: the output is out by then, or the file already judged)."""
        self.cfg = cfg
        self.folders = folders
        self.ledger = ledger
        self.engine = engine
        self.sink = sink
        self.stopping = stopping
        self._alive: Callable[[], None] | None = None  # while a job runs: "still working" (the watchdog)
        self.vault: vault.Vault | None = None
        if cfg.daemon.originals == "seal" or cfg.daemon.seal_failed:
            try:
                keys = cfg.seal.keys()
            except ValueError as exc:  # a recipients file changed since the config was checked
                raise SetupError(f"seal.recipients: {exc}") from None
            self.vault = vault.Vault(keys, cfg.paths.mode.files, ledger.id)
        # Every name in incoming is resolved against this descriptor, never through a path.
        self.incoming_fd = os.open(folders.incoming, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self.incoming_fd)

    # ------------------------------------------------------------- claiming

    def claim(self, name: str) -> int:
        """Take a settled file from incoming by hard-linking it into work; Refused if it may not be taken now."""
        try:
            # Before anything is tried: a fix that lands while it is refused (a chmod, the
            # whole file renamed over it) must not become what the hold waits to change.
            before = Seen.of(os.stat(name, dir_fd=self.incoming_fd, follow_symlinks=False))
        except OSError:
            before = None  # open_regular says why
        try:
            return self._claim(name)
        except Refused as exc:
            exc.seen = before
            raise

    def _claim(self, name: str) -> int:
        fd, st = open_regular(name, self.incoming_fd)
        try:
            if being_written(fd, st):
                raise Refused("open for writing by another process", retry=True)
            job_id = self.ledger.add(name, Path(), st.st_size)
            work = self.folders.work / f"{job_id:08d}-{name}"
            self.ledger.update(job_id, work_path=str(work))
            try:
                link_into(name, self.incoming_fd, work, st)
            except BaseException:
                self.ledger.delete(job_id)
                raise
        finally:
            os.close(fd)
        fsync_dir(self.folders.work)
        # After the link: linking moves ctime, and the snapshot is what later checks compare against.
        self._record(job_id, work)
        log.info("claimed %s as job %d", name, job_id, extra=_fields(name, job_id))
        return job_id

    def _record(self, job_id: int, work: Path) -> Snapshot:
        snap = Snapshot.of(work.lstat())
        self.ledger.update(
            job_id,
            state=L.QUEUED,
            size=snap.size,
            dev=snap.dev,
            ino=snap.ino,
            mtime_ns=snap.mtime_ns,
            ctime_ns=snap.ctime_ns,
        )
        return snap

    # ----------------------------------------------------------- processing

    def run(self, job_id: int, cancel: threading.Event, progress: Callable[[float], None]) -> Ended:
        """Process one queued job to a final state (Withdrawn if given back, FileError to retry)."""
        since = time.monotonic()
        self._alive = lambda: progress(1.0)
        try:
            job = self.ledger.get(job_id)
            if job is not None and job.state in (L.OUTPUT_DONE, L.FAILING):
                return self.ended(job_id, self._finish(job), since)
            outcome, result = self._run(job_id, cancel, progress, since)
        finally:
            self._alive = None
        return self.ended(job_id, outcome, since, result)

    def _finish(self, job: L.Job) -> str:
        """End a job whose output is out, or whose failure was decided, before a crash or a stop
        (or whose original could not be sealed yet): dispose of its original."""
        work = Path(job.work_path)
        if job.state == L.OUTPUT_DONE:
            log.info("job %d (%s): its output is out; disposing of its original", job.id, job.name)
            self._dispose_original(job.id, work, job.name, L.DONE)
            return L.DONE
        log.info("job %d (%s): finishing sending it to failed", job.id, job.name)
        return self._fail(job.id, work, job.reason or "failed before a crash", job.stage or "recover")

    def ended(self, job_id: int, outcome: str, since: float, result: Result | None = None) -> Ended:
        """The report of a job that reached `outcome`, begun at `since` (monotonic)."""
        job = self.ledger.get(job_id)
        stage = job.stage if job is not None and outcome == L.FAILED else None
        seconds = round(time.monotonic() - since, 3)
        if result is None:
            return Ended(outcome, FileReport(seconds, stage))
        report = FileReport(seconds, stage, result.frames, result.keyframes, result.fps, result.hidden_mean)
        return Ended(outcome, report)

    def _run(
        self, job_id: int, cancel: threading.Event, progress: Callable[[float], None], since: float
    ) -> tuple[str, Result | None]:
        job = self.ledger.get(job_id)
        assert job is not None
        work = Path(job.work_path)
        if job.attempts >= self.cfg.daemon.max_attempts:
            reason = f"gave up after {job.attempts} attempts that crashed or hung the daemon"
            return self._fail(job_id, work, reason, "poison", since), None
        snapshot = _snapshot(job)
        if snapshot is None:  # a row from before claims recorded the inode
            try:
                snapshot = self._record(job_id, work)
            except OSError as exc:
                return self._fail(job_id, work, f"cannot read: {exc.strerror or exc}", "read", since), None
        # Counted before anything reads the file: a read that hangs counts as an attempt too.
        self.ledger.start_attempt(job_id)
        started = time.time()
        try:
            digest = job.sha256 or hash_claimed(work, snapshot, cancel, lambda: progress(0.0))
            self.ledger.update(job_id, sha256=digest)
            earlier = self.ledger.done_with_hash(digest, job_id)
            if earlier is not None and earlier.output and self.sink.exists(earlier.output):
                log.info(
                    "%s: same content as job %d, whose output %s is still there; not processed again",
                    job.name,
                    earlier.id,
                    earlier.output,
                    extra=_fields(job.name, job_id, "duplicate", seconds=time.monotonic() - since),
                )
                # QUEUED with an output is what recovery reads as "a duplicate being disposed of".
                self.ledger.update(job_id, state=L.QUEUED, attempts=job.attempts, output=earlier.output)
                self._dispose_original(job_id, work, job.name, L.DUPLICATE)
                return L.DUPLICATE, None
            result, output_sha256 = self._protect(work, job.name, cancel, progress)
            why = changes(work, snapshot, digest)
            if why is not None:
                Path(result.output).unlink(missing_ok=True)
                raise Changed(why)
        except Changed as exc:
            reason = f"{exc}; nothing published, taken again once it settles"
            raise self._withdraw(job, snapshot, reason, None) from None
        except Cancelled as exc:
            # A rollback, not a crash: the attempt does not count toward max_attempts.
            self.ledger.update(job_id, state=L.QUEUED, attempts=job.attempts, reason=exc.reason)
            raise
        except FileError as exc:
            if exc.transient:
                self.ledger.update(job_id, state=L.QUEUED, attempts=job.attempts, stage=exc.stage, reason=exc.reason)
                raise
            young = snapshot.mtime_ns / 1e9 + self.cfg.watch.incomplete_seconds
            if isinstance(exc, InputError) and exc.incomplete and time.time() < young:
                # Perhaps a writer paused longer than settle_seconds: give it time to come back.
                reason = f"{exc.reason}; left in incoming until it changes or for {young - time.time():.0f} s"
                raise self._withdraw(job, snapshot, reason, young) from None
            return self._fail(job_id, work, exc.reason, exc.stage, since), None
        except OSError as exc:
            return self._fail(job_id, work, f"cannot read: {exc.strerror or exc}", "read", since), None
        except EdgeguardError as exc:
            return self._fail(job_id, work, str(exc), "process", since), None
        staged = Path(result.output)
        record = audit.build(
            job=job_id,
            name=job.name,
            input_sha256=digest,
            input_size=snapshot.size,
            output=staged,
            output_sha256=output_sha256,
            result=result,
            weights=self.engine.weights,
            cfg=self.cfg,
            started=started,
            seconds=time.monotonic() - since,
        )
        final = self._publish(job_id, result, job.name, job.attempts, record)
        seconds = time.monotonic() - since
        log.info(
            "%s -> %s: %d frames, %d detections, %.1f%% hidden, %.1f s",
            job.name,
            Path(final).name,
            result.frames,
            result.detections,
            100 * result.hidden_mean,
            seconds,
            extra=_fields(job.name, job_id, "done", seconds=seconds),
        )
        self._dispose_original(job_id, work, job.name, L.DONE)
        return L.DONE, result

    def _withdraw(self, job: L.Job, snapshot: Snapshot, reason: str, until: float | None) -> Withdrawn:
        """Give a job back to incoming (where its writer may still be adding to it); nothing is published."""
        work = Path(job.work_path)
        try:
            here = os.stat(job.name, dir_fd=self.incoming_fd, follow_symlinks=False)
        except FileNotFoundError:
            here = None
        back = Path(job.name)
        if here is not None and snapshot.same_file(here):
            work.unlink(missing_ok=True)  # the name in incoming still holds it
        elif work.exists():
            # Recorded first: after a crash mid-move, recovery finds it there (perhaps as NAME-1).
            back = move_noclobber(
                work,
                self.folders.incoming,
                job.name,
                before=lambda dst: self.ledger.update(job.id, final_path=str(dst)),
                alive=self._alive,
            )
        fsync_dir(self.folders.work)
        self.ledger.update(job.id, state=L.WITHDRAWN, reason=reason, attempts=job.attempts)
        log.warning("%s: %s", job.name, reason, extra=_fields(job.name, job.id, "withdrawn"))
        return Withdrawn(back.name, reason, until, Seen(snapshot.ino, snapshot.size, snapshot.mtime_ns))

    def _protect(
        self, work: Path, name: str, cancel: threading.Event, progress: Callable[[float], None]
    ) -> tuple[Result, str]:
        """The verified output, staged in work, and its sha256 (for the audit record)."""
        # The staging name keeps the output's extension: the engine picks the format from it.
        staged = staging_path(self.folders.work, output_name(name))

        def report(done: int, total: int | None) -> None:
            progress(done / total if total else 0.0)

        result = self.engine.protect_file(work, staged, progress=report, cancel=cancel)
        try:
            verify_output(Path(result.output), result, lambda: progress(1.0))
            # Fed and cancellable like the input's hash: a large output on a slow card takes a while.
            digest = audit.sha256_file(Path(result.output), alive=lambda: progress(1.0), cancel=cancel)
        except BaseException:
            Path(result.output).unlink(missing_ok=True)
            raise
        return result, digest

    def _publish(self, job_id: int, result: Result, name: str, attempts: int, record: dict[str, Any]) -> str:
        staged = Path(result.output)

        def before(where: str) -> None:
            # The address and the audit record are kept before the output appears: a crash right
            # after it must not lead to a second output, nor to an output without its record.
            self.ledger.update(job_id, output=where)
            self._keep_audit(job_id, audit.at(record, where))

        try:
            address = self.sink.publish(staged, output_name(name), before=before, alive=self._alive)
        except OSError as exc:
            # The sink's fault (read-only, full), not the file's: not an attempt that counts.
            staged.unlink(missing_ok=True)
            self.ledger.update(job_id, state=L.QUEUED, attempts=attempts, output=None)
            self.ledger.delete_audit(job_id)
            reason = f"cannot publish into {self.sink.describe()}: {exc.strerror or exc}"
            raise FileError(staged, reason, stage="publish", transient=True) from exc
        self.ledger.update(job_id, state=L.OUTPUT_DONE, output=address, progress=1.0)
        # Beside the output at once (the original still to be disposed of), so a reader that acts
        # on the output finds its record, and a stale sidecar of an earlier output is replaced.
        self._attach_audit(address, audit.at(record, address))
        return address

    def _attach_audit(self, address: str, record: dict[str, Any]) -> None:
        if not self.cfg.audit.sidecar:
            return
        # Written in work like the output, so the output folder never holds half of one.
        staged = staging_path(self.folders.work, Path(address).name + audit.SIDECAR)
        try:
            write_file(staged, audit.dumps(record).encode(), 0o600)  # the sink gives it the output's mode
            self.sink.attach(staged, address, audit.SIDECAR)
        except OSError as exc:  # the output is out and the ledger has the record: not worth a retry
            staged.unlink(missing_ok=True)
            log.error(
                "%s: cannot write its audit sidecar: %s (the ledger has the record: edgeguard audit)",
                Path(address).name,
                exc.strerror or exc,
            )

    def _recorded_final(self, job_id: int) -> Path | None:
        """Where an interrupted move recorded it was taking the original, if the file is there."""
        job = self.ledger.get(job_id)
        final = Path(job.final_path) if job is not None and job.final_path else None
        return final if final is not None and final.is_file() else None

    def _release_incoming(self, job_id: int) -> None:
        """Remove the claimed file's name from incoming (only if it still is the claimed file)."""
        job = self.ledger.get(job_id)
        snap = _snapshot(job) if job is not None else None
        if job is None or snap is None:
            return
        holding = self.folders.work / f".{job_id:08d}{RELEASE_MARK}"
        if release(job.name, self.incoming_fd, snap, holding):
            fsync_dir(self.folders.incoming)

    def _dispose_original(self, job_id: int, work: Path, name: str, state: str) -> None:
        self._release_incoming(job_id)
        policy = self.cfg.daemon.originals
        final: Path | None = None
        if policy == "delete":
            work.unlink(missing_ok=True)
            fsync_dir(work.parent)
        elif policy == "seal":
            job = self.ledger.get(job_id)
            final = self._seal(job_id, work, name, self.folders.sealed, {"output": job.output if job else None})
        else:
            folder = self.folders.quarantine if policy == "quarantine" else self.folders.processed
            if work.exists():
                final = move_noclobber(
                    work,
                    folder,
                    name,
                    before=lambda dst: self.ledger.update(job_id, final_path=str(dst)),
                    mode=self.cfg.paths.mode.files,
                    alive=self._alive,
                )
            else:  # moved before a crash
                final = self._recorded_final(job_id)
        if state == L.DONE:
            self._complete_audit(job_id, policy, final)
        self.ledger.update(job_id, state=state, final_path=str(final) if final else None)

    def _seal(self, job_id: int, work: Path, name: str, folder: Path, about: dict[str, Any]) -> Path | None:
        """Seal the original into `folder` (resuming an interrupted sealing), then delete its plaintext."""
        assert self.vault is not None
        job = self.ledger.get(job_id)
        named = Path(job.final_path) if job is not None and job.final_path else None
        if named is not None and (named.parent != folder or not named.name.endswith(seal.SUFFIX)):
            named = None  # recorded by another step (a move given back to incoming), not a sealed name
        try:
            final = self.vault.seal(
                job_id,
                work,
                name,
                folder,
                named=named,
                before=lambda dst: self.ledger.update(job_id, final_path=str(dst)),
                about={"job": job_id, "file": name, **about},
                cancel=self.stopping,
                alive=self._alive,
            )
        except Cancelled:
            raise Stopped(name) from None
        except (OSError, seal.SealError) as exc:  # sealed/ full or unwritable, the original unreadable
            detail = exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)
            reason = f"cannot seal its original into {folder}: {detail}; the plaintext stays in work"
            raise FileError(name, reason, stage="seal", transient=True) from exc
        if final is None:
            moved = self._recorded_final(job_id)
            if moved is not None:  # moved there under another policy before a crash and a config change
                log.warning("job %d (%s): its original was moved to %s before a crash; left there", job_id, name, moved)
                return moved
            log.error("job %d (%s): original missing from the work folder; nothing to seal", job_id, name)
            return None
        # From the record, not the config: a file sealed before a crash and a key change has the old keys.
        record = seal.read_record(final)
        keys = record["recipients"] if record is not None else self.vault.fingerprints()
        self.ledger.update(job_id, sealed_to=",".join(keys))
        # Only now: until the sealed file is durable under its name, the plaintext is the original.
        work.unlink(missing_ok=True)
        fsync_dir(work.parent)
        log.info("%s: original sealed as %s", name, final.name, extra=_fields(name, job_id))
        return final

    def _complete_audit(self, job_id: int, policy: str, original: Path | None) -> None:
        """Say in the output's audit record what became of the original; write the sidecar if configured.

        Before the job is marked done, so a crash in between does it again at the next start.
        """
        text = self.ledger.audit(job_id)
        if text is None:  # published by a version without audit records
            return
        job = self.ledger.get(job_id)
        sealed_to = job.sealed_to.split(",") if policy == "seal" and job is not None and job.sealed_to else None
        record = audit.with_original(json.loads(text), policy, original, sealed_to)
        self._keep_audit(job_id, record)
        self._attach_audit(record["output"]["path"], record)

    def _keep_audit(self, job_id: int, record: dict[str, Any]) -> None:
        """Keep a record (with its output's address) in the ledger, indexed by both files' hashes."""
        hashes = record["input"]["sha256"], record["output"]["sha256"]
        self.ledger.put_audit(job_id, record["output"]["path"], *hashes, audit.dumps(record))

    def fail(
        self, job_id: int, reason: str, stage: str, since: float, progress: Callable[[float], None] | None = None
    ) -> Ended:
        """Send a job's original to the failed folder with NAME.error.json; `since`: when its attempt began."""
        job = self.ledger.get(job_id)
        assert job is not None
        self._alive = None if progress is None else (lambda: progress(1.0))
        try:
            return self.ended(job_id, self._fail(job_id, Path(job.work_path), reason, stage, since), since)
        finally:
            self._alive = None

    def _fail(self, job_id: int, work: Path, reason: str, stage: str, since: float | None = None) -> str:
        job = self.ledger.get(job_id)
        assert job is not None
        self._release_incoming(job_id)
        # Recorded first: after a crash, recovery finishes sending it to failed (not a new attempt).
        self.ledger.update(job_id, state=L.FAILING, stage=stage, reason=reason)
        final: Path | None
        if self.cfg.daemon.seal_failed:
            about = {"output": None, "failed": {"stage": stage, "reason": reason}}
            final = self._seal(job_id, work, job.name, self.folders.failed, about)
        elif work.exists():
            final = move_noclobber(
                work,
                self.folders.failed,
                job.name,
                before=lambda dst: self.ledger.update(job_id, final_path=str(dst)),
                mode=self.cfg.paths.mode.files,
                alive=self._alive,
            )
        else:  # moved before a crash, or lost
            final = self._recorded_final(job_id)
        target = final or self.folders.failed / job.name
        report = {
            "file": job.name,
            "reason": reason,
            "stage": stage,
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "version": __version__,
            "attempts": job.attempts,
            "sha256": None if self.cfg.daemon.seal_failed else job.sha256,
            "job": job_id,
        }
        err = target.with_name(target.name + ".error.json")
        write_file(err, (json.dumps(report, indent=2) + "\n").encode(), self.cfg.paths.mode.files)
        self.ledger.update(job_id, state=L.FAILED, stage=stage, reason=reason, final_path=str(final) if final else None)
        seconds = time.monotonic() - since if since is not None else None
        log.error(
            "%s failed at %s: %s", job.name, stage, reason, extra=_fields(job.name, job_id, "failed", seconds=seconds)
        )
        return L.FAILED

    # -------------------------------------------------------------- recovery

    def recover(self) -> None:
        """Finish or undo what a crash left half done; reconcile ledger and folders."""
        self._finish_releases()  # first: a job's release below must not find its holding name taken
        self.sink.recover()
        for folder in (self.folders.sealed, self.folders.failed):
            # Also with sealing now off: it may have been on before a crash.
            vault.sweep(folder, self.ledger.id, self._sealing_abandoned)
        for folder in (self.folders.failed, self.folders.quarantine, self.folders.processed):
            # An original copied across filesystems (a partial plaintext copy must not stay behind),
            # or an error record half written.
            for name in sweep_temporaries(folder):
                log.info("removed %s in %s, a temporary a crash left unfinished", name, folder)
        for job in self.ledger.in_states(*L.ACTIVE):
            work = Path(job.work_path)
            if job.state == L.CLAIMING and work.parent != self.folders.work:
                # Killed between the row and its work name: nothing was linked (the name comes first).
                self.ledger.delete(job.id)
            elif job.state == L.CLAIMING:
                incoming = self.folders.incoming / job.name
                try:
                    linked = work.lstat()
                except FileNotFoundError:
                    linked = None
                if linked is not None and not stat.S_ISREG(linked.st_mode):
                    # Linked before the inode check could undo a swapped-in link: remove it, unread.
                    work.unlink()
                    self.ledger.delete(job.id)
                elif linked is not None:
                    self._record(job.id, work)
                elif not incoming.exists():
                    log.warning("job %d (%s): neither in incoming nor in work; dropping the claim", job.id, job.name)
                    self.ledger.delete(job.id)
                else:
                    self.ledger.delete(job.id)  # the rename never happened; it will be claimed afresh
            elif job.state in (L.OUTPUT_DONE, L.FAILING):
                # Finished first thing by the worker (see `queued`), after start-up: sealing a
                # large original takes a while, and then it feeds the watchdog and heeds a stop.
                log.info("job %d (%s): was %s before a crash; finished first", job.id, job.name, job.state)
            elif job.state == L.PROCESSING and self._published(job):
                # Linked into the output folder, but the crash came before OUTPUT_DONE was written.
                log.info("job %d (%s): output was published before a crash; finished first", job.id, job.name)
                self.ledger.update(job.id, state=L.OUTPUT_DONE)
            elif not work.exists():
                self._fail_lost(job)
            elif job.state == L.PROCESSING:
                log.warning(
                    "job %d (%s): interrupted during attempt %d; will retry",
                    job.id,
                    job.name,
                    job.attempts,
                    extra=_fields(job.name, job.id, "retry"),
                )
                self.ledger.update(job.id, state=L.QUEUED, output=None)
                self.ledger.delete_audit(job.id)  # kept for an output that never appeared
        self._sweep_work()

    def _sealing_abandoned(self, job_id: int) -> bool:
        """Whether a job's complete, unnamed sealed file is redundant: the job no longer seals (the
        config changed across a restart) and its plaintext is in work, to be handled by the new policy.
        Anything else is kept: it may be the only copy of an original."""
        job = self.ledger.get(job_id)
        if job is None or job.state not in L.ACTIVE or not Path(job.work_path).exists():
            return False
        if job.state == L.FAILING:
            return not self.cfg.daemon.seal_failed
        return self.cfg.daemon.originals != "seal"

    def _published(self, job: L.Job) -> bool:
        """Whether this job's own output is published: at its recorded address, with the recorded hash.

        The address is recorded before the link, and the link may have found the name taken by
        another output (then a crash came before the next name was recorded): that file is not ours.
        """
        if not job.output or not self.sink.exists(job.output):
            return False
        text = self.ledger.audit(job.id)
        if text is None:  # published by a version without audit records: the name is all there is
            return True
        try:
            digest = self.sink.sha256(job.output)
        except OSError as exc:  # there, but not readable now: a second output would be worse
            log.warning(
                "job %d: cannot read its output %s to check it (%s); taking it as published", job.id, job.output, exc
            )
            return True
        return bool(json.loads(text)["output"]["sha256"] == digest)

    def _fail_lost(self, job: L.Job) -> None:
        """The original left work before a crash: finish the step that moved it, or report it lost."""
        final = self._recorded_final(job.id)
        if final is not None and final.parent == self.folders.failed and job.reason:
            log.info("job %d (%s): was being failed before a crash; finishing", job.id, job.name)
            self._fail(job.id, Path(job.work_path), job.reason, job.stage or "recover")
            return
        snap = _snapshot(job)
        given_back = final.name if final is not None and final.parent == self.folders.incoming else job.name
        try:
            here = os.stat(given_back, dir_fd=self.incoming_fd, follow_symlinks=False)
        except FileNotFoundError:
            here = None
        if snap is not None and here is not None and snap.same_file(here) and not job.output:
            # Being given back to incoming (withdrawn) when the crash came: it is there, unharmed.
            self.ledger.update(job.id, state=L.WITHDRAWN, reason="given back to incoming before a crash")
            return
        if job.state == L.QUEUED and job.output:  # a duplicate, its original disposed of per policy
            log.info("job %d (%s): duplicate, disposed of before a crash; finishing", job.id, job.name)
            self.ledger.update(job.id, state=L.DUPLICATE, final_path=str(final) if final else None)
            return
        self.ledger.update(job.id, state=L.FAILED, stage="recover", reason="original missing from work folder")
        log.error("job %d (%s): original missing from the work folder after a crash", job.id, job.name)

    def _sweep_work(self) -> None:
        """Remove partial outputs; adopt any original the ledger does not know."""
        known = {Path(j.work_path).name for j in self.ledger.in_states(*L.ACTIVE)}
        for entry in os.scandir(self.folders.work):
            if entry.name in known or entry.name.endswith(RELEASE_MARK):
                continue
            if is_staging(entry.name) or entry.name.startswith(".edgeguard-probe-"):
                # Only the daemon's own hidden temporaries: an original may be called x.partial.mp4.
                log.info("removing partial output %s", entry.name)
                Path(entry.path).unlink(missing_ok=True)
            elif entry.is_file(follow_symlinks=False):
                name = entry.name.split("-", 1)[1] if "-" in entry.name else entry.name
                job_id = self.ledger.add(name, Path(entry.path), entry.stat(follow_symlinks=False).st_size)
                self.ledger.update(job_id, state=L.QUEUED)
                log.warning("adopted %s from the work folder as job %d", entry.name, job_id)

    def _finish_releases(self) -> None:
        """A crash came while names were taken from incoming to be compared: finish or undo that."""
        for entry in os.scandir(self.folders.work):
            if not entry.name.endswith(RELEASE_MARK):
                continue
            holding = Path(entry.path)
            number = entry.name[1:9]
            job = self.ledger.get(int(number)) if number.isdigit() else None
            snap = _snapshot(job)
            try:
                st = holding.lstat()
                ours = job is not None and snap is not None and stat.S_ISREG(st.st_mode) and snap.same_file(st)
                if ours and snap is not None and (st.st_size, st.st_mtime_ns) == (snap.size, snap.mtime_ns):
                    holding.unlink()  # the claimed file, unchanged: its work link still holds it
                    continue
                # Anything else (another upload, a folder someone made) goes back where it was.
                name = job.name if job is not None else f"recovered-{number}"  # no row: no name to give
                where = put_back(holding, name, self.incoming_fd)
                log.warning("put %s back into incoming as %s (a crash interrupted its release)", entry.name, where)
            except OSError as exc:  # one odd entry must not stop recovery
                log.error("cannot finish the release of %s: %s", entry.name, exc.strerror or exc)

    def queued(self) -> list[int]:
        """Jobs to run, in order: those only left to finish (output out, or failure decided), then the queue."""
        return [j.id for j in self.ledger.in_states(L.OUTPUT_DONE, L.FAILING)] + [
            j.id for j in self.ledger.in_states(L.QUEUED)
        ]


def _snapshot(job: L.Job | None) -> Snapshot | None:
    if job is None or None in (job.dev, job.ino, job.mtime_ns, job.ctime_ns):
        return None
    assert job.dev is not None and job.ino is not None and job.mtime_ns is not None and job.ctime_ns is not None
    return Snapshot(job.dev, job.ino, job.size, job.mtime_ns, job.ctime_ns)


def verify_output(path: Path, result: Result, alive: Callable[[], None] | None = None) -> None:
    """The output decodes and has as many frames as were written; `alive` is called as it goes."""
    kind = media_kind(path)
    if kind == "video":
        frames = 0
        with video_io.VideoReader(path, max_pixels=1 << 30) as reader:
            for _ in reader.frames():
                frames += 1
                if alive is not None and frames % 50 == 0:
                    alive()
        if frames != result.frames:
            raise FileError(path, f"output has {frames} frames, expected {result.frames}", stage="verify")
    else:
        image_io.read_image(path, max_pixels=1 << 30)


def _fields(name: str, job_id: int, outcome: str | None = None, seconds: float | None = None) -> dict[str, object]:
    """Structured journald fields (ignored by the plain stderr formatter)."""
    out: dict[str, object] = {"EDGEGUARD_FILE": name, "EDGEGUARD_JOB": job_id}
    if outcome:
        out["EDGEGUARD_OUTCOME"] = outcome
    if seconds is not None:
        out["EDGEGUARD_SECONDS"] = round(seconds, 3)
    return out
