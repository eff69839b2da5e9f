"""Sealed originals with the real daemon: what reaches the disk, and what a reviewer gets back.

Sealed files are opened with Debian's own `age` (as a reviewer without edgeguard would) and
with `edgeguard unseal`; the gateway's folders are searched for any plaintext left behind.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pytest

from edgeguard import seal
from tests.conftest import media
from tests.e2e.daemon.conftest import Daemon, names, sha256, tagged_jpeg, wait_until

SEED = int(os.environ.get("EDGEGUARD_CRASH_SEED", "20261201"))
TRIALS = int(os.environ.get("EDGEGUARD_SEAL_TRIALS", "20"))


@dataclass(frozen=True)
class Key:
    identity: Path
    recipient: str


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Key:
    """A reviewer's key pair made with Debian's age-keygen, as the README tells a reviewer to."""
    if shutil.which("age-keygen") is None or shutil.which("age") is None:
        pytest.fail("Debian's age is not installed (make deps installs it)")
    identity = tmp_path_factory.mktemp("reviewer") / "key.txt"
    subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", str(identity)], check=True, capture_output=True, text=True)
    return Key(identity, recipient.stdout.strip())


def age_decrypt(key: Key, sealed_file: Path) -> bytes:
    done = subprocess.run(["age", "-d", "-i", str(key.identity), str(sealed_file)], capture_output=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def edgeguard_unseal(key: Key, sealed_file: Path, out: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "edgeguard", "unseal", str(sealed_file), "-i", str(key.identity), "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


def with_free_box(src: Path, dst: Path, payload: bytes) -> Path:
    """`src` (an MP4) with a top-level `free` box appended: what players skip, and a copy keeps."""
    dst.write_bytes(src.read_bytes() + (8 + len(payload)).to_bytes(4, "big") + b"free" + payload)
    return dst


def plaintext_anywhere(root: Path, markers: dict[str, bytes]) -> list[str]:
    """Every file under `root` that holds part of an original's marker: random bytes only a copy
    of that original has (a protected output re-encodes the frames, and may share their bits)."""
    found = []
    wanted = {name: [m[i : i + 32] for i in range(0, len(m) - 32, 256)] for name, m in markers.items()}
    for folder, _dirs, files in os.walk(root):
        for file in files:
            path = Path(folder) / file
            if not path.is_file() or path.is_symlink():  # the notify socket
                continue
            data = path.read_bytes()
            for name, windows in wanted.items():
                if any(w in data for w in windows):
                    found.append(f"{path.relative_to(root)} holds {name}")
    return found


def test_a_video_and_a_photo_are_sealed_and_a_reviewer_gets_them_back(
    daemon: Daemon, key: Key, clip10: Path, tmp_path: Path
) -> None:
    d = daemon
    d.configure(
        daemon={"originals": "seal"},
        seal={"recipients": [key.recipient]},
        audit={"sidecar": True},
    )
    rng = random.Random(12)
    markers = {"clip.mp4": rng.randbytes(4096), "city.jpg": rng.randbytes(2048).hex().encode()}
    clip = with_free_box(clip10, tmp_path / "clip.mp4", markers["clip.mp4"])
    photo = tagged_jpeg(media("city.jpg"), tmp_path / "city.jpg", markers["city.jpg"].decode())
    originals = {"clip.mp4": clip.read_bytes(), "city.jpg": photo.read_bytes()}
    # A check that can fail: before the daemon runs, each original is found where it lies.
    assert sorted(plaintext_anywhere(tmp_path, markers)) == ["city.jpg holds city.jpg", "clip.mp4 holds clip.mp4"]
    d.start()
    d.drop(clip)
    d.drop(photo)
    d.wait_states({"done": 2}, timeout=120)
    d.wait_idle()

    assert names(d.output) == sorted(["clip.mp4", "clip.mp4.audit.json", "city.jpg", "city.jpg.audit.json"])
    assert names(d.sealed) == sorted(f"{n}{suffix}" for n in originals for suffix in (".age", ".age.json"))
    assert names(d.work) == [] and names(d.quarantine) == [] and names(d.processed) == []
    fp = seal.fingerprint(key.recipient)
    for name, data in originals.items():
        sealed_file = d.sealed / f"{name}.age"
        # Debian's age opens it with the reviewer's key alone.
        assert age_decrypt(key, sealed_file) == data, name
        # So does edgeguard unseal, which also checks the keyed hash in the record.
        out = tmp_path / f"unsealed-{name}"
        assert "matches the hash taken when it was sealed" in edgeguard_unseal(key, sealed_file, out)
        assert sha256(out) == hashlib.sha256(data).hexdigest()
        record_text = (d.sealed / f"{name}.age.json").read_text(encoding="utf-8")
        record = json.loads(record_text)
        assert record["recipients"] == [fp] and record["size"] == len(data) and record["file"] == name
        assert record["output"] == str(d.output / name)
        # The plaintext record does not name the content: no plain hash of it.
        assert hashlib.sha256(data).hexdigest() not in record_text
    # Nothing under the daemon's folders (ledger, log and outputs included) holds the originals.
    assert plaintext_anywhere(d.root, markers) == []

    # The ledger, status and the audit record say where each went, and to which key.
    for job in d.jobs():
        assert job["state"] == "done" and job["sealed_to"] == fp
        assert job["final_path"] == str(d.sealed / f"{job['name']}.age")
    sealed_status = {s["file"]: s for s in d.status()["last_sealed"]}
    assert sorted(sealed_status) == sorted(originals)
    assert all(s["sealed_to"] == [fp] for s in sealed_status.values())
    for name in originals:
        audit = json.loads((d.output / f"{name}.audit.json").read_text(encoding="utf-8"))
        assert audit["original"] == {"policy": "seal", "path": str(d.sealed / f"{name}.age"), "sealed_to": [fp]}
    assert d.terminate(timeout=30) == 0


def test_a_failed_file_is_sealed_into_failed_with_its_error_record(daemon: Daemon, key: Key, tmp_path: Path) -> None:
    d = daemon
    d.configure(daemon={"originals": "delete", "seal_failed": True}, seal={"recipients": [key.recipient]})
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(random.Random(7).randbytes(300_000))
    marker = bad.read_bytes()[100_000:104_096]
    d.start()
    d.drop(bad)
    d.wait_states({"failed": 1})
    d.wait_idle()
    assert names(d.failed) == ["bad.mp4.age", "bad.mp4.age.error.json", "bad.mp4.age.json"]
    assert age_decrypt(key, d.failed / "bad.mp4.age") == bad.read_bytes()
    error = json.loads((d.failed / "bad.mp4.age.error.json").read_text(encoding="utf-8"))
    assert error["file"] == "bad.mp4" and error["stage"] and error["reason"]
    assert error["sha256"] is None  # beside a sealed file, a plain hash would name the content
    record = json.loads((d.failed / "bad.mp4.age.json").read_text(encoding="utf-8"))
    assert record["failed"] == {"stage": error["stage"], "reason": error["reason"]} and record["output"] is None
    assert plaintext_anywhere(d.root, {"bad.mp4": marker}) == []
    assert d.terminate(timeout=30) == 0


# ------------------------------------------------------------------ crashes while sealing


def pending(folder: Path) -> bool:
    return any(n.endswith(".sealing") for n in names(folder))


@pytest.mark.slow  # ~60 s: 20 restarts of the daemon
def test_sigkill_while_sealing_never_loses_an_original_nor_half_seals_one(
    daemon: Daemon, key: Key, tmp_path: Path
) -> None:
    """Kill the daemon at random moments around sealing a failed file; each time, every original
    must be whole in work or whole (decryptable) under its sealed name, never neither."""
    d = daemon
    rng = random.Random(SEED)
    print(f"seal crash test: seed {SEED}, {TRIALS} trials")
    d.configure(
        daemon={"originals": "delete", "seal_failed": True},
        seal={"recipients": [key.recipient]},
        watch={"settle_seconds": 0.2, "rescan_seconds": 0.5},
    )
    stage = tmp_path / "stage"
    stage.mkdir()
    made: dict[str, bytes] = {}
    # Calibrate: how long sealing one file takes here, from its failing row to its failed one.
    window = 0.0
    killed_at: list[str] = []
    for trial in range(TRIALS + 1):
        name = f"t{trial:02d}.mp4"
        data = rng.randbytes(64 << 20)  # not a video: fails at once, then 64 MiB to seal
        made[name] = data
        (stage / name).write_bytes(data)
        d.start()
        os.rename(stage / name, d.incoming / name)
        # Its own sealing (a restart first finishes the file the last kill interrupted).
        wait_until(lambda n=name: _state(d, n) in ("failing", "failed"), 60, f"sealing of {name}", 0.002, d.log_tail)
        began = time.monotonic()
        if trial == 0:
            d.wait_states({"failed": 1})
            window = time.monotonic() - began
            print(f"sealing 64 MiB took {window:.2f} s")
            assert d.terminate(timeout=30) == 0
            continue
        time.sleep(rng.uniform(0.0, 1.1 * window))  # a random moment in (or just after) the sealing
        d.kill()
        killed_at.append(",".join(sorted({j["state"] for j in d.jobs()} - {"failed"})) or "-")
        check_each_original_is_somewhere(d, key, made, trial)
    print("active ledger states at each kill:", killed_at)
    # Timing varies with the machine's load; a third is plenty to show the kills land mid-sealing.
    assert sum("failing" in k for k in killed_at) >= TRIALS // 3, "the kills rarely hit a file being sealed"

    d.start()
    d.wait_idle(timeout=120)
    assert d.terminate(timeout=30) == 0
    # Every original sealed exactly once under its own name, with its records; nothing else left.
    expected = sorted(f"{n}{s}" for n in made for s in (".age", ".age.json", ".age.error.json"))
    assert names(d.failed) == expected
    assert names(d.work) == [] and names(d.incoming) == []
    for name, data in made.items():
        assert age_decrypt(key, d.failed / f"{name}.age") == data, name
    assert {j["state"] for j in d.jobs()} == {"failed"} and len(d.jobs()) == len(made)


def _state(d: Daemon, name: str) -> str | None:
    return next((j["state"] for j in d.jobs() if j["name"] == name), None)


def check_each_original_is_somewhere(d: Daemon, key: Key, made: dict[str, bytes], trial: int) -> None:
    in_work = {}
    for entry in names(d.work):
        path = d.work / entry
        if path.is_file() and "-" in entry:
            in_work[entry.split("-", 1)[1]] = path.read_bytes()
    for name, data in made.items():
        sealed_file = d.failed / f"{name}.age"
        incoming = d.incoming / name
        # Under its final name, a sealed file is always complete: it decrypts to the original.
        if sealed_file.exists():
            assert age_decrypt(key, sealed_file) == data, f"trial {trial}: {name} half-sealed under its name"
            continue
        complete = [d.failed / n for n in names(d.failed) if n.endswith(".sealed")]
        whole = in_work.get(name) == data or (incoming.exists() and incoming.read_bytes() == data)
        whole = whole or any(age_decrypt(key, c) == data for c in complete)
        assert whole, f"trial {trial}: {name} is neither in work nor sealed"


# ------------------------------------------------------------------ a large file


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


def big_file(path: Path, size: int) -> str:
    """A file of `size` bytes that is not media (random bytes, then zeros: sparse, quick to make); its sha256."""
    with path.open("wb") as out:
        out.write(random.Random(size).randbytes(1 << 20))
        out.truncate(size)
    return stream_sha256(path.open("rb"))


def stream_sha256(stream: BinaryIO) -> str:
    digest = hashlib.sha256()
    with stream:
        while chunk := stream.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.slow  # ~40 s: 2 GiB hashed, sealed, then decrypted again to check it
def test_a_2gb_failed_file_is_sealed_with_the_daemon_under_200_mb(daemon: Daemon, key: Key, tmp_path: Path) -> None:
    d = daemon
    d.configure(
        daemon={"seal_failed": True, "output_ratio": 0.01},
        seal={"recipients": [key.recipient]},
    )
    big = tmp_path / "huge.mp4"
    expected = big_file(big, 2 << 30)
    watchdog = 2.0  # seconds: sealing takes several; it must keep the watchdog fed all along
    mark = d.start(watchdog_usec=int(watchdog * 1e6))
    os.rename(big, d.incoming / big.name)
    d.wait_states({"failed": 1}, timeout=600)
    d.wait_idle()
    assert d.proc is not None
    peak = peak_rss_mb(d.proc.pid)
    print(f"daemon peak memory while sealing 2 GiB: {peak:.0f} MB")
    assert peak < 200, f"the daemon peaked at {peak:.0f} MB"
    pings = [at for at, k, v in d.fields(mark) if k == "WATCHDOG" and v == "1"]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert pings and max(gaps) < watchdog, f"the watchdog went unfed for {max(gaps):.1f} s while sealing"
    assert names(d.failed) == ["huge.mp4.age", "huge.mp4.age.error.json", "huge.mp4.age.json"]
    sealed_file = d.failed / "huge.mp4.age"
    assert 2 << 30 < sealed_file.stat().st_size < (2 << 30) + (1 << 20)
    # Decrypted by Debian's age, streamed into the hash (2 GiB never held in memory here either).
    assert age_sha256(key, sealed_file) == expected
    assert d.terminate(timeout=30) == 0


def age_sha256(key: Key, sealed_file: Path) -> str:
    with subprocess.Popen(["age", "-d", "-i", str(key.identity), str(sealed_file)], stdout=subprocess.PIPE) as age:
        assert age.stdout is not None
        digest = stream_sha256(age.stdout)
    assert age.returncode == 0
    return digest


@pytest.mark.slow  # ~25 s: 1 GiB sealed twice over
def test_a_stop_mid_sealing_rolls_it_back_and_the_next_start_finishes_it(
    daemon: Daemon, key: Key, tmp_path: Path
) -> None:
    d = daemon
    d.configure(
        daemon={"seal_failed": True, "output_ratio": 0.01, "stop_grace": 0.2},
        seal={"recipients": [key.recipient]},
    )
    big = tmp_path / "big.mp4"
    expected = big_file(big, 1 << 30)  # several seconds of sealing: far past the grace
    d.start()
    os.rename(big, d.incoming / big.name)
    wait_until(lambda: pending(d.failed), 120, "sealing to begin", 0.01, d.log_tail)
    assert d.terminate(timeout=30) == 0
    assert "stopped while sealing its original" in d.log()
    # Rolled back: the plaintext still in work, nothing half written left, the job still failing.
    assert [n for n in names(d.failed) if not n.startswith(".")] == []
    assert [n for n in names(d.failed) if n.endswith(".sealing")] == []
    [job] = d.jobs()
    assert job["state"] == "failing"
    assert stream_sha256((d.work / Path(job["work_path"]).name).open("rb")) == expected
    d.start()
    d.wait_states({"failed": 1}, timeout=300)
    d.wait_idle()
    assert names(d.failed) == ["big.mp4.age", "big.mp4.age.error.json", "big.mp4.age.json"]
    assert age_sha256(key, d.failed / "big.mp4.age") == expected
    assert "finishing sending it to failed" in d.log()
    assert d.terminate(timeout=30) == 0


def test_a_sealed_folder_that_refuses_keeps_the_original_in_work_until_a_retry_succeeds(
    daemon: Daemon, key: Key, tmp_path: Path
) -> None:
    d = daemon
    d.configure(daemon={"originals": "seal", "pause_seconds": 0.5}, seal={"recipients": [key.recipient]})
    photo = tagged_jpeg(media("city.jpg"), tmp_path / "refused.jpg", "sealed folder refuses")
    d.start()
    away = d.root / "sealed-away"
    os.rename(d.sealed, away)
    d.sealed.write_bytes(b"")  # a file where the folder was: every write into it fails (ENOTDIR)
    d.drop(photo)
    wait_until(lambda: "cannot seal its original into" in d.log(), 60, "the sealing to fail", 0.1, d.log_tail)
    # The output is out; the original waits in work, whole; the daemon runs on.
    [job] = d.jobs()
    assert job["state"] == "output_done" and names(d.output) == ["refused.jpg"]
    assert (d.work / Path(job["work_path"]).name).read_bytes() == photo.read_bytes()
    d.assert_alive()
    d.sealed.unlink()
    os.rename(away, d.sealed)
    d.wait_states({"done": 1})
    d.wait_idle()
    assert age_decrypt(key, d.sealed / "refused.jpg.age") == photo.read_bytes()
    assert names(d.work) == []
    assert d.terminate(timeout=30) == 0


def test_a_sealed_folder_without_room_pauses_claiming_until_there_is_room(
    daemon: Daemon, key: Key, small_fs: Path, clip10: Path, tmp_path: Path
) -> None:
    # Found before the claim, not after the work: the upload stays in incoming, nothing is published.
    d = daemon
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    d.configure(
        paths={"sealed": str(small_fs / "sealed")},
        daemon={"originals": "seal", "min_free_mb": 0, "pause_seconds": 1.0},
        seal={"recipients": [key.recipient]},
        metrics={"folder": str(metrics)},
    )
    big = with_free_box(clip10, tmp_path / "big.mp4", random.Random(SEED).randbytes(3 << 20))  # 2 MiB fit there
    mark = d.start()
    d.drop(big)
    d.wait_field("STATUS", "paused: disk", mark)
    wait_until(lambda: f"free on {small_fs / 'sealed'}" in d.log(), 10, "the pause in the log", 0.05, d.log_tail)
    prom = metrics / "edgeguard.prom"
    wait_until(
        lambda: prom.exists() and 'edgeguard_paused{reason="sealed"} 1.0' in prom.read_text(),
        10,
        "the pause in the metrics, as sealed",
        0.1,
        d.log_tail,
    )
    assert 'edgeguard_paused{reason="output"} 0.0' in prom.read_text()
    assert names(d.incoming) == ["big.mp4"], "claimed although its original cannot be sealed"
    assert d.jobs() == [] and names(d.output) == []

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_fs)], check=True)
    d.wait_states({"done": 1}, timeout=60)
    assert age_decrypt(key, small_fs / "sealed" / "big.mp4.age") == big.read_bytes()
    assert names(d.output) == ["big.mp4"] and names(d.work) == []
    assert d.terminate(timeout=30) == 0


def test_sealed_and_output_on_one_filesystem_need_room_for_both(
    key: Key, small_fs: Path, clip10: Path, models_dir: Path, tmp_path: Path
) -> None:
    # Each alone fits; both do not: the output would be published, then the sealing fail.
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_fs)], check=True)
    d = Daemon(small_fs / "eg", models_dir)
    try:
        d.state = tmp_path / "state"  # the ledger elsewhere
        d.configure(
            paths={"state": str(d.state)},
            daemon={"originals": "seal", "min_free_mb": 0, "output_ratio": 1.0, "pause_seconds": 1.0},
            seal={"recipients": [key.recipient]},
        )
        big = with_free_box(clip10, tmp_path / "big.mp4", random.Random(SEED).randbytes(3 << 20))
        mark = d.start()
        d.drop(big)  # about 5 MiB left: room for the output (3 MiB) or the sealed original, not both
        d.wait_field("STATUS", "paused: disk", mark)
        assert names(d.incoming) == ["big.mp4"] and d.jobs() == []
        subprocess.run(["mount", "-o", "remount,size=64m", str(small_fs)], check=True)
        d.wait_states({"done": 1}, timeout=60)
        assert age_decrypt(key, d.sealed / "big.mp4.age") == big.read_bytes()
        assert d.terminate(timeout=30) == 0
    finally:
        d.close()
