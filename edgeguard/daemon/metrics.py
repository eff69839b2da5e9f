"""Metrics for a fleet, in Prometheus' text format, written to a file.

The service has no network (PrivateNetwork=yes), so nothing is served: the
registry is written atomically (a temporary name, then a rename) into
`metrics.folder`, where node_exporter's textfile collector reads it. Kept
from the worker's events and the main loop's state, on the main thread only,
and written at most once a second.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

from edgeguard import __version__
from edgeguard.daemon import events as E

log = logging.getLogger(__name__)

FILE = "edgeguard.prom"
# World-readable whatever the service's UMask=0027: node_exporter runs as its own user, and the
# file holds counts, not footage.
MODE = 0o644
WRITE_EVERY = 1.0  # seconds: the collector reads on each scrape; more often would only cost writes
FINAL = ("done", "duplicate", "failed")  # outcomes a file ends in (the rest are setbacks; it comes back)
PAUSES = ("output", "sealed", "storage", "cluster")  # why new files may wait (see the service's main loop)
SECONDS_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
SHARE_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)


class Metrics:
    """The daemon's metrics; `on_event` is a service handler, `tick` is called every main-loop turn."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.info = Info("edgeguard", "The edgeguard version, and the model and DNN target in use", registry=r)
        self.files = Counter(
            "edgeguard_files", "Tasks that ended, by outcome (done, duplicate, failed: final)", ["outcome"], registry=r
        )
        self.failed = Counter(
            "edgeguard_files_failed", "Files sent to the failed folder, by the stage that failed", ["stage"], registry=r
        )
        self.seconds = Histogram(
            "edgeguard_file_seconds",
            "Seconds from the start of a file's attempt to its final state",
            registry=r,
            buckets=SECONDS_BUCKETS,
        )
        self.frames = Counter("edgeguard_frames", "Frames protected", registry=r)
        self.keyframes = Counter("edgeguard_keyframes", "Frames the detector analysed (keyframes)", registry=r)
        self.fps = Gauge("edgeguard_last_file_fps", "Frames per second of the last protected file", registry=r)
        self.keyframe_share = Gauge(
            "edgeguard_last_file_keyframe_share", "Share of the last protected file's frames analysed", registry=r
        )
        self.hidden = Gauge(
            "edgeguard_last_file_hidden_share", "Share of the frame hidden, mean over the last file", registry=r
        )
        self.hidden_files = Histogram(
            "edgeguard_file_hidden_share",
            "Share of the frame hidden per protected file (mean over its frames)",
            registry=r,
            buckets=SHARE_BUCKETS,
        )
        self.last_success = Gauge(
            "edgeguard_last_success_timestamp_seconds", "When a file was last protected (Unix time)", registry=r
        )
        self.queue = Gauge("edgeguard_queue_files", "Files waiting: in incoming, and claimed in work", registry=r)
        self.busy = Gauge("edgeguard_processing", "1 while a file is being processed", registry=r)
        self.paused = Gauge(
            "edgeguard_paused",
            "1 while new files wait, by why: output (the output folder is short of space, not writable or gone), "
            "sealed (originals: seal, and the sealed folder is short of space), "
            "storage (a write failed mid-file: output, work folder or ledger; retrying), "
            "cluster (cluster.mode: only, and the cluster is unreachable)",
            ["reason"],
            registry=r,
        )
        self.started = Gauge("edgeguard_start_timestamp_seconds", "When the daemon started (Unix time)", registry=r)
        self.started.set(time.time())
        for outcome in FINAL:  # present from the start, so a rate() has a zero to begin from
            self.files.labels(outcome)
        for reason in PAUSES:
            self.paused.labels(reason).set(0)
        self.folder: Path | None = None
        self._state: tuple[int, bool, str | None] | None = None
        self._dirty = True
        self._written = 0.0
        self._error: str | None = None

    def configure(self, folder: Path | None, model: str, target: str) -> None:
        """Write into `folder` (None: keep them in memory only) and label them with the model in use."""
        self.folder = folder
        self.info.info({"version": __version__, "model": model, "target": target})
        self._dirty = True

    def on_event(self, event: E.Event) -> None:
        if not isinstance(event, E.Finished) or event.outcome == "idle":
            return
        self._dirty = True
        self.files.labels(event.outcome.replace(" ", "_")).inc()
        report = event.report
        if report is None:
            return
        self.seconds.observe(report.seconds)
        if event.outcome == "failed":
            self.failed.labels(report.stage or "unknown").inc()
        elif event.outcome == "done":
            self.frames.inc(report.frames)
            self.keyframes.inc(report.keyframes)
            self.fps.set(report.fps)
            self.keyframe_share.set(report.keyframes / report.frames if report.frames else 0.0)
            self.hidden.set(report.hidden)
            self.hidden_files.observe(report.hidden)
            self.last_success.set(time.time())

    def tick(self, now: float, *, queue: int, busy: bool, paused: str | None) -> None:
        """Take the main loop's state; write the file if anything changed and a second has passed."""
        state = (queue, busy, paused)
        if state != self._state:
            self._state = state
            self._dirty = True
            self.queue.set(queue)
            self.busy.set(int(busy))
            for reason in PAUSES:
                self.paused.labels(reason).set(int(paused == reason))
        if self._dirty and now - self._written >= WRITE_EVERY:
            self.write(now)

    def write(self, now: float) -> None:
        self._written = now
        if self.folder is None:
            return
        try:
            _replace(self.folder / FILE, generate_latest(self.registry))
        except OSError as exc:
            error = f"{exc.strerror or exc}"
            if error != self._error:  # once per distinct error, not once a second
                log.error("cannot write metrics into %s: %s", self.folder, error)
            self._error = error
            return
        self._error = None
        self._dirty = False


def _replace(path: Path, data: bytes) -> None:
    """Write `path` whole or not at all; a crash leaves at most a hidden temporary (not *.prom: not read)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, MODE)
    try:
        with os.fdopen(fd, "wb") as stream:
            os.fchmod(stream.fileno(), MODE)  # the umask narrowed the mode given to open()
            stream.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
