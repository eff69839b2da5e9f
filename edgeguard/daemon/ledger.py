"""The ledger: one SQLite row per claimed input, so a crash can always be reconciled.

A row is written *before* each step it describes (claim, output, original), so
after a crash the row says which step may be half done, and the folders say
whether it happened.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# States, in the order a job goes through them.
CLAIMING = "claiming"  # row written, rename incoming -> work not yet confirmed
QUEUED = "queued"  # original in work, waiting for (another) attempt
PROCESSING = "processing"  # engine running (an attempt is counted)
OUTPUT_DONE = "output_done"  # protected output durable in the output folder
DONE = "done"  # original deleted / quarantined / kept
DUPLICATE = "duplicate"  # same content as an earlier done job; original handled, no new output
FAILED = "failed"  # original in the failed folder with NAME.error.json
FINAL = (DONE, DUPLICATE, FAILED)
ACTIVE = (CLAIMING, QUEUED, PROCESSING, OUTPUT_DONE)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,          -- file name as it arrived
    work_path TEXT NOT NULL,     -- where the original sits while being processed
    size INTEGER NOT NULL,
    sha256 TEXT,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    output TEXT,
    final_path TEXT,             -- where the original ended (quarantine/processed/failed), NULL if deleted
    stage TEXT,
    reason TEXT,
    progress REAL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE INDEX IF NOT EXISTS jobs_sha ON jobs(sha256);
"""


@dataclass(frozen=True)
class Job:
    id: int
    name: str
    work_path: str
    size: int
    sha256: str | None
    state: str
    attempts: int
    output: str | None
    final_path: str | None
    stage: str | None
    reason: str | None
    progress: float | None
    created: float
    updated: float


class Ledger:
    """Thin typed access to the jobs table.

    The writer's connection belongs to the daemon's worker, but the engine reports
    progress from its own pipeline threads while the worker waits for it, so the
    connection may be used from another thread (never two at once; SQLite's own
    serialized mode guards it anyway, and every statement commits on its own).
    """

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        if readonly:
            self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed step survives power loss, which the crash promises need.
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(_SCHEMA)
        self.db.row_factory = sqlite3.Row

    def close(self) -> None:
        self.db.close()

    def _one(self, sql: str, *args: Any) -> Job | None:
        row = self.db.execute(sql, args).fetchone()
        return Job(**dict(row)) if row else None

    def add(self, name: str, work_path: Path, size: int) -> int:
        now = time.time()
        cur = self.db.execute(
            "INSERT INTO jobs(name, work_path, size, state, created, updated) VALUES (?,?,?,?,?,?)",
            (name, str(work_path), size, CLAIMING, now, now),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def update(self, job_id: int, **fields: Any) -> None:
        fields["updated"] = time.time()
        cols = ", ".join(f"{k} = ?" for k in fields)
        self.db.execute(f"UPDATE jobs SET {cols} WHERE id = ?", (*fields.values(), job_id))

    def start_attempt(self, job_id: int) -> int:
        """Count an attempt *before* it starts, so a crash mid-file is counted too."""
        self.db.execute(
            "UPDATE jobs SET state = ?, attempts = attempts + 1, progress = 0, updated = ? WHERE id = ?",
            (PROCESSING, time.time(), job_id),
        )
        job = self.get(job_id)
        assert job is not None
        return job.attempts

    def delete(self, job_id: int) -> None:
        self.db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def get(self, job_id: int) -> Job | None:
        return self._one("SELECT * FROM jobs WHERE id = ?", job_id)

    def done_with_hash(self, sha256: str, exclude: int) -> Job | None:
        return self._one(
            "SELECT * FROM jobs WHERE sha256 = ? AND state IN (?, ?) AND id != ? ORDER BY id LIMIT 1",
            sha256,
            DONE,
            OUTPUT_DONE,
            exclude,
        )

    def in_states(self, *states: str) -> list[Job]:
        marks = ",".join("?" * len(states))
        rows = self.db.execute(f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY id", states)
        return [Job(**dict(r)) for r in rows]

    def all(self) -> Iterator[Job]:
        for r in self.db.execute("SELECT * FROM jobs ORDER BY id"):
            yield Job(**dict(r))

    def counts(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self.db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")}

    def last_failures(self, n: int = 10) -> list[Job]:
        rows = self.db.execute("SELECT * FROM jobs WHERE state = ? ORDER BY updated DESC LIMIT ?", (FAILED, n))
        return [Job(**dict(r)) for r in rows]
