"""The ledger: one SQLite row per claimed input, so a crash can always be reconciled.

A row is written *before* each step it describes (claim, output, original), so
after a crash the row says which step may be half done, and the folders say
whether it happened.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeguard.durable import create_new
from edgeguard.errors import SetupError

# States, in the order a job goes through them.
CLAIMING = "claiming"  # row written, rename incoming -> work not yet confirmed
QUEUED = "queued"  # original in work, waiting for (another) attempt
PROCESSING = "processing"  # engine running (an attempt is counted)
OUTPUT_DONE = "output_done"  # protected output durable in the output folder
DONE = "done"  # original deleted / quarantined / kept
DUPLICATE = "duplicate"  # same content as an earlier done job; original handled, no new output
FAILING = "failing"  # being sent to the failed folder (moved or sealed); stage and reason recorded
FAILED = "failed"  # original in the failed folder with NAME.error.json
WITHDRAWN = "withdrawn"  # changed (or looked cut short) while processed: left in incoming, taken again later
FINAL = (DONE, DUPLICATE, FAILED, WITHDRAWN)
ACTIVE = (CLAIMING, QUEUED, PROCESSING, OUTPUT_DONE, FAILING)

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
    updated REAL NOT NULL,
    dev INTEGER,                 -- the claimed inode and what it was at the claim (see claim.Snapshot)
    ino INTEGER,
    mtime_ns INTEGER,
    ctime_ns INTEGER,
    sealed_to TEXT               -- fingerprints of the keys the original was sealed to, comma-separated
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE INDEX IF NOT EXISTS jobs_sha ON jobs(sha256);
-- What was done to make each output, and with what (see daemon/audit.py); written before the
-- output appears, completed once the original is disposed of.
CREATE TABLE IF NOT EXISTS audit (
    job INTEGER PRIMARY KEY,
    output TEXT NOT NULL,        -- the output's address
    input_sha256 TEXT NOT NULL,
    output_sha256 TEXT NOT NULL,
    record TEXT NOT NULL         -- the record, JSON
);
CREATE INDEX IF NOT EXISTS audit_input ON audit(input_sha256);
-- This ledger's own random id: names its jobs' temporaries in folders daemons may share (a new
-- ledger numbers jobs from 1 again, so a job number alone would name another history's file).
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta(key, value) VALUES ('id', lower(hex(randomblob(8))));
CREATE INDEX IF NOT EXISTS audit_output ON audit(output_sha256);
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
    dev: int | None = None
    ino: int | None = None
    mtime_ns: int | None = None
    ctime_ns: int | None = None
    sealed_to: str | None = None


class Ledger:
    """Thin typed access to the jobs table.

    The writer's connection belongs to the thread that opened it (the daemon's
    worker: the engine reports progress on its caller's thread), and SQLite
    refuses it to any other; every statement commits on its own.
    """

    def __init__(self, path: Path, *, readonly: bool = False, mode: int = 0o640) -> None:
        """`mode`: of the ledger's files (SQLite gives its -wal and -shm the database's own)."""
        self.path = path
        if readonly:
            self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        else:
            try:
                self.db = self._open_for_writing(path, mode)
            except (sqlite3.Error, OSError) as exc:
                raise SetupError(f"paths.state: cannot open the ledger {path}: {exc}") from exc
        self.db.row_factory = sqlite3.Row

    @staticmethod
    def _open_for_writing(path: Path, mode: int) -> sqlite3.Connection:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            create_new(path, mode).close()  # an empty file is an empty database; SQLite would use the umask
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(f"{path}{suffix}", mode)  # a ledger made before paths.mode, or with another
        db = sqlite3.connect(path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed step survives power loss, which the crash promises need.
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            have = {r[1] for r in db.execute("PRAGMA table_info(jobs)")}
            # Columns added since the first ledgers: claims' inodes, then sealing.
            for column, kind in (
                ("dev", "INTEGER"),
                ("ino", "INTEGER"),
                ("mtime_ns", "INTEGER"),
                ("ctime_ns", "INTEGER"),
                ("sealed_to", "TEXT"),
            ):
                if column not in have:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")
        except BaseException:
            db.close()
            raise
        return db

    def close(self) -> None:
        self.db.close()

    @property
    def id(self) -> str:
        """This ledger's random id (16 hex digits), made with it."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'id'").fetchone()
        return str(row[0])

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

    def put_audit(self, job_id: int, output: str, input_sha256: str, output_sha256: str, record: str) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO audit(job, output, input_sha256, output_sha256, record) VALUES (?,?,?,?,?)",
            (job_id, output, input_sha256, output_sha256, record),
        )

    def has_audits(self) -> bool:
        """Whether the ledger has the audit table (a reader may open one from an older version)."""
        row = self.db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit'").fetchone()
        return row is not None

    def delete_audit(self, job_id: int) -> None:
        self.db.execute("DELETE FROM audit WHERE job = ?", (job_id,))

    def audit(self, job_id: int) -> str | None:
        row = self.db.execute("SELECT record FROM audit WHERE job = ?", (job_id,)).fetchone()
        return str(row[0]) if row else None

    def audits_by_hash(self, sha256: str) -> list[str]:
        """Records of published outputs whose input or output has `sha256`, newest first."""
        return self._audits("(a.input_sha256 = ? OR a.output_sha256 = ?)", sha256, sha256)

    def audits_by_name(self, name: str) -> list[str]:
        """Records of the outputs called `name`, newest first, then those of inputs called `name`.

        Outputs first: a camera that reuses a name gets NAME-1 for a second output, and asking
        for NAME must not answer with that one.
        """
        outputs = self._audits("substr(a.output, -length(?) - 1) = '/' || ?", name, name)
        inputs = self._audits("j.name = ?", name)
        return outputs + [r for r in inputs if r not in outputs]

    def _audits(self, where: str, *args: str) -> list[str]:
        # Only jobs whose output is out: a record is kept just before the output appears.
        rows = self.db.execute(
            "SELECT a.record FROM audit a JOIN jobs j ON j.id = a.job"
            f" WHERE j.state IN (?, ?) AND {where} ORDER BY a.job DESC",
            (OUTPUT_DONE, DONE, *args),
        )
        return [str(r[0]) for r in rows]

    def last_failures(self, n: int = 10) -> list[Job]:
        rows = self.db.execute("SELECT * FROM jobs WHERE state = ? ORDER BY updated DESC LIMIT ?", (FAILED, n))
        return [Job(**dict(r)) for r in rows]

    def last_sealed(self, n: int = 10) -> list[Job]:
        """The last jobs whose original was sealed, done or failed."""
        try:
            rows = self.db.execute(
                "SELECT * FROM jobs WHERE sealed_to IS NOT NULL AND state IN (?, ?, ?) ORDER BY updated DESC LIMIT ?",
                (DONE, DUPLICATE, FAILED, n),
            )
        except sqlite3.OperationalError:  # a ledger no daemon with sealing has opened yet
            return []
        return [Job(**dict(r)) for r in rows]
