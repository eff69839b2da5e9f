"""End-to-end tests of `edgeguard run`: the real daemon, real media, a real notify socket."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import media
from tests.e2e.daemon.conftest import (
    LONG_FRAMES,
    Clips,
    Daemon,
    assert_clean,
    faststart,
    frame_count,
    names,
    sha256,
    tagged_jpeg,
    wait_until,
)

IMAGES = ("city.jpg", "000000038829.jpg", "000000465822.jpg")


def image_size(path: Path) -> tuple[int, int]:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, f"{path} does not decode"
    return img.shape[1], img.shape[0]


def magenta_pixels(path: Path) -> int:
    decoded = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert decoded is not None, f"{path} does not decode"
    img = decoded.astype(np.int16)
    target = np.array([255, 0, 255], dtype=np.int16)  # BGR == RGB for magenta
    return int((np.abs(img - target).max(axis=2) < 40).sum())


def slow_write(
    path: Path,
    data: bytes,
    *,
    keep_open: bool,
    chunk: int = 64 << 10,
    pause: float = 0.3,
    long_pause_at: int | None = None,
    long_pause: float = 0.0,
) -> None:
    """Write `data` in chunks with pauses, keeping one descriptor open or reopening for each chunk.

    The pauses only pace the writer, as a slow upload would: however long they last, the daemon
    must take the file once, whole, so no outcome depends on their length.
    """
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    if keep_open:
        with path.open("wb") as f:
            for i, piece in enumerate(pieces):
                f.write(piece)
                f.flush()
                time.sleep(long_pause if i == long_pause_at else pause)
    else:
        for i, piece in enumerate(pieces):
            with path.open("ab") as f:
                f.write(piece)
            time.sleep(long_pause if i == long_pause_at else pause)


def huge_png() -> bytes:
    """A valid PNG signature and IHDR declaring 60000x60000 RGB, a tiny IDAT and IEND."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    ihdr = (60000).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


# ------------------------------------------------------------------ arrivals


def test_every_way_of_arriving_is_processed_once(daemon: Daemon, clips: Clips, tmp_path: Path) -> None:
    d = daemon
    d.configure(watch={"settle_seconds": 1.0, "rescan_seconds": 1.0})
    inputs: dict[str, bytes] = {}  # name in incoming -> content

    # Present before the daemon starts.
    for name, src in (("before.jpg", media("city.jpg")), ("before.mp4", clips.clip(0, 10))):
        d.drop(src, name)
        inputs[name] = src.read_bytes()
    d.start()

    # Written slowly: one writer keeps the file open and pauses longer than settle_seconds
    # (only the open descriptor keeps it from being taken); one reopens for every chunk.
    slow_open, slow_reopen, part = clips.clip(10, 10).read_bytes(), clips.clip(20, 10).read_bytes(), clips.clip(30, 10)
    inputs["slow-open.mp4"] = slow_open
    inputs["slow-reopen.mp4"] = slow_reopen
    inputs["part.mp4"] = part.read_bytes()
    writers = [
        threading.Thread(
            target=slow_write,
            args=(d.incoming / "slow-open.mp4", slow_open),
            kwargs={"keep_open": True, "long_pause_at": 2, "long_pause": 2.5},
        ),
        threading.Thread(
            target=slow_write, args=(d.incoming / "slow-reopen.mp4", slow_reopen), kwargs={"keep_open": False}
        ),
    ]
    for w in writers:
        w.start()
    # An upload as NAME.part, slowly, then renamed: the .part is never taken.
    slow_write(
        d.incoming / "part.mp4.part", part.read_bytes(), keep_open=False, pause=0.2, long_pause_at=1, long_pause=2.0
    )
    # A file that arrives after the .part is complete settles after it, and files are taken oldest
    # first: once this one is done, the daemon has had its chance to take the .part.
    tagged_jpeg(media("city.jpg"), tmp_path / "after-part.jpg", "after the part upload")
    inputs["after-part.jpg"] = (tmp_path / "after-part.jpg").read_bytes()
    os.rename(tmp_path / "after-part.jpg", d.incoming / "after-part.jpg")
    wait_until(
        lambda: any(j["name"] == "after-part.jpg" and j["state"] == "done" for j in d.jobs()),
        60,
        "after-part.jpg done",
        0.1,
        d.log_tail,
    )
    assert (d.incoming / "part.mp4.part").exists(), "the .part upload was taken"
    assert not [j for j in d.jobs() if j["name"] == "part.mp4.part"], "the .part upload was claimed"
    os.rename(d.incoming / "part.mp4.part", d.incoming / "part.mp4")

    # A burst of eight at once (distinct contents).
    for i in range(8):
        name = f"burst-{i}.jpg"
        tagged_jpeg(media(IMAGES[i % 3]), tmp_path / name, f"burst {i}")
        inputs[name] = (tmp_path / name).read_bytes()
    for i in range(8):
        os.rename(tmp_path / f"burst-{i}.jpg", d.incoming / f"burst-{i}.jpg")
    for w in writers:
        w.join()

    d.wait_states({"done": len(inputs)}, timeout=120)
    d.wait_idle()
    d.assert_alive()

    jobs = d.jobs()
    assert sorted(j["name"] for j in jobs) == sorted(inputs), "every input claimed exactly once"
    assert {j["state"] for j in jobs} == {"done"}
    by_name = {j["name"]: j for j in jobs}
    for name, content in inputs.items():
        job = by_name[name]
        assert job["sha256"] == __import__("hashlib").sha256(content).hexdigest(), f"{name} taken before complete"
        out = Path(job["output"])
        assert out.parent == d.output
        if name.endswith(".mp4"):
            assert out.name == name
            assert frame_count(out) == 10, name
        else:
            assert out.name == name
            assert image_size(out) == image_size(
                media(IMAGES[int(name[6]) % 3]) if name.startswith("burst") else media("city.jpg")
            )
    assert names(d.output) == sorted(inputs)
    assert names(d.incoming) == []
    assert names(d.failed) == names(d.quarantine) == names(d.processed) == []  # originals: delete
    assert_clean(d)
    assert d.terminate(timeout=15) == 0


