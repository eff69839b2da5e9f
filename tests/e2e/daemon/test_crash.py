"""SIGKILL the real daemon at random moments, restart it, and check nothing is lost or doubled.

Each trial drops a few files (small images and short clips, all with distinct
content), starts the daemon, kills it after a seeded random delay that lands
anywhere in claim, processing, publishing or disposing, and starts the next
trial. Every fourth trial kills it instead the moment the ledger shows a file
being processed, so kills hit a file mid-way however fast the machine is. A
final clean run drains everything. Then every input must be in exactly one
final place, and the ledger must agree with the folders.

EDGEGUARD_CRASH_SEED and EDGEGUARD_CRASH_TRIALS change the seed and the number of trials.
"""

from __future__ import annotations

import io
import json
import os
import random
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import pytest

from edgeguard import durable, seal
from edgeguard.config import Config, PathsConfig
from edgeguard.daemon import jobs as jobs_module
from edgeguard.daemon import vault
from edgeguard.daemon.folders import prepare
from edgeguard.daemon.jobs import Jobs, Withdrawn
from edgeguard.daemon.ledger import ACTIVE, Ledger
from edgeguard.daemon.service import sink_for
from edgeguard.engine import Engine
from tests.conftest import media
from tests.e2e.daemon.conftest import Clips, Daemon, frame_count, names, sha256, tagged_jpeg, wait_until

SEED = int(os.environ.get("EDGEGUARD_CRASH_SEED", "20261124"))
TRIALS = int(os.environ.get("EDGEGUARD_CRASH_TRIALS", "24"))
IMAGES = ("city.jpg", "000000038829.jpg", "000000465822.jpg")
MAX_DELAY = 2.5  # seconds between READY=1 and SIGKILL
MID_FILE_EVERY = 4  # every 4th trial kills once the ledger shows a file being processed


@dataclass(frozen=True)
class Input:
    name: str
    sha256: str
    frames: int  # 1 for an image
    size: tuple[int, int] | None  # width, height of an image


class Inputs:
    """Makes new input files with content no other input has."""

    def __init__(self, rng: random.Random, clips: Clips, stage: Path) -> None:
        self.rng = rng
        self.clips = clips
        self.stage = stage
        self.made: dict[str, Input] = {}
        self._windows = [(start, count) for start in range(0, 50, 5) for count in (6, 8, 10)]
        rng.shuffle(self._windows)

    def make(self, trial: int, index: int, clip: bool = False) -> Path:
        """A new input; `clip` asks for a video (while windows are left), else the seed chooses."""
        if self._windows and (self.rng.random() < 0.35 or clip):
            start, count = self._windows.pop()
            name = f"t{trial:02d}-{index}.mp4"
            path = self.stage / name
            path.write_bytes(self.clips.clip(start, count).read_bytes())
            self.made[name] = Input(name, sha256(path), count, None)
        else:
            src = media(self.rng.choice(IMAGES))
            name = f"t{trial:02d}-{index}.jpg"
            path = tagged_jpeg(src, self.stage / name, f"crash trial {trial} file {index}")
            img = cv2.imread(str(src))
            assert img is not None
            self.made[name] = Input(name, sha256(path), 1, (img.shape[1], img.shape[0]))
        return path


def drop(d: Daemon, path: Path) -> None:
    os.rename(path, d.incoming / path.name)


