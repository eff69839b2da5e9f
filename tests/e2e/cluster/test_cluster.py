"""The real daemon against a real Ray cluster on this machine: a head and two worker nodes.

Each test starts the cluster as it needs it, then the daemon as a subprocess (its Ray driver is
a child of it); the outputs are checked as a camera's users would see them.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import av

from edgeguard import __version__
from edgeguard.config import load_config
from edgeguard.engine import Engine
from tests.conftest import media
from tests.e2e.cluster.conftest import RayCluster, retitled
from tests.e2e.daemon.conftest import Clips, Daemon, assert_clean, frame_count, regular_files, wait_until

CLUSTER_TIMEOUT = 240.0  # seconds for a handful of files on two one-CPU nodes of a busy 2-core machine


def _video(path: Path) -> tuple[str, list[float], int]:
    """The video codec, every frame's time in seconds (presentation order), and the audio packets."""
    with av.open(os.fspath(path)) as c:
        v = c.streams.video[0]
        assert v.time_base is not None
        times = sorted(float(p.pts * v.time_base) for p in c.demux(v) if p.size)
        codec = v.codec_context.name
    with av.open(os.fspath(path)) as c:
        audio = sum(1 for p in c.demux(c.streams.audio[0]) if p.size) if c.streams.audio else 0
    return codec, times, audio


def _mid_file(d: Daemon) -> None:
    """Wait until the file in hand is partly done on the cluster (its first pieces are back)."""
    wait_until(
        lambda: any(j["progress"] and j["progress"] > 0.1 for j in d.jobs()), 120, "pieces done", 0.1, d.log_tail
    )


def _done_once(d: Daemon, name: str, src: Path, attempts: int = 1) -> None:
    """`src`, dropped as `name`, ended exactly once: one output with its frames, one job, done."""
    assert regular_files(d.output) == [name]
    [job] = d.jobs()
    assert (job["state"], job["attempts"]) == ("done", attempts)
    assert frame_count(d.output / name) == frame_count(src)


def _targets(d: Daemon) -> dict[str, str]:
    """Each output's name and the target its audit record says did the work."""
    out = {}
    for row in d.audits():
        record = json.loads(row["record"])
        out[Path(record["output"]["path"]).name] = record["target"]
    return out


def test_files_are_protected_once_on_the_cluster_as_they_are_locally(
    cluster_daemon: Daemon, ray_cluster: RayCluster, clip10: Path, long_video: Path, models_dir: Path, tmp_path: Path
) -> None:
    ray_cluster.start()
    d = cluster_daemon
    d.start()
    inputs = {"short.mp4": clip10, "photo.jpg": media("city.jpg"), "long.mp4": long_video}
    for name, src in inputs.items():
        d.drop(src, name)
    d.wait_idle(timeout=CLUSTER_TIMEOUT)

    assert regular_files(d.output) == ["long.mp4", "photo.jpg", "short.mp4"]
    jobs = d.jobs()
    assert sorted((j["name"], j["state"], j["attempts"]) for j in jobs) == [
        ("long.mp4", "done", 1),
        ("photo.jpg", "done", 1),
        ("short.mp4", "done", 1),
    ]
    targets = _targets(d)
    assert all("on the cluster" in t for t in targets.values()), targets
    # The long video went out in 1 s segments to both worker nodes and came back as one file.
    assert "(20 segments on 2 nodes)" in targets["long.mp4"], targets
    assert "connected to the cluster" in d.log()

    os.environ["EDGEGUARD_MODELS_DIR"] = str(models_dir)
    try:
        local = Engine(load_config(d.cfg_path))
    finally:
        del os.environ["EDGEGUARD_MODELS_DIR"]
    for name in ("short.mp4", "long.mp4"):
        here = tmp_path / f"local-{name}"
        local.protect_file(inputs[name], here)
        codec, times, audio = _video(d.output / name)
        assert (codec, times, audio) == _video(here), name
        assert frame_count(d.output / name) == frame_count(inputs[name]) == frame_count(here)
    assert _video(d.output / "long.mp4")[2] > 900  # the tone's AAC packets, all of them
    assert_clean(d)
    assert d.terminate(timeout=30) == 0