@pytest.mark.parametrize("policy", ["quarantine", "keep"])
def test_originals_are_kept_per_policy(daemon: Daemon, clip10: Path, policy: str) -> None:
    d = daemon
    d.configure(daemon={"originals": policy})
    d.start()
    d.drop(media("city.jpg"))
    d.drop(clip10, "clip.mp4")
    d.wait_states({"done": 2})
    d.wait_idle()
    folder = d.quarantine if policy == "quarantine" else d.processed
    other = d.processed if policy == "quarantine" else d.quarantine
    assert names(folder) == ["city.jpg", "clip.mp4"]
    assert sha256(folder / "city.jpg") == sha256(media("city.jpg"))
    assert sha256(folder / "clip.mp4") == sha256(clip10)
    assert names(other) == names(d.failed) == names(d.incoming) == []
    assert names(d.output) == ["city.jpg", "clip.mp4"]
    for job in d.jobs():
        assert job["state"] == "done"
        assert job["final_path"] == str(folder / job["name"])
    assert_clean(d)
    assert d.terminate(timeout=15) == 0


def test_same_content_is_a_duplicate_and_other_content_gets_a_suffix(daemon: Daemon) -> None:
    d = daemon
    d.start()
    d.drop(media("city.jpg"))
    d.wait_states({"done": 1})
    first = sha256(d.output / "city.jpg")

    d.drop(media("city.jpg"))  # same name, same content
    d.wait_states({"duplicate": 1})
    d.wait_idle()
    assert names(d.output) == ["city.jpg"]
    assert names(d.incoming) == []  # the duplicate's original handled per policy (delete)

    d.drop(media("000000038829.jpg"), "city.jpg")  # same name, other content
    d.wait_states({"done": 2})
    d.wait_idle()
    assert names(d.output) == ["city-1.jpg", "city.jpg"]
    assert sha256(d.output / "city.jpg") == first, "the first output was overwritten"
    assert image_size(d.output / "city-1.jpg") == image_size(media("000000038829.jpg"))
    jobs = d.jobs()
    assert [j["state"] for j in jobs] == ["done", "duplicate", "done"]
    assert jobs[1]["output"] == str(d.output / "city.jpg")
    assert jobs[2]["output"] == str(d.output / "city-1.jpg")
    assert_clean(d)
    assert d.terminate(timeout=15) == 0


