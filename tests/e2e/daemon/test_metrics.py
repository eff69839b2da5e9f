"""The metrics file of the real daemon, parsed the way node_exporter's textfile collector reads it."""

from __future__ import annotations

import os
from pathlib import Path

from edgeguard import __version__
from tests.conftest import media
from tests.e2e.daemon.conftest import Daemon, frame_count, wait_until
from tests.support.prom import Samples, samples

FILE = "edgeguard.prom"


def test_files_frames_queue_and_pauses_reach_the_textfile(daemon: Daemon, clip10: Path, tmp_path: Path) -> None:
    d = daemon
    folder = tmp_path / "textfile_collector"
    folder.mkdir()
    prom = folder / FILE
    d.configure(metrics={"folder": str(folder)})
    d.start()
    # Written once the daemon is up, before any file: a scrape sees it alive and idle.
    wait_until(prom.exists, 10, "the metrics file", 0.05, d.log_tail)
    first = samples(prom)
    assert first[("edgeguard_files_total", (("outcome", "done"),))] == 0
    assert first[("edgeguard_info", (("model", "yolox_nano"), ("target", "cpu"), ("version", __version__)))] == 1

    d.drop(media("city.jpg"))
    d.drop(clip10, "clip.mp4")
    (d.incoming / "bad.mp4").write_bytes(b"not a video")
    d.wait_states({"done": 2, "failed": 1})
    d.wait_idle()

    def settled() -> Samples | None:
        got = samples(prom)
        return got if got[("edgeguard_file_seconds_count", ())] == 3 else None

    got = wait_until(settled, 10, "three files in the metrics", 0.1, d.log_tail)
    assert got[("edgeguard_files_total", (("outcome", "done"),))] == 2
    assert got[("edgeguard_files_total", (("outcome", "failed"),))] == 1
    assert got[("edgeguard_files_failed_total", (("stage", "probe"),))] == 1
    frames = frame_count(d.output / "clip.mp4") + 1
    assert got[("edgeguard_frames_total", ())] == frames == 11
    assert 2 <= got[("edgeguard_keyframes_total", ())] <= frames
    assert got[("edgeguard_last_success_timestamp_seconds", ())] > 0
    assert got[("edgeguard_queue_files", ())] == 0 and got[("edgeguard_processing", ())] == 0
    assert got[("edgeguard_paused", (("reason", "output"),))] == 0
    assert os.listdir(folder) == [FILE], "a temporary was left beside the metrics"

    # Short of disk: the pause and the waiting file show up.
    free_mb = os.statvfs(d.output).f_bavail * os.statvfs(d.output).f_frsize >> 20
    d.configure(metrics={"folder": str(folder)}, daemon={"min_free_mb": free_mb + 100_000, "pause_seconds": 30.0})
    hup = d.mark()
    d.hup()
    d.wait_ready(d.wait_field("RELOADING", "1", hup))
    d.drop(media("000000038829.jpg"))

    def paused() -> bool:
        got = samples(prom)
        return got[("edgeguard_paused", (("reason", "output"),))] == 1 and got[("edgeguard_queue_files", ())] == 1

    wait_until(paused, 15, "the pause and the waiting file in the metrics", 0.1, d.log_tail)
    assert d.terminate(timeout=15) == 0
