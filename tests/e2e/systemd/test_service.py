"""The real service under a real systemd: install, sandbox, journal, reload, watchdog, stop, crash.

The tests share one container and one installed service (see conftest.py); each uses its own
file names, and each starts the service itself if an earlier test left it stopped.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import pytest

from tests.conftest import media
from tests.e2e.daemon.conftest import frame_count, regular_files, sha256, tagged_jpeg, wait_until
from tests.e2e.systemd.conftest import CONFIG, STATE, TEXTFILE, UNIT, VENV, Service, long_video, message
from tests.support.prom import Samples, samples

pytestmark = pytest.mark.slow

# Signs that the sandbox (seccomp filter, read-only paths, no capabilities) denied something.
SANDBOX_DENIALS = ("Operation not permitted", "PermissionError", "EPERM", "SIGSYS", "Bad system call", "status=31")


@dataclass
class Batch:
    """The first files the fresh service handled (shared by the first two tests)."""

    since: int  # journal mark taken before `systemctl enable --now`
    main_pid: int
    rows: dict[str, dict[str, Any]]  # file name -> its ledger row


def denials(svc: Service, since: int) -> list[str]:
    return [m for m in svc.messages(since) if any(d in m for d in SANDBOX_DENIALS)]


def audio_streams(path: Path) -> int:
    with av.open(os.fspath(path)) as container:
        return len(container.streams.audio)


def entries_named(svc: Service, prefix: str) -> dict[str, list[str]]:
    """Every entry (hidden ones too) of output/, quarantine/, failed/, incoming/, work/ whose name has `prefix`."""
    out = {}
    for folder in ("output", "quarantine", "failed", "incoming", "work"):
        out[folder] = sorted(n for n in os.listdir(svc.folder(folder)) if n.lstrip(".").startswith(prefix))
    return out


def assert_done_once(svc: Service, name: str, *, attempts: int) -> dict[str, Any]:
    """`name` went through exactly once: one ledger row (done), one output, one original in quarantine."""
    rows = svc.jobs(name)
    assert [r["state"] for r in rows] == ["done"], f"ledger rows for {name}: {rows}"
    row = rows[0]
    assert row["attempts"] == attempts, f"{name}: {row['attempts']} attempts, expected {attempts}: {row}"
    stem = Path(name).stem
    seen = entries_named(svc, stem)
    assert seen == {
        "output": [f"{stem}.mp4"],
        "quarantine": [name],
        "failed": [],
        "incoming": [],
        "work": [],
    }, f"{name} after processing: {seen}"
    return row


def long_file_in_progress(svc: Service, media_dir: Path, tag: str) -> Path:
    """The running service, working on a long video TAG.mp4 (returned) that it has just begun."""
    svc.ensure_running()
    video = long_video(media_dir, tag)
    svc.drop(video, f"{tag}.mp4")
    svc.wait_processing(f"{tag}.mp4")
    return video


@pytest.fixture(scope="module")
def batch(service: Service) -> Batch:
    """`systemctl enable --now edgeguard`, then a video with audio, a photo and a bad file dropped in."""
    svc = service
    since = svc.mark()
    svc.systemctl("enable", "--now", UNIT)  # returns once the daemon sent READY=1
    svc.wait_active()
    bad = svc.c.path("/var/tmp/broken.mp4")
    bad.write_bytes(random.Random(1).randbytes(64 << 10))  # seeded: a few random draws open as a stream
    drops = {"street.mp4": media("dos.mp4"), "city.jpg": media("city.jpg"), "broken.mp4": bad}
    for name, src in drops.items():
        svc.drop(src, name)
    rows = {name: svc.wait_final(name) for name in drops}
    return Batch(since, svc.main_pid(), rows)


def test_enable_now_runs_the_sandboxed_service_and_processes_files(service: Service, batch: Batch) -> None:
    """Video with audio, photo and a bad file all go through under the full sandbox."""
    svc = service
    assert svc.active() == "active/running", svc.describe()
    assert svc.systemctl("is-enabled", UNIT).stdout.strip() == "enabled"
    status = svc.status_text()
    assert status.startswith(("idle", "processing")), f"StatusText={status!r}"
    # The sandbox really applies to the daemon: seccomp filter, no new privileges, no capabilities.
    proc = svc.c.run(["cat", f"/proc/{batch.main_pid}/status"]).stdout
    fields = dict(line.split(":", 1) for line in proc.splitlines() if ":" in line)
    assert fields["Seccomp"].strip() == "2", proc
    assert fields["NoNewPrivs"].strip() == "1", proc
    assert int(fields["CapEff"], 16) == 0 and int(fields["CapBnd"], 16) == 0, proc
    assert svc.show("NRestarts") == "0", svc.describe()
    assert svc.main_pid() == batch.main_pid, "the daemon restarted while processing the first files"

    states = {name: row["state"] for name, row in batch.rows.items()}
    assert states == {"street.mp4": "done", "city.jpg": "done", "broken.mp4": "failed"}, batch.rows
    output = svc.folder("output")
    assert regular_files(output) == ["city.jpg", "street.mp4"]
    assert frame_count(output / "street.mp4") == frame_count(media("dos.mp4"))
    assert audio_streams(output / "street.mp4") == 1, "the audio track was not kept"
    assert regular_files(svc.folder("quarantine")) == ["city.jpg", "street.mp4"]
    assert regular_files(svc.folder("failed")) == ["broken.mp4", "broken.mp4.error.json"]
    assert regular_files(svc.folder("incoming")) == []
    assert os.listdir(svc.folder("work")) == []
    assert denials(svc, batch.since) == [], svc.describe()


def test_journal_has_one_structured_line_per_file(service: Service, batch: Batch) -> None:
    """EDGEGUARD_FILE/JOB/OUTCOME/SECONDS on one journal line per file, readable with `journalctl -o json`."""
    outcomes: dict[str, list[dict[str, Any]]] = {}
    for entry in service.journal(batch.since):
        if "EDGEGUARD_OUTCOME" in entry:
            outcomes.setdefault(entry["EDGEGUARD_FILE"], []).append(entry)
    assert sorted(outcomes) == sorted(batch.rows), outcomes
    for name, entries in outcomes.items():
        assert len(entries) == 1, f"{name}: {len(entries)} outcome lines: {[message(e) for e in entries]}"
        entry, row = entries[0], batch.rows[name]
        assert entry["EDGEGUARD_OUTCOME"] == row["state"], entry
        assert int(entry["EDGEGUARD_JOB"]) == row["id"], entry
        assert entry.get("_SYSTEMD_UNIT") == f"{UNIT}.service", entry
        assert entry.get("SYSLOG_IDENTIFIER") == "edgeguard", entry
        # Failure lines too: how long a bad file held the daemon is what an operator looks for.
        assert "EDGEGUARD_SECONDS" in entry, f"{name}: no EDGEGUARD_SECONDS on {message(entry)!r}"
        assert float(entry["EDGEGUARD_SECONDS"]) >= 0, entry


def test_metrics_and_audit_records_under_the_sandbox(service: Service, batch: Batch) -> None:
    """The README's metrics drop-in lets the sandboxed daemon write the textfile; `edgeguard audit` reads the ledger."""
    svc = service
    prom = svc.c.path(f"{TEXTFILE}/edgeguard.prom")

    def counted() -> Samples | None:
        got = samples(prom) if prom.exists() else None
        return got if got is not None and got[("edgeguard_file_seconds_count", ())] >= 3 else None

    got = wait_until(counted, 15, "the first three files in the metrics textfile", 0.2, svc.describe)
    assert got[("edgeguard_files_total", (("outcome", "done"),))] == 2
    assert got[("edgeguard_files_total", (("outcome", "failed"),))] == 1
    assert sum(v for (name, _), v in got.items() if name == "edgeguard_files_failed_total") == 1
    assert got[("edgeguard_frames_total", ())] == frame_count(media("dos.mp4")) + 1
    assert any(n == "edgeguard_info" and dict(labels)["model"] == "yolox_nano" for n, labels in got)
    assert oct(prom.stat().st_mode & 0o777) == oct(0o644)  # node_exporter runs as another user

    audit = svc.c.run(
        [f"{VENV}/bin/edgeguard", "audit", "street.mp4", "--json", "-c", CONFIG], user="edgeguard", cwd=STATE
    )
    record = json.loads(audit.stdout)
    assert record["output"]["sha256"] == sha256(svc.folder("output") / "street.mp4")
    assert record["input"]["sha256"] == sha256(media("dos.mp4"))
    assert record["original"] == {"policy": "quarantine", "path": f"{STATE}/quarantine/street.mp4"}
    assert record["model"]["name"] == "yolox_nano" and record["target"] == "cpu"