@pytest.mark.slow  # ~50 s: 24 restarts of the daemon
def test_sigkill_at_random_moments_loses_nothing(daemon: Daemon, clips: Clips, tmp_path: Path) -> None:
    d = daemon
    rng = random.Random(SEED)
    print(f"crash test: seed {SEED}, {TRIALS} trials")
    d.configure(
        daemon={"originals": "quarantine", "max_attempts": 3},
        watch={"settle_seconds": 0.3, "rescan_seconds": 0.5},
        audit={"sidecar": True},
    )
    stage = tmp_path / "stage"
    stage.mkdir()
    inputs = Inputs(rng, clips, stage)
    # Make every clip up front so the trials' timing is not the encoder's.
    for start in range(0, 50, 5):
        for count in (6, 8, 10):
            clips.clip(start, count)

    def processing() -> bool:
        d.assert_alive()
        return any(j["state"] == "processing" for j in d.jobs())

    killed_while: list[str] = []
    for trial in range(TRIALS):
        mid_file = trial % MID_FILE_EVERY == MID_FILE_EVERY - 1
        for i in range(rng.randint(1, 3)):
            # A mid-file trial has a clip among its files: a file long enough to be seen mid-way.
            drop(d, inputs.make(trial, i, clip=mid_file and i == 0))
        late = inputs.make(trial, 9) if rng.random() < 0.5 else None
        delay = rng.uniform(0.0, MAX_DELAY)
        d.start()
        if mid_file:
            if late is not None:
                drop(d, late)
            wait_until(processing, 60, f"a file being processed (trial {trial})", 0.01, d.log_tail)
        elif late is not None:
            # The sleeps are the random moments themselves, not waits for an outcome: whatever
            # moment the kill lands on, the checks below and at the end must hold.
            first = rng.uniform(0.0, delay)
            time.sleep(first)
            drop(d, late)
            time.sleep(delay - first)
        else:
            time.sleep(delay)  # a random moment (see above)
        d.kill()
        states = {j["state"] for j in d.jobs()}
        killed_while.append(",".join(sorted(states - {"done", "failed", "duplicate"})) or "-")
        # Whatever the moment, the output folder only ever holds complete files.
        assert [n for n in names(d.output) if n.startswith(".") or "partial" in n] == [], f"trial {trial}"
        # And every output has its audit record in the ledger (kept before the output appeared).
        recorded = {Path(r["output"]).name for r in d.audits()}
        assert {n for n in names(d.output) if not n.endswith(".audit.json")} <= recorded, f"trial {trial}"
    print("active ledger states at each kill:", killed_while)
    assert sum("processing" in k for k in killed_while) >= 2, "the kills never hit a file being processed"

    # A final clean run drains everything.
    d.start()
    d.wait_idle(timeout=120)
    assert d.terminate(timeout=30) == 0
    check_final(d, inputs.made)


def check_final(d: Daemon, made: dict[str, Input]) -> None:
    jobs = d.jobs()
    assert names(d.incoming) == []
    assert names(d.work) == []
    assert sorted(j["name"] for j in jobs) == sorted(made), "each input claimed exactly once"
    assert {j["state"] for j in jobs} <= {"done", "failed"}, [(j["name"], j["state"]) for j in jobs]

    outputs, quarantined, failed = [], [], []
    for job in jobs:
        given = made[job["name"]]
        assert job["sha256"] == given.sha256, job
        final = Path(job["final_path"])
        assert final.is_file(), job
        assert sha256(final) == given.sha256, job
        if job["state"] == "done":
            out = Path(job["output"])
            assert out.parent == d.output, job
            # Names are unique, so a suffix (name-1) would be a second output for one input.
            assert out.name == given.name, job
            if given.size is None:
                assert frame_count(out) == given.frames, job
            else:
                img = cv2.imread(str(out))
                assert img is not None and (img.shape[1], img.shape[0]) == given.size, job
            assert final == d.quarantine / given.name, job
            # Its audit record, completed whatever crash came between publishing and disposing.
            record = json.loads((d.output / f"{out.name}.audit.json").read_text(encoding="utf-8"))
            assert record["job"] == job["id"] and record["input"]["sha256"] == given.sha256, job
            assert record["output"]["sha256"] == sha256(out), job
            assert record["original"] == {"policy": "quarantine", "path": str(final)}, job
            outputs.extend([out.name, f"{out.name}.audit.json"])
            quarantined.append(final.name)
        else:
            assert final == d.failed / given.name, job
            assert (d.failed / f"{given.name}.error.json").is_file(), job
            assert d.error_report(given.name)["reason"], job
            failed.append(final.name)
    # The folders hold exactly what the ledger says: nothing extra, nothing hidden, nothing partial.
    assert names(d.output) == sorted(outputs)
    assert names(d.quarantine) == sorted(quarantined)
    assert names(d.failed) == sorted([*failed, *(f"{n}.error.json" for n in failed)])
    assert names(d.processed) == []
    # Nothing lost: every input's bytes are in exactly one place.
    kept = sorted(sha256(d.quarantine / n) for n in quarantined) + sorted(sha256(d.failed / n) for n in failed)
    assert sorted(kept) == sorted(i.sha256 for i in made.values())
    print(f"crash test: {len(made)} inputs, {len(quarantined)} done, {len(failed)} failed")


