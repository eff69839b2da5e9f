"""One input's life: claim, process, publish, dispose of the original; or fail it.

Each step is recorded in the ledger *before* it happens, so `recover()` can
finish or undo whatever a crash interrupted. Only complete, verified outputs
are ever renamed into the output folder.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from edgeguard import __version__
from edgeguard.config import Config
from edgeguard.daemon import ledger as L
from edgeguard.daemon.folders import Folders, move_noclobber
from edgeguard.durable import fsync_dir, fsync_file
from edgeguard.engine import Engine, Result, default_output, temp_name
from edgeguard.errors import Cancelled, EdgeguardError, FileError
from edgeguard.media import image as image_io
from edgeguard.media import media_kind
from edgeguard.media import video as video_io

log = logging.getLogger(__name__)

PARTIAL_MARK = ".partial"


def sha256_of(path: Path, alive: Callable[[], None] | None = None) -> str:
    """The file's sha256; `alive` is called every 64 MiB (the watchdog sees progress)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for i, chunk in enumerate(iter(lambda: f.read(1 << 20), b"")):
            h.update(chunk)
            if alive is not None and i % 64 == 63:
                alive()
    return h.hexdigest()


class Jobs:
    """Runs jobs for the daemon; every method is called from the one worker thread."""

    def __init__(self, cfg: Config, folders: Folders, ledger: L.Ledger, engine: Engine) -> None:
        self.cfg = cfg
        self.folders = folders
        self.ledger = ledger
        self.engine = engine

    # ------------------------------------------------------------- claiming

    def claim(self, path: Path) -> int | None:
        """Move a settled file from incoming into work; None if it vanished meanwhile."""
        try:
            size = path.lstat().st_size
        except FileNotFoundError:
            return None
        job_id = self.ledger.add(path.name, Path(), size)
        work = self.folders.work / f"{job_id:08d}-{path.name}"
        self.ledger.update(job_id, work_path=str(work))
        try:
            os.rename(path, work)
        except FileNotFoundError:
            self.ledger.delete(job_id)
            return None
        fsync_dir(self.folders.work)
        fsync_dir(self.folders.incoming)
        self.ledger.update(job_id, state=L.QUEUED)
        log.info("claimed %s as job %d", path.name, job_id, extra=_fields(path.name, job_id))
        return job_id

    # ----------------------------------------------------------- processing

    def run(self, job_id: int, cancel: threading.Event, progress: Callable[[float], None]) -> str:
        """Process one queued job to a final state; returns the outcome."""
        job = self.ledger.get(job_id)
        assert job is not None
        work = Path(job.work_path)
        if job.attempts >= self.cfg.daemon.max_attempts:
            return self._fail(
                job_id, work, f"gave up after {job.attempts} attempts that crashed or hung the daemon", "poison"
            )
        try:
            digest = job.sha256 or sha256_of(work, lambda: progress(0.0))
        except OSError as exc:
            return self._fail(job_id, work, f"cannot read: {exc.strerror or exc}", "read")
        self.ledger.update(job_id, sha256=digest)
        earlier = self.ledger.done_with_hash(digest, job_id)
        if earlier is not None:
            log.info(
                "%s: same content as job %d (%s); not processed again",
                job.name,
                earlier.id,
                earlier.output,
                extra=_fields(job.name, job_id, "duplicate"),
            )
            self.ledger.update(job_id, output=earlier.output)
            self._dispose_original(job_id, work, job.name, L.DUPLICATE)
            return L.DUPLICATE
        self.ledger.start_attempt(job_id)
        try:
            result = self._protect(work, job.name, cancel, progress)
        except Cancelled as exc:
            # A rollback, not a crash: the attempt does not count toward max_attempts.
            self.ledger.update(job_id, state=L.QUEUED, attempts=job.attempts, reason=exc.reason)
            raise
        except FileError as exc:
            if exc.transient:
                self.ledger.update(job_id, state=L.QUEUED, attempts=job.attempts, stage=exc.stage, reason=exc.reason)
                raise
            return self._fail(job_id, work, exc.reason, exc.stage)
        except EdgeguardError as exc:
            return self._fail(job_id, work, str(exc), "process")
        final = self._publish(job_id, result, job.name)
        log.info(
            "%s -> %s: %d frames, %d detections, %.1f s",
            job.name,
            final.name,
            result.frames,
            result.detections,
            result.seconds,
            extra=_fields(job.name, job_id, "done", seconds=result.seconds),
        )
        self._dispose_original(job_id, work, job.name, L.DONE)
        return L.DONE

    def _protect(self, work: Path, name: str, cancel: threading.Event, progress: Callable[[float], None]) -> Result:
        # The engine decides the format from the extension, so it sees the original name.
        dst = default_output(Path(name), self.folders.work)
        tmp = temp_name(dst, self.folders.work)

        def report(done: int, total: int | None) -> None:
            progress(done / total if total else 0.0)

        result = self.engine.protect_file(work, tmp, progress=report, cancel=cancel)
        try:
            verify_output(Path(result.output), result, lambda: progress(1.0))
        except BaseException:
            Path(result.output).unlink(missing_ok=True)
            raise
        return result

    def _publish(self, job_id: int, result: Result, name: str) -> Path:
        tmp = Path(result.output)
        # The name is recorded before the link: a crash right after it must not lead to a second output.
        final = move_noclobber(
            tmp,
            self.folders.output,
            default_output(Path(name), self.folders.output).name,
            before=lambda dst: self.ledger.update(job_id, output=str(dst)),
        )
        self.ledger.update(job_id, state=L.OUTPUT_DONE, output=str(final), progress=1.0)
        return final

    def _recorded_final(self, job_id: int) -> Path | None:
        """Where an interrupted move recorded it was taking the original, if the file is there."""
        job = self.ledger.get(job_id)
        final = Path(job.final_path) if job is not None and job.final_path else None
        return final if final is not None and final.is_file() else None

    def _dispose_original(self, job_id: int, work: Path, name: str, state: str) -> None:
        policy = self.cfg.daemon.originals
        final: Path | None = None
        if policy == "delete":
            work.unlink(missing_ok=True)
            fsync_dir(work.parent)
        else:
            folder = self.folders.quarantine if policy == "quarantine" else self.folders.processed
            if work.exists():
                final = move_noclobber(
                    work, folder, name, before=lambda dst: self.ledger.update(job_id, final_path=str(dst))
                )
            else:  # moved before a crash
                final = self._recorded_final(job_id)
        self.ledger.update(job_id, state=state, final_path=str(final) if final else None)

    def fail(self, job_id: int, reason: str, stage: str) -> str:
        """Send a job's original to the failed folder with NAME.error.json."""
        job = self.ledger.get(job_id)
        assert job is not None
        return self._fail(job_id, Path(job.work_path), reason, stage)

    def _fail(self, job_id: int, work: Path, reason: str, stage: str) -> str:
        job = self.ledger.get(job_id)
        assert job is not None
        if work.exists():
            final: Path | None = move_noclobber(
                work,
                self.folders.failed,
                job.name,
                before=lambda dst: self.ledger.update(job_id, final_path=str(dst), stage=stage, reason=reason),
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
            "sha256": job.sha256,
            "job": job_id,
        }
        err = target.with_name(target.name + ".error.json")
        tmp = err.with_name(f".{err.name}.tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        fsync_file(tmp)
        os.replace(tmp, err)
        fsync_dir(err.parent)
        self.ledger.update(job_id, state=L.FAILED, stage=stage, reason=reason, final_path=str(final) if final else None)
        log.error("%s failed at %s: %s", job.name, stage, reason, extra=_fields(job.name, job_id, "failed"))
        return L.FAILED

    # -------------------------------------------------------------- recovery

    def recover(self) -> None:
        """Finish or undo what a crash left half done; reconcile ledger and folders."""
        for job in self.ledger.in_states(*L.ACTIVE):
            work = Path(job.work_path)
            if job.state == L.CLAIMING:
                incoming = self.folders.incoming / job.name
                if work.is_file():
                    self.ledger.update(job.id, state=L.QUEUED)
                elif not incoming.exists():
                    log.warning("job %d (%s): neither in incoming nor in work; dropping the claim", job.id, job.name)
                    self.ledger.delete(job.id)
                else:
                    self.ledger.delete(job.id)  # the rename never happened; it will be claimed afresh
            elif job.state == L.OUTPUT_DONE:
                log.info("job %d (%s): output was published before a crash; finishing", job.id, job.name)
                self._dispose_original(job.id, work, job.name, L.DONE)
            elif job.state == L.PROCESSING and job.output and Path(job.output).is_file():
                # Linked into the output folder, but the crash came before OUTPUT_DONE was written.
                log.info("job %d (%s): output was published before a crash; finishing", job.id, job.name)
                self.ledger.update(job.id, state=L.OUTPUT_DONE)
                self._dispose_original(job.id, work, job.name, L.DONE)
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
        self._sweep_work()

    def _fail_lost(self, job: L.Job) -> None:
        """The original left work before a crash: finish the step that moved it, or report it lost."""
        final = self._recorded_final(job.id)
        if final is not None and final.parent == self.folders.failed and job.reason:
            log.info("job %d (%s): was being failed before a crash; finishing", job.id, job.name)
            self._fail(job.id, Path(job.work_path), job.reason, job.stage or "recover")
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
            if PARTIAL_MARK in entry.name or entry.name.startswith(".edgeguard-probe-"):
                log.info("removing partial output %s", entry.name)
                Path(entry.path).unlink(missing_ok=True)
            elif entry.is_file(follow_symlinks=False) and entry.name not in known:
                name = entry.name.split("-", 1)[1] if "-" in entry.name else entry.name
                job_id = self.ledger.add(name, Path(entry.path), entry.stat().st_size)
                self.ledger.update(job_id, state=L.QUEUED)
                log.warning("adopted %s from the work folder as job %d", entry.name, job_id)

    def queued(self) -> list[int]:
        return [j.id for j in self.ledger.in_states(L.QUEUED)]


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