# ------------------------------------------------------------------ systemd protocol and signals


def pings(d: Daemon, since: int = 0) -> list[float]:
    """Arrival times of the WATCHDOG=1 datagrams since `since`."""
    return [at for at, k, v in d.fields(since) if (k, v) == ("WATCHDOG", "1")]


def test_notify_ready_status_watchdog_stopping(daemon: Daemon, long_clip: Path) -> None:
    d = daemon
    mark = d.start(watchdog_usec=2_000_000)
    # Idle pings first: four of them (three gaps) before any work arrives.
    wait_until(lambda: len(pings(d, mark)) >= 4, 30, "four idle WATCHDOG=1 pings", 0.05, d.log_tail)
    dropped_at = time.monotonic()
    d.drop(long_clip, "long.mp4")  # several seconds of work
    d.wait_field("STATUS", "processing long.mp4", mark)
    d.wait_states({"done": 1})
    idle = d.wait_field("STATUS", "idle", d.mark() - 1, timeout=10)
    # Idle again, the pings go on: two more after the idle status.
    wait_until(lambda: len(pings(d, idle)) >= 2, 30, "WATCHDOG=1 pings once idle again", 0.05, d.log_tail)
    assert d.terminate(timeout=15) == 0
    fields = d.fields(mark)

    statuses = [v for _, k, v in fields if k == "STATUS"]
    assert statuses[0] == "idle", "READY=1 carries the first status"
    assert any(s.startswith("idle") for s in statuses[1:])
    progress = [int(m[1]) for s in statuses if (m := re.fullmatch(r"processing long\.mp4 (\d+)% \(queue \d+\)", s))]
    assert progress, statuses
    assert progress == sorted(progress) and progress[-1] > progress[0], "progress only goes up"
    assert max(progress) >= 50

    pinged = [at for at, k, v in fields if (k, v) == ("WATCHDOG", "1")]
    gaps = [b - a for a, b in itertools.pairwise(pinged)]
    idle_gaps = [b - a for a, b in itertools.pairwise(pinged) if b < dropped_at]
    assert len(idle_gaps) >= 2
    # Half of WatchdogSec=2s, give or take one main-loop tick.
    assert all(0.7 <= g <= 1.6 for g in idle_gaps), idle_gaps
    # Never silent for the whole WatchdogSec while working (systemd would kill a healthy daemon).
    assert max(gaps) < 2.0, gaps

    keys = [k for _, k, _ in fields]
    assert keys.count("READY") == 1
    assert keys[-1] == "STOPPING" or "STOPPING" in keys[-3:], keys[-5:]
    assert "stopped" in d.log()


def test_sigterm_during_a_long_file_rolls_it_back(daemon: Daemon, long_clip: Path) -> None:
    d = daemon
    d.configure(daemon={"stop_grace": 1.0})
    mark = d.start()
    d.drop(long_clip, "long.mp4")
    wait_until(
        lambda: any(re.search(r"processing long\.mp4 [1-9]\d*%", s) for s in d.statuses(mark)),
        60,
        "long.mp4 to be under way",
        0.05,
        d.log_tail,
    )
    sent = time.monotonic()
    rc = d.terminate(timeout=1.0 + 10)
    took = time.monotonic() - sent
    assert rc == 0, d.log()
    assert took < 1.0 + 5, f"took {took:.1f} s to stop"
    assert "STOPPING" in [k for _, k, _ in d.fields(mark)]
    assert "rolled back" in d.log() or "rolling back" in d.log()

    # Rolled back: the original waits in work, the ledger says queued, no output at all.
    work = names(d.work)
    assert len(work) == 1 and work[0].endswith("-long.mp4"), work
    assert sha256(d.work / work[0]) == sha256(long_clip)
    [job] = d.jobs()
    assert job["state"] == "queued"
    assert names(d.output) == []
    # Claimed by a hard link: the name stays in incoming (a writer's appends would reach the job).
    assert names(d.incoming) == ["long.mp4"]
    assert (d.incoming / "long.mp4").stat().st_ino == (d.work / work[0]).stat().st_ino

    # The next start takes it first and finishes it.
    d.start()
    d.wait_states({"done": 1})
    d.wait_idle()
    assert names(d.output) == ["long.mp4"]
    assert frame_count(d.output / "long.mp4") == LONG_FRAMES
    [job] = d.jobs()
    assert job["state"] == "done"
    assert job["attempts"] == 1, "a rollback is not a failed attempt"
    assert_clean(d)
    assert d.terminate(timeout=15) == 0