# ------------------------------------------------------------------ exact crash points, in-process


class Crash(BaseException):
    """Stands in for SIGKILL: nothing after it runs, nothing is cleaned up."""


@pytest.fixture(scope="module")
def engine(models_dir: Path) -> Iterator[Engine]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEGUARD_MODELS_DIR", str(models_dir))
        yield Engine(Config.model_validate({"detector": {"model": "yolox_nano"}}))


def _jobs(root: Path, engine: Engine, recipients: tuple[str, ...] = (), **daemon: object) -> Jobs:
    """Jobs on the folders under `root`; `recipients`: seal.recipients, `daemon`: the daemon section."""
    paths = {k: str(root / k) for k in PathsConfig.FOLDERS}  # every folder under root, none in the cwd
    cfg = Config.model_validate(
        {
            "detector": {"model": "yolox_nano"},
            "paths": paths,
            "daemon": daemon,
            "seal": {"recipients": list(recipients)},
        }
    )
    folders = prepare(cfg.paths)
    return Jobs(cfg, folders, Ledger(folders.ledger), Engine(cfg, engine.detector), sink_for(cfg, folders))


def _run_until_crash(
    jobs: Jobs, job_id: int, monkeypatch: pytest.MonkeyPatch, target: object, name: str, crashing: object
) -> None:
    """Run a job with `target.name` replaced by `crashing` (which raises Crash), then close its ledger."""
    with monkeypatch.context() as mp:
        mp.setattr(target, name, crashing)
        with pytest.raises(Crash):
            jobs.run(job_id, threading.Event(), lambda _f: None)
    jobs.ledger.close()


def _drain(jobs: Jobs) -> None:
    never = threading.Event()
    while queued := jobs.queued():
        jobs.run(queued[0], never, lambda _f: None)


# The n-th directory fsync inside move_noclobber: odd = just linked, even = source just unlinked.
CRASH_POINTS = {
    ("publish", "linked"): 1,
    ("publish", "moved"): 2,
    ("dispose", "linked"): 3,
    ("dispose", "moved"): 4,
    ("fail", "linked"): 1,
    ("fail", "moved"): 2,
    ("duplicate", "linked"): 1,
    ("duplicate", "moved"): 2,
}


def test_a_kill_between_the_claims_row_and_its_work_name_is_undone(tmp_path: Path, engine: Engine) -> None:
    """The claim adds its ledger row, then records the work name: a kill between them left a
    row naming no file (its work path "."), which recovery once tried to unlink and crashed on."""
    jobs = _jobs(tmp_path, engine)
    (jobs.folders.incoming / "a.jpg").write_bytes(media("city.jpg").read_bytes())
    jobs.ledger.add("a.jpg", Path(), 1)  # the row, and nothing after it
    jobs.recover()
    assert jobs.ledger.in_states(*ACTIVE) == []
    _drain(jobs)  # nothing queued: the file is still in incoming, to be claimed afresh
    assert jobs.claim("a.jpg") and jobs.queued()
    _drain(jobs)
    assert names(jobs.folders.output) == ["a.jpg"]