def test_a_worker_node_killed_mid_file_loses_nothing_and_doubles_nothing(
    cluster_daemon: Daemon, ray_cluster: RayCluster, long_video: Path, tmp_path: Path
) -> None:
    ray_cluster.start()
    d = cluster_daemon
    d.start()
    d.drop(long_video, "long.mp4")
    # Mid-file: the segments are out on both nodes.
    wait_until(lambda: "connected to the cluster" in d.log(), 120, "the daemon to reach the cluster", 0.1, d.log_tail)
    _mid_file(d)
    ray_cluster.kill_worker(0)
    d.wait_idle(timeout=CLUSTER_TIMEOUT)

    _done_once(d, "long.mp4", long_video)
    assert "during piece" in d.log() and "sending piece" in d.log()
    assert_clean(d)
    d.assert_alive()
    # And the node that is left keeps working.
    d.drop(retitled(long_video, tmp_path / "again.mp4", "again"))
    d.wait_idle(timeout=CLUSTER_TIMEOUT)
    assert "(20 segments on 1 node)" in _targets(d)["again.mp4"]
    assert d.terminate(timeout=30) == 0


def _pids(matches: Callable[[bytes], bool]) -> list[int]:
    """PIDs of every process on this machine whose command line `matches`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if entry.name.isdigit() and matches(cmdline):
            found.append(int(entry.name))
    return found


def _actors() -> list[int]:
    """PIDs of the cluster's actors (Ray names their processes after the class)."""
    return _pids(lambda cmdline: cmdline.startswith(b"ray::Protector"))


def test_an_actor_that_stops_mid_piece_is_killed_and_its_piece_done_elsewhere(
    cluster_daemon: Daemon, ray_cluster: RayCluster, long_video: Path
) -> None:
    # It used to hold the file until the daemon's file_timeout: the bridge kept reporting progress.
    ray_cluster.start()
    d = cluster_daemon
    d.configure(cluster={"stall_timeout": 8.0})
    d.start()
    d.drop(long_video, "long.mp4")
    _mid_file(d)
    actors = _actors()
    assert len(actors) == 2, actors
    os.kill(actors[0], signal.SIGSTOP)  # hung as a stuck native call would be: no answer, no exit
    try:
        d.wait_idle(timeout=CLUSTER_TIMEOUT)
        _done_once(d, "long.mp4", long_video)
        assert d.log().count("handed on no frame for 8 s during piece") == 1, "a working actor was killed too"
        assert "sending piece" in d.log()
        wait_until(lambda: actors[0] not in _actors(), 30, "the stopped actor to be killed", 0.2, d.log_tail)
        assert actors[1] in _actors(), "the actor that kept working was killed"
        assert_clean(d)
        d.assert_alive()
        assert d.terminate(timeout=30) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(actors[0], signal.SIGCONT)


def _bridges() -> list[int]:
    """PIDs of every cluster bridge (the daemons' Ray drivers) running on this machine."""
    return _pids(lambda cmdline: b"edgeguard.cluster.bridge" in cmdline)


def test_the_daemon_killed_mid_file_leaves_no_driver_and_the_file_ends_once(
    cluster_daemon: Daemon, ray_cluster: RayCluster, long_video: Path
) -> None:
    ray_cluster.start()
    d = cluster_daemon
    d.start()
    d.drop(long_video, "long.mp4")
    _mid_file(d)
    assert len(_bridges()) == 1
    d.kill()  # SIGKILL: no handler runs, the bridge is not told
    wait_until(lambda: not _bridges(), 10, "the bridge to die with its daemon")
    d.start()
    d.wait_idle(timeout=CLUSTER_TIMEOUT)

    _done_once(d, "long.mp4", long_video, 2)
    assert "(20 segments on 2 nodes)" in _targets(d)["long.mp4"]
    assert_clean(d)  # no piece or partial output of the killed run is left in work
    assert d.terminate(timeout=30) == 0
    assert not _bridges()


