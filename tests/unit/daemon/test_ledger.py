"""The SQLite ledger and `edgeguard status` on top of it (unit tests, no daemon)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeguard.config import PathsConfig
from edgeguard.daemon import status
from edgeguard.daemon.folders import Folders
from edgeguard.daemon.ledger import (
    ACTIVE,
    CLAIMING,
    DONE,
    DUPLICATE,
    FAILED,
    OUTPUT_DONE,
    PROCESSING,
    QUEUED,
    Ledger,
)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Ledger]:
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite3")
    try:
        yield ledger
    finally:
        ledger.close()


def test_wal_mode_and_full_sync(db: Ledger) -> None:
    assert db.path.parent.is_dir(), "the state folder is created"
    assert db.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    db.add("a.mp4", Path("/w/1-a.mp4"), 10)
    assert db.path.with_name(db.path.name + "-wal").exists()
    # WAL is a property of the file: any other connection sees it too.
    other = sqlite3.connect(db.path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        other.close()


def test_rows_states_and_counts(db: Ledger) -> None:
    ids = [db.add(name, Path(), size) for name, size in (("a.mp4", 1), ("b.jpg", 2), ("c.jpg", 3), ("d.avi", 4))]
    assert ids == sorted(ids) and len(set(ids)) == 4
    job = db.get(ids[0])
    assert job is not None
    assert (job.name, job.size, job.state, job.attempts, job.sha256, job.output) == (
        "a.mp4",
        1,
        CLAIMING,
        0,
        None,
        None,
    )
    assert job.created <= job.updated

    db.update(ids[0], state=QUEUED, work_path="/w/1-a.mp4")
    db.update(ids[1], state=DONE, output="/out/b.jpg", sha256="bb")
    db.update(ids[2], state=FAILED, stage="probe", reason="empty file")
    assert db.counts() == {CLAIMING: 1, QUEUED: 1, DONE: 1, FAILED: 1}
    assert [j.id for j in db.in_states(*ACTIVE)] == [ids[0], ids[3]]
    assert [j.name for j in db.all()] == ["a.mp4", "b.jpg", "c.jpg", "d.avi"]
    got = db.get(ids[0])
    assert got is not None and got.work_path == "/w/1-a.mp4"

    db.delete(ids[3])
    assert db.get(ids[3]) is None
    assert db.counts() == {QUEUED: 1, DONE: 1, FAILED: 1}
    assert db.get(12345) is None


def test_an_attempt_is_counted_before_it_starts(db: Ledger) -> None:
    job_id = db.add("a.mp4", Path(), 1)
    db.update(job_id, state=QUEUED, progress=0.5)
    assert db.start_attempt(job_id) == 1
    assert db.start_attempt(job_id) == 2
    job = db.get(job_id)
    assert job is not None
    assert (job.state, job.attempts, job.progress) == (PROCESSING, 2, 0.0)


def test_done_with_hash_finds_only_finished_outputs(db: Ledger) -> None:
    first, second, failed, mine = (db.add(n, Path(), 1) for n in ("a.mp4", "b.mp4", "c.mp4", "d.mp4"))
    db.update(failed, state=FAILED, sha256="same")
    db.update(mine, state=PROCESSING, sha256="same")
    assert db.done_with_hash("same", mine) is None, "a failed job is not an earlier result"
    db.update(second, state=OUTPUT_DONE, sha256="same", output="/out/b.mp4")
    db.update(first, state=DONE, sha256="same", output="/out/a.mp4")
    found = db.done_with_hash("same", mine)
    assert found is not None and found.id == first, "the oldest finished job"
    assert db.done_with_hash("same", first) is not None and db.done_with_hash("same", first).id == second  # type: ignore[union-attr]
    assert db.done_with_hash("other", mine) is None
    db.update(mine, state=DUPLICATE)
    assert db.counts()[DUPLICATE] == 1


def test_last_failures_newest_first(db: Ledger) -> None:
    ids = [db.add(f"{i}.mp4", Path(), 1) for i in range(4)]
    for i in (2, 0, 3):
        db.update(ids[i], state=FAILED, reason=f"r{i}")
    assert [j.name for j in db.last_failures()] == ["3.mp4", "0.mp4", "2.mp4"]
    assert [j.name for j in db.last_failures(1)] == ["3.mp4"]


def test_reopening_keeps_rows(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    first = Ledger(path)
    job_id = first.add("a.mp4", Path(), 1)
    first.update(job_id, state=DONE)
    first.close()
    again = Ledger(path)
    try:
        assert again.counts() == {DONE: 1}
        assert again.add("b.mp4", Path(), 1) == job_id + 1
    finally:
        again.close()


def test_a_reader_sees_each_step_at_once_and_cannot_write(db: Ledger) -> None:
    reader = Ledger(db.path, readonly=True)
    try:
        job_id = db.add("a.mp4", Path(), 1)
        assert reader.counts() == {CLAIMING: 1}
        db.update(job_id, state=QUEUED)  # every statement commits on its own
        assert reader.counts() == {QUEUED: 1}
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.update(job_id, state=DONE)
    finally:
        reader.close()


def test_only_the_thread_that_opened_the_ledger_may_write_it(db: Ledger) -> None:
    """One thread owns it (the worker): another thread's write is refused, not interleaved."""
    job_id = db.add("a.mp4", Path(), 1)
    errors: list[BaseException] = []

    def other() -> None:
        try:
            db.update(job_id, progress=0.25)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert len(errors) == 1 and isinstance(errors[0], sqlite3.ProgrammingError)
    job = db.get(job_id)
    assert job is not None and job.progress is None