@pytest.mark.parametrize(("step", "point"), sorted(CRASH_POINTS))
def test_a_move_cut_short_is_finished_once_by_recovery(
    tmp_path: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch, step: str, point: str
) -> None:
    jobs = _jobs(tmp_path, engine, originals="quarantine", max_attempts=2)
    f = jobs.folders
    city = media("city.jpg")
    if step == "duplicate":  # the same content, done earlier under another name
        (f.incoming / "first.jpg").write_bytes(city.read_bytes())
        first = jobs.claim("first.jpg")
        assert first is not None
        _drain(jobs)
    (f.incoming / "a.jpg").write_bytes(city.read_bytes())
    job_id = jobs.claim("a.jpg")
    assert job_id is not None
    if step == "fail":
        jobs.ledger.update(job_id, attempts=2)  # a poison file: it goes straight to failed

    calls = [0]
    real_fsync_dir = durable.fsync_dir

    def crashing_fsync_dir(path: Path) -> None:
        real_fsync_dir(path)
        calls[0] += 1
        if calls[0] == CRASH_POINTS[step, point]:
            raise Crash

    _run_until_crash(jobs, job_id, monkeypatch, durable, "fsync_dir", crashing_fsync_dir)

    # The next start: recover, then take whatever is queued.
    again = _jobs(tmp_path, engine, originals="quarantine", max_attempts=2)
    again.recover()
    _drain(again)
    rows = {j.name: j for j in again.ledger.all()}
    again.ledger.close()

    job = rows["a.jpg"]
    expected_state = {"publish": "done", "dispose": "done", "fail": "failed", "duplicate": "duplicate"}[step]
    assert job.state == expected_state, job
    assert names(f.work) == []
    assert job.final_path is not None and Path(job.final_path).is_file(), job
    assert sha256(Path(job.final_path)) == sha256(city)
    if step == "fail":
        assert names(f.failed) == ["a.jpg", "a.jpg.error.json"]
        assert job.final_path == str(f.failed / "a.jpg")
        report = json.loads((f.failed / "a.jpg.error.json").read_text(encoding="utf-8"))
        assert report["stage"] == "poison" and "2 attempts" in report["reason"]
        assert names(f.output) == names(f.quarantine) == []
    elif step == "duplicate":
        assert names(f.output) == ["first.jpg"]
        assert job.output == str(f.output / "first.jpg")
        assert names(f.quarantine) == ["a.jpg", "first.jpg"]
        assert job.final_path == str(f.quarantine / "a.jpg")
    else:
        assert names(f.output) == ["a.jpg"], "one output, no a-1.jpg and nothing partial"
        assert job.output == str(f.output / "a.jpg")
        assert names(f.quarantine) == ["a.jpg"], "one original, no a-1.jpg"
        assert job.final_path == str(f.quarantine / "a.jpg")
        assert job.attempts == 1, "a published output is not made again"


def test_a_crash_after_the_output_name_was_found_taken_does_not_adopt_the_other_file(
    tmp_path: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The output's name is recorded before the link; the link finds it taken (another output of
    that name) and the kill comes before the next name is recorded. Recovery once saw a file at
    the recorded name, called the job done and deleted the original with no output of its own."""
    jobs = _jobs(tmp_path, engine, originals="delete")
    f = jobs.folders
    other = media("000000038829.jpg").read_bytes()
    (f.incoming / "a.jpg").write_bytes(media("city.jpg").read_bytes())
    job_id = jobs.claim("a.jpg")
    real_update = jobs.ledger.update

    def update(job: int, **fields: object) -> None:
        output = str(fields.get("output", ""))
        if output.endswith("a-1.jpg"):
            raise Crash  # the kill: between the failed link and recording the next name
        real_update(job, **fields)
        if output.endswith("/a.jpg"):
            # The race: another a.jpg appears after the name was found free and recorded.
            (f.output / "a.jpg").write_bytes(other)

    _run_until_crash(jobs, job_id, monkeypatch, jobs.ledger, "update", update)

    again = _jobs(tmp_path, engine, originals="delete")
    again.recover()
    _drain(again)
    job = again.ledger.get(job_id)
    again.ledger.close()
    assert job is not None and job.state == "done" and job.output == str(f.output / "a-1.jpg"), job
    assert (f.output / "a.jpg").read_bytes() == other, "the other output was touched"
    record = json.loads(again_record(tmp_path, job_id))
    assert record["output"]["sha256"] == sha256(f.output / "a-1.jpg")
    assert names(f.output) == ["a-1.jpg", "a.jpg"] and names(f.work) == []


def again_record(root: Path, job_id: int) -> str:
    """The job's audit record, read from the ledger as `edgeguard audit` does."""
    ledger = Ledger(root / "state" / "ledger.sqlite3", readonly=True)
    try:
        text = ledger.audit(job_id)
    finally:
        ledger.close()
    assert text is not None
    return text


