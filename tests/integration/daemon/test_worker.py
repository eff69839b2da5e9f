"""The worker thread with a real model and real folders: everything it says, it says in events."""

from __future__ import annotations

import os
import queue
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeguard.config import Config
from edgeguard.daemon import events as E
from edgeguard.daemon.folders import prepare
from edgeguard.daemon.service import sink_for
from edgeguard.daemon.watcher import Seen
from edgeguard.daemon.worker import Setup, Worker
from edgeguard.engine import Engine
from tests.conftest import media
from tests.e2e.daemon.conftest import faststart, make_clip

FOLDERS = ("incoming", "output", "quarantine", "failed", "processed", "work", "state")


@pytest.fixture
def worker(tmp_path: Path, yolox_env: Path) -> Iterator[tuple[Worker, queue.SimpleQueue[E.Event]]]:
    paths = {k: str(tmp_path / k) for k in FOLDERS}
    cfg = Config.model_validate({"detector": {"model": "yolox_nano"}, "paths": paths})
    folders = prepare(cfg.paths)
    events: queue.SimpleQueue[E.Event] = queue.SimpleQueue()
    w = Worker(Setup(cfg, folders, Engine(cfg), sink_for(cfg, folders)), events)
    w.start()
    yield w, events
    w.tasks.put(None)
    w.join(timeout=30)
    assert not w.is_alive()


def until_finished(events: queue.SimpleQueue[E.Event]) -> list[E.Event]:
    seen: list[E.Event] = []
    while not seen or not isinstance(seen[-1], E.Finished):
        seen.append(events.get(timeout=120))
    return seen


def test_a_file_is_started_progressed_and_finished_in_events(
    worker: tuple[Worker, queue.SimpleQueue[E.Event]],
) -> None:
    w, events = worker
    assert events.get(timeout=60) == E.Ready(queued=0)
    incoming = w.setup.folders.incoming
    shutil.copyfile(media("vtest.avi"), incoming / "walk.avi")
    w.tasks.put(incoming / "walk.avi")
    seen = until_finished(events)
    assert isinstance(seen[0], E.Started) and seen[0].name == "walk.avi"
    fractions = [e.fraction for e in seen if isinstance(e, E.Progress)]
    assert fractions and fractions == sorted(fractions) and fractions[-1] == 1.0
    finished = seen[-1]
    assert isinstance(finished, E.Finished) and (finished.name, finished.outcome, finished.queued) == (
        "walk.avi",
        "done",
        0,
    )
    # What the metrics read: the file's frames, its keyframes and the share of the frame hidden.
    report = finished.report
    assert report is not None and report.stage is None and report.frames == 795
    assert 0 < report.keyframes < report.frames and 0 < report.hidden < 0.5 and report.seconds > 0
    assert os.listdir(w.setup.folders.output) == ["walk.mp4"]


def test_a_file_that_may_not_be_taken_gives_a_verdict_not_a_job(
    worker: tuple[Worker, queue.SimpleQueue[E.Event]],
) -> None:
    w, events = worker
    assert isinstance(events.get(timeout=60), E.Ready)
    os.mkfifo(w.setup.folders.incoming / "pipe.mp4")
    w.tasks.put(w.setup.folders.incoming / "pipe.mp4")
    verdict, finished = until_finished(events)
    assert isinstance(verdict, E.Verdict) and verdict.name == "pipe.mp4" and not verdict.retry
    assert verdict.seen == Seen.of(os.lstat(w.setup.folders.incoming / "pipe.mp4")), "what was refused"
    assert finished == E.Finished("pipe.mp4", "refused", queued=0)


def test_a_file_cut_short_is_given_back_with_what_was_judged(
    worker: tuple[Worker, queue.SimpleQueue[E.Event]], tmp_path: Path
) -> None:
    """Its verdict carries the file as claimed, so the hold can tell an append made while it was judged."""
    w, events = worker
    assert isinstance(events.get(timeout=60), E.Ready)
    whole = faststart(make_clip(media("vtest.avi"), tmp_path / "c.mp4", 0, 20), tmp_path / "f.mp4").read_bytes()
    cut = w.setup.folders.incoming / "cut.mp4"
    cut.write_bytes(whole[: len(whole) * 6 // 10])
    w.tasks.put(cut)
    seen = until_finished(events)
    (verdict,) = [e for e in seen if isinstance(e, E.Verdict)]
    assert verdict.name == "cut.mp4" and not verdict.retry and verdict.until is not None, verdict
    assert verdict.seen is not None and verdict.seen.still(cut.stat()), "not the file as it was claimed"
    assert seen[-1] == E.Finished("cut.mp4", "withdrawn", queued=0)
