"""A real Ray cluster on this machine (a head and two worker nodes of one CPU each), and clips to cut.

The head has no CPU, as on a gateway that is the head: every actor runs on a worker node. Fast
health checks make a killed node known in about a second instead of sixteen. Token auth is off
(RAY_AUTH_MODE), so Ray writes nothing under $HOME; its files live in a short temporary folder
(its socket paths must fit in 108 bytes).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from tests.conftest import media
from tests.e2e.daemon.conftest import Daemon, clip10, clips  # noqa: F401 - fixtures shared with the daemon tests

pytest.importorskip("ray", reason="the cluster extra: pip install -e '.[cluster]' (make setup installs it)")

HEALTH = {
    "health_check_period_ms": 500,
    "health_check_failure_threshold": 2,
    "health_check_initial_delay_ms": 0,
    "health_check_timeout_ms": 500,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RayCluster:
    """A head (no CPU) and worker nodes, started and stopped at will on one GCS port."""

    def __init__(self, temp: Path) -> None:
        self.temp = temp
        self.port = free_port()
        self.host = ""
        self.cluster: Any = None
        self.workers: list[Any] = []

    @property
    def address(self) -> str:
        """The head's GCS, at the address Ray gives this machine (as `ray start --head` prints it)."""
        if not self.host:
            from ray.util import get_node_ip_address

            self.host = get_node_ip_address()
        return f"{self.host}:{self.port}"

    def start(self, workers: int = 2) -> None:
        from ray.cluster_utils import Cluster

        (self.temp / "ray").mkdir(parents=True, exist_ok=True)  # Cluster writes ray_current_cluster there
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 0,
                "gcs_server_port": self.port,
                "temp_dir": str(self.temp),
                "_system_config": HEALTH,
            },
        )
        self.workers = [self.cluster.add_node(num_cpus=1) for _ in range(workers)]
        self.cluster.wait_for_nodes()
        assert self.cluster.address == self.address, (self.cluster.address, self.address)

    def kill_worker(self, k: int) -> None:
        """Kill worker node `k` at once (its raylet and processes), as a pulled cable or a crash would."""
        self.cluster.remove_node(self.workers[k], allow_graceful=False)

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.shutdown()
            self.cluster = None


@pytest.fixture
def ray_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[RayCluster]:
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_TMPDIR", str(temp))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    cluster = RayCluster(temp)
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def cluster_daemon(tmp_path: Path, models_dir: Path, ray_cluster: RayCluster) -> Iterator[Daemon]:
    """A daemon configured for `ray_cluster` (started by the test, which starts the cluster as it needs)."""
    d = Daemon(tmp_path / "eg", models_dir)
    d.configure(
        cluster={
            "address": ray_cluster.address,
            "segment_seconds": 1.0,
            "connect_timeout": 3.0,
            "silence_timeout": 30.0,
            "retry_seconds": 0.0,
        }
    )
    try:
        yield d
    finally:
        d.close()


def gop_clip(dst: Path, *, frames: int, gop: int, fps: int = 25, source: str = "vtest.avi") -> Path:
    """`frames` frames of a shared video at 480x360, a keyframe every `gop`, with a tone as AAC audio."""
    if dst.exists():
        return dst
    tmp = dst.with_name(f".{dst.name}.tmp.mp4")
    with av.open(os.fspath(media(source))) as inp, av.open(os.fspath(tmp), "w") as out:
        vout = out.add_stream("libx264", rate=fps)
        vout.width, vout.height, vout.pix_fmt = 480, 360, "yuv420p"
        vout.options = {"preset": "ultrafast", "g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"}
        aout = out.add_stream("aac", rate=48000)
        aout.layout = "mono"
        tb = Fraction(1, fps)
        written = 0
        for frame in inp.decode(video=0):
            if written == frames:
                break
            picture = frame.reformat(width=480, height=360, format="yuv420p")
            picture.pts, picture.time_base = written, tb
            out.mux(vout.encode(picture))
            written += 1
        out.mux(vout.encode(None))
        samples = np.sin(np.arange(48000 * frames // fps) * 2 * np.pi * 440 / 48000).astype(np.float32)
        for start in range(0, len(samples), 1024):
            chunk = av.AudioFrame.from_ndarray(samples[None, start : start + 1024], format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts = 48000, start
            out.mux(aout.encode(chunk))
        out.mux(aout.encode(None))
    assert written == frames
    tmp.rename(dst)
    return dst


@pytest.fixture(scope="session")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 s of vtest at 25 fps, a keyframe every second, with audio: 20 segments of 1 s."""
    return gop_clip(tmp_path_factory.mktemp("cluster") / "long.mp4", frames=500, gop=25)


def retitled(src: Path, dst: Path, title: str) -> Path:
    """`src` remuxed with a title tag: the same frames in other bytes (not a duplicate to the daemon)."""
    with av.open(os.fspath(src)) as inp, av.open(os.fspath(dst), "w") as out:
        out.metadata["title"] = title
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        for packet in inp.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
    return dst