def test_recovery_keeps_originals_named_like_temporaries_and_odd_leftovers(tmp_path: Path, engine: Engine) -> None:
    """An upload called x.partial.jpg is an original, not a partial output; a folder left where a
    release was interrupted goes back to incoming; neither stops recovery."""
    jobs = _jobs(tmp_path, engine, originals="quarantine")
    f = jobs.folders
    city = media("city.jpg")
    (f.incoming / "x.partial.jpg").write_bytes(city.read_bytes())
    job_id = jobs.claim("x.partial.jpg")
    (f.incoming / "b.jpg").write_bytes(city.read_bytes() + b"b")
    other = jobs.claim("b.jpg")
    # A crash right after a release took b.jpg's name: but the name held a folder someone made.
    (f.incoming / "b.jpg").unlink()
    (f.work / f".{other:08d}.release").mkdir()
    jobs.ledger.close()

    again = _jobs(tmp_path, engine, originals="quarantine")
    again.recover()
    assert (f.incoming / "b.jpg").is_dir(), "put back where it was"
    _drain(again)
    rows = {j.id: j for j in again.ledger.all()}
    again.ledger.close()
    assert rows[job_id].state == "done", rows[job_id]
    assert sha256(f.quarantine / "x.partial.jpg") == sha256(city)
    assert names(f.output) == ["b.jpg", "x.partial.jpg"]