def test_sighup_reloads_a_good_config_and_refuses_a_bad_one(daemon: Daemon) -> None:
    d = daemon
    mark = d.start()
    d.drop(media("city.jpg"))
    d.wait_states({"done": 1})
    assert magenta_pixels(d.output / "city.jpg") < 100  # blurred, not filled

    d.configure(protect={"style": "fill", "color": [255, 0, 255], "shape": "box"})
    hup = d.mark()
    d.hup()
    after = d.wait_field("RELOADING", "1", hup)
    d.wait_ready(after)
    wait_until(lambda: "configuration reloaded" in d.log(), 10, "the reload in the log", 0.05, d.log_tail)
    d.drop(media("000000038829.jpg"))
    d.wait_states({"done": 2})
    filled = magenta_pixels(d.output / "000000038829.jpg")
    assert filled > 5000, "the new protect.style was not used"

    good = d.settings
    d.write_config("protect:\n  style: sparkle\n")
    hup = d.mark()
    d.hup()
    after = d.wait_field("RELOADING", "1", hup)
    d.wait_ready(after)
    wait_until(lambda: "reload refused" in d.log(), 10, "the refusal in the log", 0.05, d.log_tail)
    refused = [line for line in d.log().splitlines() if "reload refused" in line]
    assert len(refused) == 1, refused
    assert "protect.style" in refused[0]
    # Still running, still with the config it had.
    d.drop(media("000000465822.jpg"))
    d.wait_states({"done": 3})
    assert magenta_pixels(d.output / "000000465822.jpg") > 2000
    d.assert_alive()
    d.configure(**good)
    assert d.terminate(timeout=15) == 0
    assert [k for _, k, _ in d.fields(mark)].count("READY") == 3


def test_poison_file_goes_to_failed_after_max_attempts(daemon: Daemon, long_clip: Path) -> None:
    d = daemon
    d.configure(daemon={"max_attempts": 2})
    d.drop(long_clip, "long.mp4")
    for attempt in (1, 2):
        mark = d.start()
        d.wait_field("STATUS", "processing long.mp4", mark)
        d.kill()  # the file "crashed the daemon"
        [job] = d.jobs()
        assert (job["state"], job["attempts"]) == ("processing", attempt)
    d.start()
    wait_until((d.failed / "long.mp4.error.json").exists, 30, "the poison file in failed", 0.1, d.log_tail)
    report = d.error_report("long.mp4")
    assert report["stage"] == "poison"
    assert "2 attempts" in report["reason"]
    assert report["sha256"] == sha256(long_clip)
    assert sha256(d.failed / "long.mp4") == sha256(long_clip)
    [job] = d.jobs()
    assert (job["state"], job["attempts"]) == ("failed", 2)
    assert names(d.output) == []
    assert_clean(d)
    assert d.terminate(timeout=15) == 0


def test_per_file_time_limit(daemon: Daemon, long_clip: Path) -> None:
    d = daemon
    d.configure(daemon={"file_timeout": 1.0})
    d.start()
    d.drop(long_clip, "long.mp4")  # several seconds of work
    wait_until((d.failed / "long.mp4.error.json").exists, 30, "the timeout failure", 0.1, d.log_tail)
    report = d.error_report("long.mp4")
    assert report["stage"] == "timeout"
    assert "time limit" in report["reason"]
    assert sha256(d.failed / "long.mp4") == sha256(long_clip)
    # The daemon goes on with the next file.
    d.drop(media("city.jpg"))
    d.wait_states({"done": 1, "failed": 1})
    d.wait_idle()
    assert names(d.output) == ["city.jpg"]
    assert_clean(d)
    assert d.terminate(timeout=15) == 0


