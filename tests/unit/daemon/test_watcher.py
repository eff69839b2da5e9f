"""Arrivals: when a file in incoming has fully arrived (unit tests with a fake clock, plus real inotify)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from edgeguard.config import WatchConfig
from edgeguard.daemon.watcher import MAX_NAME_BYTES, Arrivals, Seen

SETTLE = 2.0
RESCAN = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def arrivals(folder: Path, clock: Clock, **watch: object) -> Arrivals:
    cfg = WatchConfig.model_validate({"settle_seconds": SETTLE, "rescan_seconds": RESCAN, **watch})
    return Arrivals(folder, cfg, clock=clock)


def at(a: Arrivals, clock: Clock, t: float) -> list[str]:
    clock.now = 1000.0 + t
    return [p.name for p in a.settled()]


def test_patterns_and_ignores_are_case_insensitive(tmp_path: Path, clock: Clock) -> None:
    a = arrivals(tmp_path, clock)
    for name in ("a.mp4", "B.MP4", "c.Mov", "d.JPEG", "e.webp", "f.TS"):
        assert a.wanted(name), name
    for name in (
        "notes.txt",
        "a.mp4.bak",
        ".hidden.mp4",
        "up.mp4.part",
        "UP.MP4.PART",
        "x.mp4.Tmp",
        "y.mp4.crdownload",
        "z.mp4~",
        "mp4",
    ):
        assert not a.wanted(name), name
    custom = arrivals(tmp_path, clock, patterns=["CAM*.MOV"], ignore=["*secret*"])
    assert custom.wanted("cam1.mov") and custom.wanted("Cam2.MOV")
    assert not custom.wanted("cam-SECRET.mov"), "ignore wins over patterns"
    assert not custom.wanted("other.mov") and not custom.wanted("cam1.mp4")


def test_a_file_settles_once_size_and_mtime_hold_still(tmp_path: Path, clock: Clock) -> None:
    f = tmp_path / "a.mp4"
    f.write_bytes(b"x" * 100)
    a = arrivals(tmp_path, clock)
    assert at(a, clock, 0.0) == [], "first seen now"
    assert a.pending() == 1
    assert at(a, clock, SETTLE - 0.01) == []
    assert at(a, clock, SETTLE) == ["a.mp4"]
    # Growing again: the clock restarts.
    with f.open("ab") as w:
        w.write(b"y")
    assert at(a, clock, 3.0) == []
    assert at(a, clock, 3.0 + SETTLE - 0.01) == []
    assert at(a, clock, 3.0 + SETTLE) == ["a.mp4"]
    # Same size, new mtime (rewritten in place): the clock restarts too.
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert at(a, clock, 10.0) == []
    assert at(a, clock, 10.0 + SETTLE) == ["a.mp4"]


def test_unchanged_files_are_looked_at_again_without_events(tmp_path: Path, clock: Clock) -> None:
    a = arrivals(tmp_path, clock)
    assert at(a, clock, 0.0) == []  # the first call rescans the (empty) folder
    (tmp_path / "b.mp4").write_bytes(b"b")
    (tmp_path / "c.mp4").write_bytes(b"c")
    a.note("b.mp4", 0)  # an inotify event names b; c only shows up at the next rescan
    assert at(a, clock, 1.0) == []
    assert a.pending() == 1
    assert at(a, clock, 1.0 + SETTLE) == ["b.mp4"]
    assert at(a, clock, RESCAN) == ["b.mp4"]  # rescan: c first seen now
    assert a.pending() == 2
    assert at(a, clock, RESCAN + SETTLE) == ["b.mp4", "c.mp4"], "oldest first"


def test_an_open_writer_blocks_settling(tmp_path: Path, clock: Clock) -> None:
    f = tmp_path / "a.mp4"
    f.write_bytes(b"x")
    a = arrivals(tmp_path, clock)
    a.note("a.mp4", +1)  # opened for writing (a camera pauses between chunks)
    assert at(a, clock, 0.0) == []
    assert at(a, clock, 100.0) == [], "taken while a writer still has it open"
    a.note("a.mp4", +1)  # a second descriptor
    a.note("a.mp4", -1)
    assert at(a, clock, 200.0) == []
    a.note("a.mp4", -1)  # the last close
    assert at(a, clock, 300.0) == [], "settle time counts from the close"
    assert at(a, clock, 300.0 + SETTLE) == ["a.mp4"]
    # An open and its close seen in one look leave it settled (nothing changed).
    a.note("a.mp4", +1)
    a.note("a.mp4", -1)
    assert at(a, clock, 400.0) == ["a.mp4"]


def test_more_closes_than_opens_do_not_unblock_a_later_writer(tmp_path: Path, clock: Clock) -> None:
    """A file opened before the watch started gives a close without an open: the count stays >= 0."""
    (tmp_path / "a.mp4").write_bytes(b"x")
    a = arrivals(tmp_path, clock)
    a.note("a.mp4", -1)
    assert at(a, clock, 0.0) == []
    a.note("a.mp4", +1)
    assert at(a, clock, 50.0) == [], "a writer that opened after the stray close still blocks"


def test_part_uploads_are_ignored_until_renamed(tmp_path: Path, clock: Clock) -> None:
    part = tmp_path / "a.mp4.part"
    part.write_bytes(b"x" * 10)
    a = arrivals(tmp_path, clock)
    assert at(a, clock, 0.0) == []
    assert at(a, clock, 100.0) == []
    assert a.pending() == 0
    part.rename(tmp_path / "a.mp4")
    a.note("a.mp4", 0)  # the moved event names the new name
    assert at(a, clock, 101.0) == [], "a renamed file settles from when it appeared, not from its old mtime"
    assert at(a, clock, 101.0 + SETTLE) == ["a.mp4"]


def test_non_regular_files_are_skipped_never_opened_and_reported_once(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path.parent / f"{tmp_path.name}-target.mp4"
    target.write_bytes(b"target")
    os.symlink(target, tmp_path / "link.mp4")
    os.mkfifo(tmp_path / "fifo.mp4")  # opening this for reading would block forever
    (tmp_path / "dir.mp4").mkdir()
    (tmp_path / "good.mp4").write_bytes(b"good")
    a = arrivals(tmp_path, clock)
    with caplog.at_level(logging.WARNING, logger="edgeguard.daemon.watcher"):
        for t in (0.0, SETTLE, RESCAN, RESCAN * 2 + SETTLE):
            for name in ("link.mp4", "fifo.mp4", "dir.mp4"):
                a.note(name, 0)
            assert at(a, clock, t) == ([] if t == 0.0 else ["good.mp4"])
    messages = [r.getMessage() for r in caplog.records]
    for name, kind in (("link.mp4", "symlink"), ("fifo.mp4", "special file"), ("dir.mp4", "directory")):
        assert sum(f"{name}: skipped: a {kind}" in m for m in messages) == 1, messages
    assert target.read_bytes() == b"target"
    # Replaced by a regular file of the same name: taken normally.
    (tmp_path / "link.mp4").unlink()
    (tmp_path / "link.mp4").write_bytes(b"now a file")
    a.note("link.mp4", 0)
    at(a, clock, 200.0)
    assert "link.mp4" in at(a, clock, 200.0 + SETTLE)


def test_a_vanished_file_is_forgotten(tmp_path: Path, clock: Clock) -> None:
    f = tmp_path / "a.mp4"
    f.write_bytes(b"x")
    a = arrivals(tmp_path, clock)
    at(a, clock, 0.0)
    assert at(a, clock, SETTLE) == ["a.mp4"]
    f.unlink()  # claimed by the worker
    assert at(a, clock, SETTLE + 0.1) == []
    assert a.pending() == 0
    f.write_bytes(b"again")  # the same name arrives again later
    a.note("a.mp4", 0)
    assert at(a, clock, 10.0) == []
    assert at(a, clock, 10.0 + SETTLE) == ["a.mp4"]


# ------------------------------------------------------------------ real inotify


def _poll(a: Arrivals, seconds: float) -> list[str]:
    """Call settled() the way the daemon's main loop does, for `seconds`; the names seen."""
    seen: list[str] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        seen += [p.name for p in a.settled() if p.name not in seen]
        time.sleep(0.05)
    return seen