# ------------------------------------------------------------------ status


def _folders(root: Path) -> Folders:
    return Folders(*(root / n for n in PathsConfig.FOLDERS))


def test_status_without_a_ledger(tmp_path: Path) -> None:
    report = status.collect(_folders(tmp_path))
    assert report == {
        "ledger": str(tmp_path / "state" / "ledger.sqlite3"),
        "counts": {},
        "in_progress": [],
        "last_failures": [],
        "last_sealed": [],
    }
    assert "no jobs yet" in status.render(report)
    assert not (tmp_path / "state").exists(), "status must not create anything"


def test_status_reports_counts_progress_and_failures(tmp_path: Path) -> None:
    folders = _folders(tmp_path)
    db = Ledger(folders.ledger)
    try:
        done = db.add("a.jpg", Path(), 1)
        db.update(done, state=DONE)
        busy = db.add("b.mp4", Path(), 1)
        db.start_attempt(busy)
        db.update(busy, progress=0.4)
        bad = db.add("c.mp4", Path(), 1)
        db.update(bad, state=FAILED, stage="probe", reason="empty file (0 bytes)", final_path="/failed/c.mp4")
        report = status.collect(folders)
    finally:
        db.close()
    assert report["counts"] == {DONE: 1, PROCESSING: 1, FAILED: 1}
    assert report["in_progress"] == [
        {"job": busy, "file": "b.mp4", "state": PROCESSING, "progress": 0.4, "attempts": 1}
    ]
    assert report["last_failures"] == [
        {"job": bad, "file": "c.mp4", "stage": "probe", "reason": "empty file (0 bytes)", "where": "/failed/c.mp4"}
    ]
    text = status.render(report)
    assert "in progress: job 2 b.mp4 (processing 40%, attempt 1)" in text
    assert "failed: job 3 c.mp4 at probe: empty file (0 bytes)" in text


def test_status_shows_each_job_on_one_line_whatever_its_name(tmp_path: Path) -> None:
    folders = _folders(tmp_path)
    db = Ledger(folders.ledger)
    try:
        bad = db.add("evil\nfailed: job 9 forged.mp4", Path(), 1)
        db.update(bad, state=FAILED, stage="probe", reason="not a readable media file")
        text = status.render(status.collect(folders))
    finally:
        db.close()
    assert [line for line in text.splitlines() if line.startswith("failed:")] == [
        "failed: job 1 evil\\nfailed: job 9 forged.mp4 at probe: not a readable media file"
    ]


def test_each_ledger_has_its_own_id_kept_across_opens(tmp_path: Path) -> None:
    """Sealing's temporaries are named by it: a ledger made afresh (numbering jobs from 1 again)
    must never take an earlier ledger's job 1 files for its own."""
    path = tmp_path / "ledger.sqlite3"
    first = Ledger(path)
    made = first.id
    first.close()
    again = Ledger(path)
    assert again.id == made and len(made) == 16 and int(made, 16) >= 0
    again.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    fresh = Ledger(path)
    assert fresh.id != made
    fresh.close()