def test_low_disk_pauses_claiming_until_a_reload_fixes_it(daemon: Daemon) -> None:
    d = daemon
    st = os.statvfs(d.output)
    free_mb = st.f_bavail * st.f_frsize >> 20
    d.configure(daemon={"min_free_mb": free_mb + 100_000, "pause_seconds": 30.0})
    mark = d.start()
    d.drop(media("city.jpg"))
    # The daemon had the settled file in hand and paused instead of claiming it (the status comes
    # first, then the log line); the next look is pause_seconds (30 s) away.
    d.wait_field("STATUS", "paused: disk", mark)
    wait_until(lambda: "disk space low" in d.log(), 10, "the pause in the log", 0.05, d.log_tail)
    assert names(d.incoming) == ["city.jpg"], "claimed although the disk is short"
    assert d.jobs() == []

    d.configure(daemon={"min_free_mb": 1})
    hup = d.mark()
    d.hup()
    d.wait_ready(d.wait_field("RELOADING", "1", hup))
    # Well before pause_seconds (30 s) would have run out.
    d.wait_states({"done": 1}, timeout=10)
    assert names(d.output) == ["city.jpg"]
    assert d.terminate(timeout=15) == 0


def test_a_removed_output_folder_pauses_claiming_until_it_is_back(daemon: Daemon) -> None:
    # It used to end the daemon: an internal error (exit 70) at the next hand-over.
    d = daemon
    d.configure(daemon={"pause_seconds": 0.5})
    mark = d.start()
    shutil.rmtree(d.output)
    d.drop(media("city.jpg"))
    d.wait_field("STATUS", "paused: cannot see the free space on", mark)
    wait_until(
        lambda: f"cannot see the free space on {d.output}" in d.log(), 10, "the pause in the log", 0.05, d.log_tail
    )
    d.assert_alive()
    assert names(d.incoming) == ["city.jpg"] and d.jobs() == []
    d.output.mkdir()
    d.wait_states({"done": 1}, timeout=30)
    assert names(d.output) == ["city.jpg"]
    assert d.terminate(timeout=15) == 0


def test_disk_full_mid_write_fails_nothing_and_retries(
    small_fs: Path, tmp_path: Path, models_dir: Path, clip10: Path
) -> None:
    """Running out of space while encoding keeps the original queued in work; it is done once there is room."""
    d = Daemon(small_fs / "eg", models_dir)
    try:
        # The ledger lives elsewhere; lossless output of 10 720p frames cannot fit in 2 MiB.
        d.state = tmp_path / "state"
        d.configure(
            paths={"state": str(d.state)},
            video={"crf": 0},
            daemon={"min_free_mb": 0, "output_ratio": 0.01, "pause_seconds": 1.0},
        )
        d.start()
        d.drop(clip10, "cam.mp4")
        wait_until(lambda: "kept for a retry" in d.log(), timeout=60, what="a transient write failure")
        assert names(d.failed) == [], "disk full must not fail the file permanently"
        assert names(d.output) == [], "nothing partial may appear in output"
        assert [j["state"] for j in d.jobs()] in (["queued"], ["processing"])
        assert any(n.endswith("cam.mp4") for n in names(d.work)), "the original stays in work"
        subprocess.run(["mount", "-o", "remount,size=64m", str(small_fs)], check=True)
        d.wait_states({"done": 1}, timeout=90)
        assert names(d.output) == ["cam.mp4"]
        assert frame_count(d.output / "cam.mp4") == frame_count(clip10)
        assert names(d.failed) == [] and names(d.work) == []
        assert d.terminate(timeout=15) == 0
    finally:
        d.close()