def test_reload_rereads_config_and_refuses_a_broken_one(service: Service, tmp_path: Path) -> None:
    """`systemctl reload` applies a new config; a broken one is refused and the service keeps running."""
    svc = service
    svc.ensure_running()
    pid = svc.main_pid()
    with svc.reconfigured(daemon={"originals": "keep"}):  # observable: originals now go to processed/
        photo = tagged_jpeg(media("city.jpg"), tmp_path / "reloaded.jpg", "reload")
        svc.drop(photo, "reloaded.jpg")
        assert svc.wait_final("reloaded.jpg")["state"] == "done"
        assert "reloaded.jpg" in regular_files(svc.folder("processed")), "the reloaded config was not used"

        since = svc.mark()
        svc.write_config("daemon:\n  originals: shred\n  stop_grace: -1\n")
        svc.systemctl("reload", UNIT)
        refused = svc.wait_message("reload refused", since)
        assert int(refused.get("PRIORITY", 0)) <= 3, refused  # logged as an error
        time.sleep(1.0)  # a refused reload must not stop or restart the daemon afterwards either
        assert svc.active() == "active/running", svc.describe()
        assert svc.main_pid() == pid
        assert svc.status_text().startswith("idle"), svc.status_text()
    assert svc.main_pid() == pid
    assert svc.show("NRestarts") == "0"