def test_without_the_cluster_prefer_protects_here(
    cluster_daemon: Daemon, ray_cluster: RayCluster, clip10: Path, clips: Clips
) -> None:
    ray_cluster.start()
    d = cluster_daemon
    d.start()
    d.drop(clip10, "first.mp4")
    d.wait_idle(timeout=CLUSTER_TIMEOUT)
    ray_cluster.stop()  # the whole cluster gone, head included
    other = clips.clip(10, 10)
    d.drop(other, "second.mp4")
    d.wait_idle(timeout=CLUSTER_TIMEOUT)

    assert regular_files(d.output) == ["first.mp4", "second.mp4"]
    targets = _targets(d)
    assert "on the cluster" in targets["first.mp4"]
    assert "on the cluster" not in targets["second.mp4"]
    assert any("second.mp4 on this machine" in line for line in d.log().splitlines())
    assert frame_count(d.output / "second.mp4") == frame_count(other)
    assert_clean(d)
    assert d.terminate(timeout=30) == 0


def test_the_whole_cluster_gone_mid_file_prefer_finishes_it_here(
    cluster_daemon: Daemon, ray_cluster: RayCluster, long_video: Path
) -> None:
    ray_cluster.start()
    d = cluster_daemon
    d.start()
    d.drop(long_video, "long.mp4")
    _mid_file(d)
    ray_cluster.stop()  # head and workers, mid-file
    d.wait_idle(timeout=CLUSTER_TIMEOUT)

    _done_once(d, "long.mp4", long_video)
    assert "on the cluster" not in _targets(d)["long.mp4"]
    assert any("long.mp4 on this machine" in line for line in d.log().splitlines())
    assert_clean(d)
    assert d.terminate(timeout=30) == 0


def test_without_the_cluster_only_pauses_and_resumes_when_it_returns(
    cluster_daemon: Daemon, ray_cluster: RayCluster, clip10: Path
) -> None:
    d = cluster_daemon
    d.configure(cluster={"mode": "only"})
    d.start()  # no cluster yet: the daemon starts all the same, and waits for it
    mark = d.mark()
    d.drop(clip10, "waits.mp4")
    d.wait_field("STATUS", "paused: cluster unavailable", since=mark, timeout=60)
    time.sleep(3)  # several retries (pause_seconds 1) while it is away
    assert regular_files(d.output) == []
    # Each retry counts an attempt while it runs (as any run does, in case it crashes) and gives
    # it back when the cluster is found away: between retries the job waits with none counted.
    [job] = wait_until(
        lambda: [j for j in d.jobs() if j["state"] == "queued"], 10, lambda: f"the job between retries: {d.jobs()}"
    )
    assert job["attempts"] == 0  # waiting is not a failed attempt
    assert regular_files(d.failed) == []

    ray_cluster.start()
    d.wait_idle(timeout=CLUSTER_TIMEOUT)
    assert regular_files(d.output) == ["waits.mp4"]
    assert "on the cluster" in _targets(d)["waits.mp4"]
    assert frame_count(d.output / "waits.mp4") == frame_count(clip10)
    assert_clean(d)
    assert d.terminate(timeout=30) == 0