def test_status_json_while_running(daemon: Daemon, long_clip: Path) -> None:
    d = daemon
    d.start()
    empty = d.status()
    assert empty["counts"] == {} and empty["in_progress"] == [] and empty["last_failures"] == []
    (d.root / "junk.mp4").write_bytes(b"\0" * 1000)
    d.drop(d.root / "junk.mp4")
    d.drop(long_clip, "long.mp4")

    def busy() -> dict[str, object] | None:
        report = d.status()
        return report if any(j["file"] == "long.mp4" for j in report["in_progress"]) else None

    report = wait_until(busy, 60, "long.mp4 in status --json in_progress", 0.2, d.log_tail)
    [job] = [j for j in report["in_progress"] if j["file"] == "long.mp4"]
    assert job["state"] in ("queued", "processing")
    d.wait_states({"done": 1, "failed": 1})
    report = d.status()
    assert report["counts"] == {"done": 1, "failed": 1}
    assert report["in_progress"] == []
    [failure] = report["last_failures"]
    assert failure["file"] == "junk.mp4"
    assert failure["reason"] and failure["stage"]
    assert failure["where"] == str(d.failed / "junk.mp4")
    d.assert_alive()
    assert d.terminate(timeout=15) == 0


# ------------------------------------------------------------------ bad input