def test_originals_are_sealed_under_the_sandbox_and_open_off_the_gateway(service: Service, tmp_path: Path) -> None:
    """`seal` and `seal_failed` under the full sandbox; the key pair is made outside the container (the
    gateway only ever gets the public key) and Debian's age opens the sealed files there."""
    svc = service
    svc.ensure_running()
    pid = svc.main_pid()
    identity = tmp_path / "reviewer.key"
    subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", str(identity)], check=True, capture_output=True, text=True)
    photo = tagged_jpeg(media("city.jpg"), tmp_path / "sealed.jpg", "sealed under systemd")
    bad = tmp_path / "sealed-bad.mp4"
    bad.write_bytes(random.Random(2).randbytes(64 << 10))
    sealing = {"originals": "seal", "seal_failed": True}
    with svc.reconfigured(daemon=sealing, seal={"recipients": [recipient.stdout.strip()]}):
        svc.drop(photo, photo.name)
        svc.drop(bad, bad.name)
        assert svc.wait_final(photo.name)["state"] == "done"
        assert svc.wait_final(bad.name)["state"] == "failed"
    for original, sealed_file in (
        (photo, svc.folder("sealed") / "sealed.jpg.age"),
        (bad, svc.folder("failed") / "sealed-bad.mp4.age"),
    ):
        opened = subprocess.run(["age", "-d", "-i", str(identity), str(sealed_file)], capture_output=True, check=True)
        assert opened.stdout == original.read_bytes(), sealed_file
        for path in (sealed_file, sealed_file.with_name(sealed_file.name + ".json")):
            assert oct(path.stat().st_mode & 0o777) == oct(0o640), path
    assert "sealed-bad.mp4.age.error.json" in regular_files(svc.folder("failed"))
    assert "sealed.jpg" in regular_files(svc.folder("output"))
    status = svc.c.run([f"{VENV}/bin/edgeguard", "status", "--json", "-c", CONFIG], user="edgeguard", cwd=STATE)
    sealed = {s["file"]: s for s in json.loads(status.stdout)["last_sealed"]}
    assert sealed[photo.name]["where"] == f"{STATE}/sealed/sealed.jpg.age" and sealed[photo.name]["sealed_to"]
    assert svc.main_pid() == pid and svc.show("NRestarts") == "0"