def _doctor(d: Daemon) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeguard", "doctor", "-c", str(d.cfg_path)],
        env=d.env(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_doctor_reports_the_nodes_their_versions_and_the_model_they_received(
    cluster_daemon: Daemon, ray_cluster: RayCluster, clip10: Path
) -> None:
    import ray

    ray_cluster.start()
    d = cluster_daemon
    d.start()
    d.drop(clip10)
    d.wait_idle(timeout=CLUSTER_TIMEOUT)  # the daemon's actors now hold every worker's CPU
    started = time.monotonic()
    done = _doctor(d)
    assert done.returncode == 0, done.stdout + done.stderr
    assert time.monotonic() - started < 60  # it looks beside the actors, never waits for their CPUs
    lines = done.stdout.splitlines()
    assert any(line.startswith("ok   cluster") and "3 nodes, room for 2 actors (mode prefer)" in line for line in lines)
    workers = [line for line in lines if line.startswith("ok   node ")]
    assert len(workers) == 2, lines
    for line in workers:
        assert f"edgeguard {__version__}, Ray {ray.__version__}, room for 1 actor(s)" in line
        assert "model yolox_nano received, sha256 verified" in line
    # The head has no CPU: no room for an actor there, and that is no failure.
    assert any(line.startswith("--   node ") and "no room for an actor (0 CPUs" in line for line in lines), lines
    assert d.terminate(timeout=30) == 0

    ray_cluster.stop()
    d.configure(cluster={"mode": "only"})
    done = _doctor(d)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "FAIL cluster" in done.stdout and "cannot reach the Ray head" in done.stdout


def vp8_clip(src: Path, dst: Path) -> Path:
    """`src`'s frames as VP8 in WebM, a keyframe every 25: cuttable at keyframes, but not into MP4 pieces."""
    with av.open(os.fspath(src)) as inp, av.open(os.fspath(dst), "w") as out:
        v = out.add_stream("libvpx", rate=25)
        v.width, v.height, v.pix_fmt = 480, 360, "yuv420p"
        v.options = {"g": "25", "keyint_min": "25", "deadline": "realtime", "cpu-used": "8"}
        for frame in inp.decode(video=0):
            picture = frame.reformat(width=480, height=360, format="yuv420p")
            picture.pts, picture.time_base = frame.pts, inp.streams.video[0].time_base
            out.mux(v.encode(picture))
        out.mux(v.encode(None))
    return dst


def test_bad_inputs_fail_with_their_reason_and_keep_the_cluster(
    cluster_daemon: Daemon, ray_cluster: RayCluster, clip10: Path, long_video: Path, tmp_path: Path
) -> None:
    ray_cluster.start()
    d = cluster_daemon
    d.start()
    data = long_video.read_bytes()
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "truncated.mp4").write_bytes(data[: len(data) // 2])  # no index: the cluster cannot read it
    # Seeded: about 1 in 100 draws of random bytes is a stream FFmpeg opens (then refused otherwise).
    (stage / "random.mp4").write_bytes(random.Random(0).randbytes(100_000))
    for name in ("truncated.mp4", "random.mp4"):
        os.rename(stage / name, d.incoming / name)
    d.drop(vp8_clip(long_video, tmp_path / "cam.webm"))  # 20 GOPs of VP8: protected whole
    d.drop(clip10, "good.mp4")
    d.wait_idle(timeout=CLUSTER_TIMEOUT)

    assert regular_files(d.output) == ["cam.mp4", "good.mp4"]
    assert sorted(regular_files(d.failed)) == [
        "random.mp4",
        "random.mp4.error.json",
        "truncated.mp4",
        "truncated.mp4.error.json",
    ]
    for name in ("random.mp4", "truncated.mp4"):
        assert "not a readable media file" in d.error_report(name)["reason"]
    targets = _targets(d)
    assert "on the cluster (1 segment on 1 node)" in targets["cam.mp4"], targets
    assert frame_count(d.output / "cam.mp4") == frame_count(long_video)
    assert "on the cluster" in targets["good.mp4"]
    # A bad file is the file's fault: the same driver and actors served every file.
    assert d.log().count("connected to the cluster") == 1
    assert "cluster unavailable" not in d.log()
    assert_clean(d)
    assert d.terminate(timeout=30) == 0


def test_a_reload_turns_the_cluster_on_and_off(cluster_daemon: Daemon, ray_cluster: RayCluster, clips: Clips) -> None:
    ray_cluster.start()
    d = cluster_daemon
    address = d.settings["cluster"]["address"]
    d.configure(cluster={"address": ""})
    d.start()
    d.drop(clips.clip(0, 10), "one.mp4")
    d.wait_idle(timeout=CLUSTER_TIMEOUT)
    for step, (value, name) in enumerate(((address, "two.mp4"), ("", "three.mp4"))):
        d.configure(cluster={"address": value})
        mark = d.mark()
        d.hup()
        d.wait_field("READY", "1", since=mark, timeout=60)
        d.drop(clips.clip(10 * (step + 1), 10), name)
        d.wait_idle(timeout=CLUSTER_TIMEOUT)
    targets = _targets(d)
    assert "on the cluster" not in targets["one.mp4"]
    assert "on the cluster" in targets["two.mp4"]
    assert "on the cluster" not in targets["three.mp4"]
    assert_clean(d)
    assert d.terminate(timeout=30) == 0