def _without_dac_override() -> list[str]:
    """A command prefix under which root cannot read a chmod 000 file (no CAP_DAC_*), or []."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("SKIPPED: running as root and setpriv (util-linux) is missing, so chmod 000 cannot be tested")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all"]


def test_bad_files_fail_or_are_skipped_and_the_daemon_stays_up(daemon: Daemon, clip10: Path, tmp_path: Path) -> None:
    d = daemon
    mark = d.start(wrap=_without_dac_override())
    assert d.proc is not None
    caps = int(re.search(r"CapEff:\s*([0-9a-f]+)", Path(f"/proc/{d.proc.pid}/status").read_text())[1], 16)  # type: ignore[index]
    assert os.geteuid() != 0 or not caps & 0b110, "the daemon still has CAP_DAC_OVERRIDE/READ_SEARCH"

    stage = tmp_path / "stage"
    stage.mkdir()
    clip = clip10.read_bytes()
    (stage / "empty.mp4").write_bytes(b"")
    (stage / "truncated.mp4").write_bytes(clip[: len(clip) // 2])  # cut before the index (moov at the end)
    cut = faststart(clip10, tmp_path / "fs.mp4").read_bytes()
    (stage / "cut.mp4").write_bytes(cut[: len(cut) * 6 // 10])  # index first, frames missing
    (stage / "random.mp4").write_bytes(np.random.default_rng(7).bytes(200_000))
    (stage / "text.avi").write_text("this is not a video\n" * 50, encoding="utf-8")
    (stage / "huge.png").write_bytes(huge_png())
    shutil.copyfile(media("city.jpg"), stage / "unreadable.jpg")
    (stage / "unreadable.jpg").chmod(0)
    stays = ["unreadable.jpg"]  # never taken: the daemon cannot read it (nor vouch for it)
    expected_failures = {
        "empty.mp4": "empty",
        "truncated.mp4": "not a readable media file",
        "cut.mp4": "truncated",
        "random.mp4": "not a readable media file",
        "text.avi": "not a readable media file",
        "huge.png": "60000x60000",
    }
    target = tmp_path / "target.mp4"
    shutil.copyfile(clip10, target)
    target_before = (sha256(target), target.stat().st_mtime_ns)

    goods = [("good-1.jpg", media("city.jpg")), ("good-2.mp4", clip10), ("good-3.jpg", media("000000465822.jpg"))]
    d.drop(*goods[0][::-1])
    for name in list(expected_failures)[:4]:
        os.rename(stage / name, d.incoming / name)
    os.symlink(target, d.incoming / "link.mp4")
    os.mkfifo(d.incoming / "fifo.mp4")
    long_name, odd_name = "n" * 220 + ".jpg", os.fsdecode(b"cam\xff\xfe.jpg")
    for name in (long_name, odd_name):
        shutil.copyfile(media("city.jpg"), stage / name)
        os.rename(stage / name, d.incoming / name)
    (d.incoming / "dir.mp4").mkdir()
    (d.incoming / "dir.mp4" / "inner.mp4").write_bytes(clip)
    d.drop(*goods[1][::-1])
    for name in [*list(expected_failures)[4:], *stays]:
        os.rename(stage / name, d.incoming / name)
    d.drop(*goods[2][::-1])

    d.wait_states({"done": 3, "failed": len(expected_failures)}, timeout=90)
    d.wait_idle(stays=[long_name, odd_name, *stays])
    # One more good file after all that: still working.
    d.drop(media("000000038829.jpg"), "good-4.jpg")
    d.wait_states({"done": 4})
    d.assert_alive()

    assert names(d.output) == ["good-1.jpg", "good-2.mp4", "good-3.jpg", "good-4.jpg"]
    assert frame_count(d.output / "good-2.mp4") == 10
    assert sorted(names(d.failed)) == sorted([*expected_failures, *(f"{n}.error.json" for n in expected_failures)])
    for name, words in expected_failures.items():
        report = d.error_report(name)
        assert report["file"] == name
        assert words in report["reason"], (name, report)
        assert report["stage"], report
    # Skipped, left where they are, never followed or opened; each reported once in the log.
    assert names(d.incoming) == sorted(["dir.mp4", "fifo.mp4", "link.mp4", long_name, odd_name, *stays])
    assert (d.incoming / "link.mp4").is_symlink()
    assert (sha256(target), target.stat().st_mtime_ns) == target_before
    assert names(d.incoming / "dir.mp4") == ["inner.mp4"]
    log = d.log()
    for name, kind in (("link.mp4", "symlink"), ("fifo.mp4", "special file"), ("dir.mp4", "directory")):
        lines = [line for line in log.splitlines() if f"{name}: skipped: a {kind}" in line]
        assert len(lines) == 1, (name, lines)
    # Names the folders cannot carry (too long for the work folder's prefixed name, not UTF-8 for
    # the ledger) are skipped too, instead of failing the claim again and again ahead of every other file.
    assert len([line for line in log.splitlines() if f"{long_name}: skipped: the name is" in line]) == 1
    assert len([line for line in log.splitlines() if "skipped: the name is not valid UTF-8" in line]) == 1
    assert len([line for line in log.splitlines() if "unreadable.jpg: cannot open: Permission denied" in line]) == 1
    assert "unexpected error" not in log
    assert {j["name"] for j in d.jobs()} == {*expected_failures, "good-1.jpg", "good-2.mp4", "good-3.jpg", "good-4.jpg"}
    assert_clean(d)
    assert d.terminate(timeout=15) == 0
    assert [k for _, k, _ in d.fields(mark)].count("READY") == 1


@pytest.mark.slow  # ~26 s: once the queue is full, each notification waits out the send timeout (1 s)
def test_a_manager_that_stops_reading_notifications_does_not_stall_the_daemon(daemon: Daemon, tmp_path: Path) -> None:
    """Its queue fills (net.unix.max_dgram_qlen); the daemon keeps working and still stops on SIGTERM."""
    d = daemon
    # debug: the daemon logs (once) the first notification its manager's full queue refused.
    d.configure(logging={"level": "debug"})
    d.start(watchdog_usec=200_000)  # a WATCHDOG=1 every 0.1 s
    d.stop_reading()
    qlen = int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text())
    wait_until(
        lambda: "sd_notify to" in d.log() and "failed (logged once)" in d.log(),
        0.1 * qlen * 3 + 60,
        "a notification refused by the full queue",
        0.1,
        d.log_tail,
    )
    photo = media("000000465822.jpg").read_bytes()
    n = 6
    for i in range(n):
        src = tmp_path / f"p{i}.jpg"
        src.write_bytes(photo + bytes([i]))  # other bytes, not a duplicate
        d.drop(src)
    wait_until(lambda: len(names(d.output)) == n, 90, f"{n} outputs", detail=d.log_tail)
    assert d.terminate(timeout=15) == 0
    assert "stopped" in d.log()