def test_watchdog_kills_a_hung_daemon_and_the_file_is_done_once(service: Service, media_dir: Path) -> None:
    """SIGSTOP mid-file: the watchdog (5 s, drop-in) aborts the daemon, systemd restarts it, the file is done once."""
    svc = service
    video = long_file_in_progress(svc, media_dir, "hang")
    restarts = int(svc.show("NRestarts"))  # after the start (a manual start resets it)
    pid = svc.main_pid()
    since = svc.mark()
    svc.c.run(["kill", "-STOP", str(pid)])
    wait_until(
        lambda: svc.main_pid() not in (0, pid) and svc.active() == "active/running",
        60,
        "the watchdog to restart the daemon",
        0.2,
        svc.describe,
    )
    lines = svc.messages(since)
    assert any("Watchdog timeout" in m for m in lines), lines
    assert any("SIGABRT" in m for m in lines), lines
    assert int(svc.show("NRestarts")) == restarts + 1
    svc.wait_final("hang.mp4")
    assert_done_once(svc, "hang.mp4", attempts=2)
    assert frame_count(svc.folder("output") / "hang.mp4") == frame_count(video)
    assert denials(svc, since) == []


def test_stop_mid_file_exits_within_grace_and_the_file_is_done_once_later(service: Service, media_dir: Path) -> None:
    """`systemctl stop` mid-file returns within stop_grace (plus the rollback); the next start finishes it once."""
    svc = service
    grace = float(svc.settings["daemon"]["stop_grace"])
    video = long_file_in_progress(svc, media_dir, "stopped")
    since = svc.mark()
    began = time.monotonic()
    svc.systemctl("stop", UNIT)
    took = time.monotonic() - began
    print(f"systemctl stop took {took:.1f} s (stop_grace {grace:g} s)")
    assert svc.active() == "inactive/dead", svc.describe()
    assert svc.show("Result") == "success", svc.describe()  # exited by itself, not killed at TimeoutStopSec=
    assert took < grace + 5.0, f"systemctl stop took {took:.1f} s with stop_grace {grace:g} s"
    lines = svc.messages(since)
    assert any("stopping: letting stopped.mp4 finish" in m for m in lines), lines
    assert any(m.strip() == "stopped" for m in lines), lines
    assert [r["state"] for r in svc.jobs("stopped.mp4")] in (["queued"], ["done"]), svc.jobs("stopped.mp4")
    assert regular_files(svc.folder("output")).count("stopped.mp4") <= 1

    svc.systemctl("start", UNIT)
    svc.wait_final("stopped.mp4")
    assert_done_once(svc, "stopped.mp4", attempts=1)
    assert frame_count(svc.folder("output") / "stopped.mp4") == frame_count(video)


def test_sigkill_mid_file_restarts_and_loses_nothing(service: Service, media_dir: Path) -> None:
    """`systemctl kill -s KILL` mid-file: Restart=on-failure brings it back; the file is done once, never partial."""
    svc = service
    video = long_file_in_progress(svc, media_dir, "killed")
    restarts = int(svc.show("NRestarts"))  # after the start (a manual start resets it)
    wait_until(lambda: "killed.mp4 0%" not in svc.status_text(), 30, "some progress on killed.mp4", 0.1)
    before = set(regular_files(svc.folder("output")))
    pid = svc.main_pid()
    since = svc.mark()
    svc.systemctl("kill", "-s", "KILL", UNIT)

    def back() -> bool:
        # No partial output may ever be visible, before or after the restart.
        extra = sorted(set(os.listdir(svc.folder("output"))) - before - {"killed.mp4"})
        assert extra == [], f"unexpected entries in output/: {extra}"
        return svc.main_pid() not in (0, pid) and svc.active() == "active/running"

    wait_until(back, 60, "Restart=on-failure to restart the daemon", 0.1, svc.describe)
    assert int(svc.show("NRestarts")) == restarts + 1
    assert any("status=9/KILL" in m or "signal=KILL" in m for m in svc.messages(since)), svc.messages(since)

    def finished() -> bool:
        back()
        return bool(svc.jobs("killed.mp4")[-1]["state"] == "done")

    wait_until(finished, 120, "killed.mp4 to be done after the restart", 0.2, svc.describe)
    assert_done_once(svc, "killed.mp4", attempts=2)
    assert not [n for n in os.listdir(svc.folder("output")) if n.startswith(".")]
    for name in regular_files(svc.folder("output")):
        if name.endswith(".mp4"):
            want = frame_count(media("dos.mp4")) if name == "street.mp4" else frame_count(video)
            assert frame_count(svc.folder("output") / name) == want, name
