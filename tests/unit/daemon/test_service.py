"""The main loop in-process: what it keeps from the worker's events, and the time limit."""

from __future__ import annotations

import time
from pathlib import Path
from typing import cast

from edgeguard.config import Config
from edgeguard.daemon import events as E
from edgeguard.daemon.folders import prepare
from edgeguard.daemon.service import Service, sink_for
from edgeguard.daemon.watcher import Arrivals
from edgeguard.daemon.worker import Setup, Worker
from edgeguard.engine import Engine

FOLDERS = ("incoming", "output", "quarantine", "failed", "processed", "work", "state")


def _setup(tmp_path: Path) -> Setup:
    paths = {k: str(tmp_path / k) for k in FOLDERS}
    cfg = Config.model_validate(
        {"paths": paths, "watch": {"settle_seconds": 0}, "daemon": {"file_timeout": 5, "min_free_mb": 0}}
    )
    folders = prepare(cfg.paths)
    return Setup(cfg, folders, cast(Engine, None), sink_for(cfg, folders))


def test_the_time_limit_counts_from_the_hand_over(tmp_path: Path) -> None:
    """Until the worker has claimed the file, the clock must not be the previous job's (or 0.0)."""
    setup = _setup(tmp_path)
    (setup.folders.incoming / "a.jpg").write_bytes(b"x")
    service = Service(None)
    worker = Worker(setup, service.events)  # not started: the task just waits in its queue
    service.current.started_at = time.monotonic() - 3600  # the previous job, an hour ago
    now = time.monotonic()
    arrivals = Arrivals(setup.folders.incoming, setup.cfg.watch)
    assert service._hand_over(setup, worker, arrivals, now) == 0.0
    assert service.current.busy and worker.tasks.get_nowait() == setup.folders.incoming / "a.jpg"
    service._watch_time_limit(setup, worker, now + 0.25)  # the next main-loop tick, mid-claim
    assert not worker.cancel.is_set() and not worker.timed_out.is_set()
    service._watch_time_limit(setup, worker, now + 5.1)
    assert worker.cancel.is_set() and worker.timed_out.is_set()


def test_the_main_loop_keeps_its_view_of_the_worker_from_events_alone(tmp_path: Path) -> None:
    service = Service(None)
    seen: list[E.Event] = []
    service.handlers.append(seen.append)  # a metric is one more handler
    current = service.current
    current.busy = True
    posted: list[E.Event] = [
        E.Started("a.mp4", 7),
        E.Progress("a.mp4", 0.5),
        E.Finished("a.mp4", "done", queued=2, pause=30.0),
    ]
    for event in posted:
        service.events.put(event)
    before = time.monotonic()
    assert service._next_event(1) == posted[0]
    assert (current.name, current.fraction, current.busy) == ("a.mp4", 0.0, True)
    assert service._next_event(1) == posted[1]
    assert current.fraction == 0.5 and current.last_progress >= before
    assert service._next_event(1) == posted[2]
    assert (current.busy, current.name, current.queued) == (False, None, 2)
    assert current.resume_at >= before + 30.0
    assert service._next_event(0) is None
    assert seen == posted


def test_the_output_sink_pauses_the_daemon_when_its_disk_is_short(tmp_path: Path) -> None:
    setup = _setup(tmp_path)
    assert sink_for(setup.cfg, setup.folders).problem(0) is None
    greedy = setup.cfg.model_copy(update={"daemon": setup.cfg.daemon.model_copy(update={"min_free_mb": 1 << 40})})
    assert (sink_for(greedy, setup.folders).problem(0) or "").startswith("disk space low")