def test_real_events_writer_open_and_part_rename(tmp_path: Path) -> None:
    a = Arrivals(tmp_path, WatchConfig(settle_seconds=0.3, rescan_seconds=60.0))
    a.start()
    try:
        assert _poll(a, 0.2) == []
        with (tmp_path / "open.mp4").open("wb") as w:
            w.write(b"x" * 1000)
            w.flush()
            # Idle for several settle times with the file open: not taken.
            assert _poll(a, 1.2) == []
            (tmp_path / "up.mp4.part").write_bytes(b"y" * 1000)
            assert _poll(a, 0.6) == []
            (tmp_path / "up.mp4.part").rename(tmp_path / "up.mp4")
            assert _poll(a, 0.8) == ["up.mp4"], "the renamed upload is found by its event, not a rescan"
        assert _poll(a, 1.0) == ["up.mp4", "open.mp4"], "open.mp4 settles once closed"
    finally:
        a.stop()


def test_names_the_daemon_cannot_carry_are_skipped_and_reported_once(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """Too long for the work folder's prefixed name, or not UTF-8 (the ledger refuses it): skipped, not retried."""
    longest = "a" * (MAX_NAME_BYTES - 4) + ".mp4"
    too_long = "b" * (MAX_NAME_BYTES - 3) + ".mp4"
    not_utf8 = os.fsdecode(b"cam\xff\xfe.mp4")
    for name in (longest, too_long, not_utf8):
        (tmp_path / name).write_bytes(b"x")
    a = arrivals(tmp_path, clock)
    with caplog.at_level(logging.WARNING, logger="edgeguard.daemon.watcher"):
        assert at(a, clock, 0.0) == []
        assert at(a, clock, SETTLE) == [longest]
        assert at(a, clock, RESCAN + SETTLE) == [longest]
    messages = [r.getMessage() for r in caplog.records]
    assert sum(f"{MAX_NAME_BYTES + 1} bytes long" in m for m in messages) == 1, messages
    assert sum("not valid UTF-8" in m for m in messages) == 1, messages


def test_a_held_file_waits_until_it_changes_or_its_time_comes(tmp_path: Path, clock: Clock) -> None:
    """Refused (unreadable) or given back (cut short): not offered again and again ahead of the rest."""
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    a.write_bytes(b"x" * 10)
    b.write_bytes(b"y" * 10)
    w = arrivals(tmp_path, clock)
    at(w, clock, 0.0)
    assert at(w, clock, SETTLE) == ["a.mp4", "b.mp4"]
    w.hold("a.mp4", "cannot open: Permission denied")
    assert at(w, clock, SETTLE + 100) == ["b.mp4"]
    a.chmod(0o600)  # fixed: ctime moves, it is looked at again after settling
    assert at(w, clock, SETTLE + 101) == ["b.mp4"]
    assert at(w, clock, SETTLE * 2 + 101) == ["b.mp4", "a.mp4"], "oldest settled first"
    # Held until a time (a video cut short, waiting for its writer): offered again then.
    w.hold("b.mp4", "cut short", until=time.time() + 0.3)
    assert at(w, clock, 200) == ["a.mp4"]
    time.sleep(0.35)
    assert sorted(at(w, clock, 201)) == ["a.mp4", "b.mp4"]
    w.unsettle("a.mp4")
    assert at(w, clock, 201) == ["b.mp4"]


def test_a_file_changed_while_it_was_judged_is_not_held(tmp_path: Path, clock: Clock) -> None:
    """A writer that appends while the daemon reads a cut-short file has already made the change
    the hold waits for: the file is taken again once it settles, not held until `until`."""
    a = tmp_path / "a.mp4"
    a.write_bytes(b"x" * 10)
    w = arrivals(tmp_path, clock)
    at(w, clock, 0.0)
    assert at(w, clock, SETTLE) == ["a.mp4"]
    judged = Seen.of(a.stat(), ctime=False)
    with a.open("ab") as f:  # the writer's next chunk lands before the verdict reaches arrivals
        f.write(b"y" * 10)
    w.hold("a.mp4", "cut short", until=time.time() + 300, seen=judged)
    assert at(w, clock, SETTLE + 1) == [], "not before it settles"
    assert at(w, clock, SETTLE * 2 + 1) == ["a.mp4"], "held for a change that had already come"
    # Unchanged since it was judged: held as before.
    w.hold("a.mp4", "cut short", until=time.time() + 300, seen=Seen.of(a.stat(), ctime=False))
    assert at(w, clock, SETTLE * 3 + 1) == []


def test_a_file_replaced_or_fixed_while_it_was_refused_is_not_held(tmp_path: Path, clock: Clock) -> None:
    """The same bytes and mtime under the name, but another file (an upload renamed over it), or
    the same file with its permissions fixed (only ctime moves): neither is what was refused."""
    a = tmp_path / "a.mp4"
    a.write_bytes(b"x" * 10)
    w = arrivals(tmp_path, clock)
    at(w, clock, 0.0)
    refused = Seen.of(a.stat())
    again = tmp_path / "a.mp4.upload"
    again.write_bytes(b"x" * 10)
    os.utime(again, ns=(refused.mtime_ns, refused.mtime_ns))
    os.rename(again, a)
    w.hold("a.mp4", "cannot open: Permission denied", seen=refused)
    assert at(w, clock, SETTLE * 2) == ["a.mp4"], "another file held for the one refused"
    refused = Seen.of(a.stat())
    a.chmod(0o604)
    w.hold("a.mp4", "cannot open: Permission denied", seen=refused)
    assert at(w, clock, SETTLE * 4) == ["a.mp4"], "held although its permissions were fixed meanwhile"
    w.hold("a.mp4", "cannot open: Permission denied", seen=Seen.of(a.stat()))
    assert at(w, clock, SETTLE * 6) == [], "unchanged since refused: held"