def test_a_job_given_back_under_another_name_is_found_after_a_crash(
    tmp_path: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Withdrawn while a new upload holds its name: it goes back as NAME-1, recorded before the
    move, so a crash right after the move leaves a job that says where the file is, not "lost"."""
    jobs = _jobs(tmp_path, engine)
    f = jobs.folders
    city = media("city.jpg")
    (f.incoming / "a.jpg").write_bytes(city.read_bytes())
    job_id = jobs.claim("a.jpg")
    # Someone replaces the upload (new inode under the name) and appends to the claimed one.
    os.rename(f.incoming / "a.jpg", tmp_path / "aside.jpg")
    (f.incoming / "a.jpg").write_bytes(b"another upload")
    with (tmp_path / "aside.jpg").open("ab") as w:
        w.write(b"late bytes")

    real_fsync_dir = durable.fsync_dir

    def crash_after_the_move(path: Path) -> None:
        real_fsync_dir(path)
        if path == f.work:  # move_noclobber's last fsync: the work name is gone
            raise Crash

    _run_until_crash(jobs, job_id, monkeypatch, durable, "fsync_dir", crash_after_the_move)

    assert (f.incoming / "a.jpg").read_bytes() == b"another upload"
    assert (f.incoming / "a-1.jpg").read_bytes() == city.read_bytes() + b"late bytes"
    again = _jobs(tmp_path, engine)
    again.recover()
    job = again.ledger.get(job_id)
    again.ledger.close()
    assert job is not None and job.state == "withdrawn", job
    assert job.final_path == str(f.incoming / "a-1.jpg")


def test_a_job_given_back_under_another_name_is_held_under_that_name(tmp_path: Path, engine: Engine) -> None:
    """The verdict names where the file went back (NAME-1) and which file it is, so the hold
    never lands on the new upload that took NAME."""
    jobs = _jobs(tmp_path, engine)
    f = jobs.folders
    (f.incoming / "a.jpg").write_bytes(media("city.jpg").read_bytes())
    job_id = jobs.claim("a.jpg")
    os.rename(f.incoming / "a.jpg", tmp_path / "aside.jpg")
    (f.incoming / "a.jpg").write_bytes(b"another upload")
    with (tmp_path / "aside.jpg").open("ab") as w:
        w.write(b"late bytes")
    with pytest.raises(Withdrawn) as given:
        jobs.run(job_id, threading.Event(), lambda _: None)
    jobs.ledger.close()
    assert given.value.name == "a-1.jpg"
    assert given.value.seen is not None and given.value.seen.ino == (f.incoming / "a-1.jpg").stat().st_ino


# ------------------------------------------------------------------ crashes while sealing, in-process


@pytest.fixture(scope="module")
def reviewer() -> seal.KeyPair:
    return seal.keygen()


# Each of sealing's stages (see edgeguard/daemon/vault.py), as the kill finds them: what the
# original's folder holds then, "T" standing for the job's hidden stem (.TAG-JJJJJJJJ).
SEAL_CRASH_POINTS = {
    "encrypted": [".sealing"],  # complete and flushed, its record not written
    "recorded": [".age.json", ".sealing"],  # the record written, not yet renamed to .sealed
    "renamed": [".age.json", ".sealed"],
    "linked": [".age.json", ".sealed", "NAME.age"],  # move_noclobber between its link and its unlink
    "named": [".age.json", "NAME.age"],  # the record not yet beside it
    "recorded-beside": ["NAME.age", "NAME.age.json"],  # the plaintext still in work
    "plaintext-deleted": ["NAME.age", "NAME.age.json"],  # the ledger not yet told
}


class Killer:
    """Raises Crash at one sealing stage, leaving the disk as SIGKILL would: what an `except
    BaseException` removes on the way out (vault's cleanup of its .sealing) is put back."""

    def __init__(self, point: str, folder: Path, work: Path, aside: Path) -> None:
        self.point, self.folder, self.work, self.aside = point, folder, work, aside
        aside.mkdir()

    def kill(self) -> None:
        for name in names(self.folder):
            os.link(self.folder / name, self.aside / name)
        raise Crash

    def put_back(self) -> None:
        for name in names(self.aside):
            if not (self.folder / name).exists():
                os.rename(self.aside / name, self.folder / name)

    def patch(self) -> tuple[object, str, object]:
        """What to replace (`target.name`) and with what, for this point."""
        real_create_new, real_rename, real_replace = durable.create_new, os.rename, os.replace
        real_fsync_dir = durable.fsync_dir  # also what vault and jobs imported

        def create_new(path: Path, mode: int) -> object:
            if path.name.endswith(".age.json"):  # the record, after the ciphertext was flushed
                self.kill()
            return real_create_new(path, mode)

        def rename(src: str | Path, dst: str | Path, **fds: int | None) -> None:
            sealed = str(dst).endswith(vault.SEALED)
            if sealed and self.point == "recorded":
                self.kill()
            real_rename(src, dst, **fds)
            if sealed and self.point == "renamed":
                self.kill()

        def replace(src: str | Path, dst: str | Path, **fds: int | None) -> None:
            record = Path(src).name.startswith(".") and str(src).endswith(".age.json")
            if record and self.point == "named":
                self.kill()
            real_replace(src, dst, **fds)
            if record and self.point == "recorded-beside":
                self.kill()

        def fsync_dir(path: Path) -> None:
            real_fsync_dir(path)
            if path == self.folder:  # move_noclobber's first: NAME.age linked, .sealed not yet unlinked
                self.kill()

        def jobs_fsync_dir(path: Path) -> None:
            real_fsync_dir(path)
            if path == self.work:  # after the plaintext's unlink
                self.kill()

        return {
            "encrypted": (vault, "create_new", create_new),
            "recorded": (os, "rename", rename),
            "renamed": (os, "rename", rename),
            "linked": (durable, "fsync_dir", fsync_dir),
            "named": (os, "replace", replace),
            "recorded-beside": (os, "replace", replace),
            "plaintext-deleted": (jobs_module, "fsync_dir", jobs_fsync_dir),
        }[self.point]


def identity_file(pair: seal.KeyPair, folder: Path) -> Path:
    path = folder / "reviewer.key"
    seal.write_identity(pair, path)
    return path


@pytest.mark.parametrize("point", list(SEAL_CRASH_POINTS))
@pytest.mark.parametrize("path", ["done", "failed"])
def test_a_sealing_cut_short_is_finished_once_by_recovery(
    tmp_path: Path, engine: Engine, reviewer: seal.KeyPair, monkeypatch: pytest.MonkeyPatch, path: str, point: str
) -> None:
    """Killed at each stage of sealing an original (a published photo's into sealed, a bad file's
    into failed): the next start finishes it, once: one NAME.age that opens to the original."""
    settings: dict[str, object] = {"originals": "seal"} if path == "done" else {"seal_failed": True}
    root = tmp_path / "daemon"
    jobs = _jobs(root, engine, (reviewer.recipient,), **settings)
    f = jobs.folders
    folder = f.sealed if path == "done" else f.failed
    name = "a.jpg" if path == "done" else "x.mp4"
    original = media("city.jpg").read_bytes() if path == "done" else random.Random(5).randbytes(200_000)
    (f.incoming / name).write_bytes(original)
    if path == "failed":  # written long ago: not a video still arriving, failed at once
        os.utime(f.incoming / name, (time.time() - 3600, time.time() - 3600))
    job_id = jobs.claim(name)
    assert job_id is not None
    stem = f".{jobs.ledger.id}-{job_id:08d}"

    killer = Killer(point, folder, f.work, tmp_path / "aside")
    _run_until_crash(jobs, job_id, monkeypatch, *killer.patch())
    killer.put_back()

    # Killed where it was meant to be: the folder as that stage leaves it, the original in work until the end.
    want = sorted(n.replace("NAME", name) if n.startswith("NAME") else stem + n for n in SEAL_CRASH_POINTS[point])
    assert names(folder) == want
    assert names(f.work) == ([] if point == "plaintext-deleted" else [f"{job_id:08d}-{name}"])
    again = _jobs(root, engine, (reviewer.recipient,), **settings)
    job = again.ledger.get(job_id)
    assert job is not None and job.state == ("output_done" if path == "done" else "failing"), job

    again.recover()
    _drain(again)
    job = again.ledger.get(job_id)
    again.ledger.close()

    sealed_file = folder / f"{name}.age"
    error = [f"{name}.age.error.json"] if path == "failed" else []
    assert names(folder) == sorted([f"{name}.age", f"{name}.age.json", *error]), "one, no NAME-1, no temporaries"
    assert names(f.work) == [], "no plaintext left"
    other = f.failed if path == "done" else f.sealed
    assert names(other) == names(f.quarantine) == names(f.processed) == names(f.incoming) == []
    assert job is not None and job.state == path, job
    assert job.final_path == str(sealed_file)
    assert job.sealed_to == seal.fingerprint(reviewer.recipient)
    for made in (sealed_file, seal.record_path(sealed_file)):
        assert stat.S_IMODE(made.stat().st_mode) == 0o640, f"{made.name}: paths.mode.files"
    out = io.BytesIO()
    with sealed_file.open("rb") as src:
        identities = seal.read_identities(identity_file(reviewer, tmp_path))
        assert seal.unseal(src, out, identities, seal.read_record(sealed_file)) is True, "checked against its record"
    assert out.getvalue() == original
    record = seal.read_record(sealed_file)
    assert record is not None and record["job"] == job_id and record["file"] == name
    if path == "done":
        assert names(f.output) == ["a.jpg"] and job.attempts == 1, "the output is not made again"
        assert record["output"] == str(f.output / "a.jpg")
    else:
        assert names(f.output) == []
        report = json.loads((f.failed / f"{name}.age.error.json").read_text(encoding="utf-8"))
        assert report["file"] == name and report["job"] == job_id and report["stage"] == job.stage
        assert "sha256" in report and report["sha256"] is None, "a plain hash beside it would name the content"
        assert record["failed"] == {"stage": job.stage, "reason": job.reason}


def test_recovery_removes_only_its_own_sealing_leftovers(
    tmp_path: Path, engine: Engine, reviewer: seal.KeyPair
) -> None:
    """Daemons may share a sealed or failed folder: one's start must not take the other's
    sealing in progress for its own leftover."""
    jobs = _jobs(tmp_path / "one", engine, (reviewer.recipient,), originals="seal")
    f = jobs.folders
    ours = jobs.ledger.id
    theirs = "0123456789abcdef"  # another ledger's id (another daemon's, or this one's before a reset)
    assert theirs != ours
    leftovers = {
        f.sealed: [f".{ours}-00000001.sealing", f".{theirs}-00000001.sealing", f".{ours}f-00000001.sealing"],
        f.failed: [f".{ours}-00000002.sealing", f".{theirs}-00000002.sealing"],
    }
    kept = [f".{ours}-00000003.sealed", f".{ours}-00000003.age.json", "clip.mp4.sealing"]
    for folder, made in leftovers.items():
        for name in made + kept:
            (folder / name).write_bytes(b"ciphertext")
    jobs.recover()
    jobs.ledger.close()
    assert names(f.sealed) == sorted([f".{theirs}-00000001.sealing", f".{ours}f-00000001.sealing", *kept])
    assert names(f.failed) == sorted([f".{theirs}-00000002.sealing", *kept])


def test_sealing_turned_off_across_a_crash_leaves_no_orphan(
    tmp_path: Path, engine: Engine, reviewer: seal.KeyPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed with the original sealed but not yet named; restarted with `originals: quarantine`:
    the original is quarantined, and the unnamed sealed copy (no job will finish it) is removed."""
    root = tmp_path / "daemon"
    jobs = _jobs(root, engine, (reviewer.recipient,), originals="seal")
    f = jobs.folders
    original = media("city.jpg").read_bytes()
    (f.incoming / "a.jpg").write_bytes(original)
    job_id = jobs.claim("a.jpg")
    killer = Killer("renamed", f.sealed, f.work, tmp_path / "aside")
    _run_until_crash(jobs, job_id, monkeypatch, *killer.patch())
    killer.put_back()
    assert len(names(f.sealed)) == 2  # .sealed and its record, hidden

    again = _jobs(root, engine, (), originals="quarantine")
    again.recover()
    _drain(again)
    job = again.ledger.get(job_id)
    again.ledger.close()
    assert job is not None and job.state == "done" and job.sealed_to is None
    assert names(f.sealed) == [] and names(f.work) == []
    assert (f.quarantine / "a.jpg").read_bytes() == original


def test_recovery_removes_partial_copies_of_originals_in_the_kept_folders(tmp_path: Path, engine: Engine) -> None:
    """A crash while an original was copied to another filesystem's failed, quarantine or
    processed folder left a hidden partial copy: plaintext that nothing would ever remove."""
    jobs = _jobs(tmp_path, engine, originals="quarantine")
    f = jobs.folders
    kept = "x.mp4.copying"  # an original that happens to be called so: not hidden, not ours
    for folder in (f.failed, f.quarantine, f.processed):
        (folder / ".x.mp4.cee21960.copying").write_bytes(b"half an original")
        (folder / kept).write_bytes(b"an original")
    jobs.recover()
    jobs.ledger.close()
    for folder in (f.failed, f.quarantine, f.processed):
        assert names(folder) == [kept], folder
