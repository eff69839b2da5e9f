"""The metrics file: what the events make of it, how it is written, and how often."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from edgeguard import __version__
from edgeguard.daemon import events as E
from edgeguard.daemon.metrics import FILE, Metrics
from tests.support.prom import samples


def test_events_become_counts_gauges_and_histograms(tmp_path: Path) -> None:
    m = Metrics()
    m.configure(tmp_path, "yolox_nano", "cpu")
    m.on_event(E.Started("a.mp4", 1))
    m.on_event(E.Finished("a.mp4", "done", 0, report=E.FileReport(4.0, None, 100, 10, 25.0, 0.2)))
    m.on_event(E.Finished("b.mp4", "failed", 0, report=E.FileReport(0.5, "probe")))
    m.on_event(E.Finished("c.mp4", "rolled back", 1))
    m.on_event(E.Finished(None, "idle", 0))  # not a file
    m.tick(100.0, queue=3, busy=False, paused="output")
    got = samples(tmp_path / FILE)

    assert got[("edgeguard_info", (("model", "yolox_nano"), ("target", "cpu"), ("version", __version__)))] == 1
    assert got[("edgeguard_files_total", (("outcome", "done"),))] == 1
    assert got[("edgeguard_files_total", (("outcome", "failed"),))] == 1
    assert got[("edgeguard_files_total", (("outcome", "duplicate"),))] == 0
    assert got[("edgeguard_files_total", (("outcome", "rolled_back"),))] == 1
    assert not any(labels == (("outcome", "idle"),) for _, labels in got)
    assert got[("edgeguard_files_failed_total", (("stage", "probe"),))] == 1
    assert got[("edgeguard_file_seconds_count", ())] == 2
    assert got[("edgeguard_file_seconds_sum", ())] == 4.5
    assert got[("edgeguard_file_seconds_bucket", (("le", "5.0"),))] == 2
    assert got[("edgeguard_file_seconds_bucket", (("le", "2.0"),))] == 1
    assert got[("edgeguard_frames_total", ())] == 100
    assert got[("edgeguard_keyframes_total", ())] == 10
    assert got[("edgeguard_last_file_fps", ())] == 25.0
    assert got[("edgeguard_last_file_keyframe_share", ())] == 0.1
    assert got[("edgeguard_last_file_hidden_share", ())] == 0.2
    assert got[("edgeguard_file_hidden_share_count", ())] == 1
    assert got[("edgeguard_last_success_timestamp_seconds", ())] > 0
    assert got[("edgeguard_queue_files", ())] == 3
    assert got[("edgeguard_processing", ())] == 0
    assert got[("edgeguard_paused", (("reason", "output"),))] == 1
    assert got[("edgeguard_paused", (("reason", "storage"),))] == 0


def test_written_at_most_once_a_second_and_only_when_something_changed(tmp_path: Path) -> None:
    m = Metrics()
    m.configure(tmp_path, "m", "cpu")
    path = tmp_path / FILE
    m.tick(10.0, queue=0, busy=False, paused=None)
    assert samples(path)[("edgeguard_queue_files", ())] == 0
    path.unlink()
    m.tick(10.5, queue=1, busy=True, paused=None)  # changed, but within the second
    assert not path.exists()
    m.tick(11.0, queue=1, busy=True, paused=None)
    assert samples(path)[("edgeguard_queue_files", ())] == 1
    path.unlink()
    m.tick(20.0, queue=1, busy=True, paused=None)  # nothing changed: not rewritten
    assert not path.exists()


def test_world_readable_whatever_the_umask_and_no_temporary_left(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        m = Metrics()
        m.configure(tmp_path, "m", "cpu")
        m.tick(1.0, queue=0, busy=False, paused=None)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / FILE).stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == [FILE]


def test_an_unwritable_folder_is_said_once_and_nothing_breaks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    m = Metrics()
    m.configure(tmp_path / "gone", "m", "cpu")
    with caplog.at_level(logging.ERROR):
        for t in range(5):
            m.tick(float(t * 2), queue=t, busy=False, paused=None)
    assert [r.getMessage() for r in caplog.records if "metrics" in r.getMessage()] == [
        f"cannot write metrics into {tmp_path / 'gone'}: No such file or directory"
    ]


def test_no_folder_keeps_them_in_memory(tmp_path: Path) -> None:
    m = Metrics()
    m.configure(None, "m", "cpu")
    m.tick(1.0, queue=0, busy=False, paused=None)
    assert os.listdir(tmp_path) == []
