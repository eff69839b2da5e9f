"""A hostile incoming folder: the real daemon against writers, links, races and broken surroundings.

The incoming folder is written by other users and programs. Whatever they do
(write slowly, come back to a file, swap a symlink in, hard-link a file they
keep elsewhere), no short or foreign output may be published, no valid file may
be failed for it, and the daemon must stay up and responsive.
"""

from __future__ import annotations

import json
import os
import pwd
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from pathlib import Path
from types import TracebackType

import av
import cv2
import numpy as np
import pytest

from tests.conftest import media
from tests.e2e.daemon.conftest import (
    START_TIMEOUT,
    Clips,
    Daemon,
    faststart,
    frame_count,
    names,
    regular_files,
    remux_video,
    sha256,
    wait_until,
)

SETTLE = 1.0  # watch.settle_seconds of the writer tests
PAUSE = 3.0  # a writer's pause between chunks: longer than SETTLE
# A video cut short is left in incoming this long for its writer to come back (the harness fails it at once).
WRITER_WATCH = {"settle_seconds": SETTLE, "incomplete_seconds": 300.0}
WRITER_FRAMES = 185
ACTIVE = ("claiming", "queued", "processing", "output_done")
UNPRIVILEGED_USER = "egtest"


# ------------------------------------------------------------------ helpers


def pieces(data: bytes, count: int) -> list[bytes]:
    """`data` cut into `count` chunks of about the same size."""
    step = -(-len(data) // count)
    return [data[i : i + step] for i in range(0, len(data), step)]


class Watch:
    """Polls output/ and failed/ in a thread: each output's decoded frame count as it first appeared.

    An output is published whole (by a link or rename), so whatever is seen in
    output/ is what a consumer would have taken; a short one must never be there,
    not even for a moment.
    """

    def __init__(self, d: Daemon) -> None:
        self.d = d
        self._frames: dict[tuple[str, int], int] = {}  # (name, inode) -> frames (-1: does not decode)
        self._failed: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="output-watch", daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(timeout=30)
        self.poll()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            # Only the polling period: outputs are published whole and never taken back, so each
            # one is still there at the next poll and no verdict depends on this length.
            time.sleep(0.05)

    def poll(self) -> None:
        failed = {n for n in names(self.d.failed) if not n.startswith(".")}
        with self._lock:
            self._failed |= failed
        for name in names(self.d.output):
            if name.startswith("."):  # the daemon's own probes, never an output
                continue
            path = self.d.output / name
            try:
                key = (name, path.lstat().st_ino)
            except FileNotFoundError:
                continue
            with self._lock:
                if key in self._frames:
                    continue
            try:
                frames = frame_count(path)
            except FileNotFoundError:
                continue
            except (OSError, ValueError, av.FFmpegError):
                frames = -1
            with self._lock:
                self._frames[key] = frames

    def failed(self) -> list[str]:
        """Every name seen in failed/ so far."""
        with self._lock:
            return sorted(self._failed)

    def short(self, full: int, others: Sequence[str] = ()) -> dict[tuple[str, int], int]:
        """Every output seen so far (but `others`) that did not decode to `full` frames."""
        with self._lock:
            return {k: v for k, v in self._frames.items() if v != full and k[0] not in others}


def assert_processed_once(
    d: Daemon, src: Path, name: str, watch: Watch, timeout: float = 90.0, others: Sequence[str] = ()
) -> None:
    """`src`, arrived as `name`, was published exactly once and whole; nothing failed, no byte lost.

    Run with `daemon.originals: keep`, so the original the daemon took can be
    compared with what the writer meant to write. `others` are files the test
    dropped besides (each done, its output left out of the checks).
    """
    full, digest = frame_count(src), sha256(src)

    def finished() -> bool:
        d.assert_alive()
        if watch.failed():
            pytest.fail(f"landed in failed/: {watch.failed()}\n{d.log_tail()}")
        if watch.short(full, others):
            pytest.fail(f"published short: {watch.short(full, others)} (the file has {full} frames)\n{d.log_tail()}")
        return any(j["state"] == "done" and j["sha256"] == digest for j in d.jobs())

    wait_until(finished, timeout, f"{name} done with the whole file's sha256", 0.1, d.log_tail)
    d.wait_idle(timeout=30)
    watch.stop()
    assert watch.short(full, others) == {}, f"an output with fewer than {full} frames appeared"
    assert names(d.output) == sorted([name, *others])
    assert frame_count(d.output / name) == full
    jobs = d.jobs()
    assert sorted(j["name"] for j in jobs if j["name"] in others and j["state"] == "done") == sorted(others), jobs
    jobs = [j for j in jobs if j["name"] not in others]
    published = [j for j in jobs if j["state"] in ("done", "duplicate")]
    assert [(j["name"], j["sha256"]) for j in published] == [(name, digest)], jobs
    assert not [j for j in jobs if j["state"] == "failed"], jobs
    assert names(d.failed) == [] and watch.failed() == []
    assert sha256(d.processed / name) == digest, "the original kept is not the whole file"
    assert names(d.work) == []


def quiet(d: Daemon, timeout: float = 60.0) -> None:
    """Nothing left for the daemon to take: no regular file in incoming (a claim given back, or a
    file put back under another name, is one), nothing in work, no job in progress."""

    def calm() -> bool:
        d.assert_alive()
        if names(d.work) or regular_files(d.incoming):
            return False
        return not any(j["state"] in ACTIVE for j in d.jobs())

    def what() -> str:
        return f"nothing left to take (incoming {regular_files(d.incoming)}, ledger {d.counts()})"

    wait_until(calm, timeout, what, 0.1, d.log_tail)


def done(d: Daemon, name: str) -> bool:
    """Whether a job for `name` is done."""
    return any(j["name"] == name and j["state"] == "done" for j in d.jobs())


def two_video_streams(src: Path, dst: Path, count: int) -> Path:
    """An MP4 with two H.264 video streams: the first all black, the second `src`'s first `count` frames."""
    with av.open(os.fspath(src)) as inp, av.open(os.fspath(dst), "w") as out:
        vin = inp.streams.video[0]
        ctx = vin.codec_context
        rate = vin.average_rate or Fraction(25)
        streams = []
        for _ in range(2):
            stream = out.add_stream("libx264", rate=rate)
            stream.width, stream.height, stream.pix_fmt = ctx.width, ctx.height, "yuv420p"
            stream.codec_context.time_base = 1 / Fraction(rate)
            stream.options = {"preset": "ultrafast"}
            streams.append(stream)
        black_rgb = np.zeros((ctx.height, ctx.width, 3), dtype=np.uint8)
        written = 0
        for frame in inp.decode(vin):
            if written == count:
                break
            black = av.VideoFrame.from_ndarray(black_rgb, format="rgb24").reformat(format="yuv420p")
            real = frame.reformat(format="yuv420p")
            for stream, picture in zip(streams, (black, real), strict=True):
                picture.pts, picture.time_base = written, stream.codec_context.time_base
                out.mux(stream.encode(picture))
            written += 1
        for stream in streams:
            out.mux(stream.encode(None))
    assert written == count
    return dst


def swap_loop(folder: Path, regulars: dict[str, Path], target: Path, stop: threading.Event, seed: int) -> None:
    """Until `stop`: each name in `folder` alternates between a hard link of its own regular file
    (0.1-0.8 s, longer than a short settle time) and a symlink to `target` (0.01-0.3 s), each
    switch one os.replace; ends with every name a symlink."""
    rng = random.Random(seed)
    now = time.monotonic()
    is_link = dict.fromkeys(regulars, False)
    switch_at = {name: now + rng.uniform(0.1, 0.8) for name in regulars}

    def flip(name: str, now: float) -> None:
        tmp = folder / f".{name}.swap"
        if is_link[name]:
            os.link(regulars[name], tmp)
            switch_at[name] = now + rng.uniform(0.1, 0.8)
        else:
            os.symlink(target, tmp)
            switch_at[name] = now + rng.uniform(0.01, 0.3)
        os.replace(tmp, folder / name)
        is_link[name] = not is_link[name]

    while not stop.is_set():
        now = time.monotonic()
        for name in regulars:
            if now >= switch_at[name]:
                flip(name, now)
        time.sleep(0.002)  # the swapper's own pace (the switch times above are its schedule)
    for name in regulars:
        if not is_link[name]:
            flip(name, now)


def image_size(path: Path) -> tuple[int, int] | None:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if img is None else (int(img.shape[1]), int(img.shape[0]))


def exit_code(d: Daemon, timeout: float) -> int:
    """The daemon's exit code; fails the test if it is still running after `timeout` seconds."""
    assert d.proc is not None
    try:
        return d.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the daemon still runs {timeout:g} s later\n{d.log_tail()}")


# ------------------------------------------------------------------ writers


def test_writer_holding_the_file_open_from_before_the_start(daemon: Daemon, clips: Clips) -> None:
    """The daemon starts after the writer opened the file, so it never saw the open: only the
    open descriptor (not the pauses, three times the settle time) says the file is unfinished."""
    d = daemon
    d.configure(watch=WRITER_WATCH, daemon={"originals": "keep"})
    src = clips.clip(0, WRITER_FRAMES, "vtest.avi")
    chunks = pieces(src.read_bytes(), 4)
    opened, started = threading.Event(), threading.Event()

    def write() -> None:
        with (d.incoming / "held.mp4").open("wb") as f:
            f.write(chunks[0])
            f.flush()
            opened.set()
            started.wait(START_TIMEOUT + 30)
            for chunk in chunks[1:]:
                # Paces the writer (an upload that stalls longer than the settle time); whatever
                # the length, the file must be taken once, whole: no outcome depends on it.
                time.sleep(PAUSE)
                f.write(chunk)
                f.flush()

    writer = threading.Thread(target=write, name="held-writer", daemon=True)
    writer.start()
    try:
        assert opened.wait(10)
        d.start()
    finally:
        started.set()
    with Watch(d) as watch:
        writer.join()
        assert_processed_once(d, src, "held.mp4", watch)
    # Said once, not at every settle while the upload stalled.
    assert d.log().count("held.mp4: waiting: open for writing by another process") == 1, d.log_tail()
    assert d.terminate(timeout=15) == 0


def test_writer_reopening_a_faststart_file_for_each_chunk(daemon: Daemon, clips: Clips, tmp_path: Path) -> None:
    """Each chunk is appended by a new open, so nothing is open between chunks and every pause
    settles: the daemon takes a faststart MP4 (index first) cut short. It must see it is cut
    short (the index promises more frames), publish nothing, and take the appends that reach the
    name after a claim as a change of the file it works on."""
    d = daemon
    d.configure(watch=WRITER_WATCH, daemon={"originals": "keep"})
    src = faststart(clips.clip(0, WRITER_FRAMES, "vtest.avi"), tmp_path / "fast.mp4")
    d.start()
    with Watch(d) as watch:
        for i, chunk in enumerate(pieces(src.read_bytes(), 4)):
            if i:
                # Paces the writer: each pause lets the cut file settle (and be taken), and an append
                # may land before or during that claim; either way it must end processed once, whole.
                time.sleep(PAUSE)
            with (d.incoming / "reopened.mp4").open("ab") as f:
                f.write(chunk)
        assert_processed_once(d, src, "reopened.mp4", watch)
    assert d.terminate(timeout=15) == 0


def test_ftp_style_writer_in_small_chunks(daemon: Daemon, clips: Clips) -> None:
    """An FTP server: one descriptor, 64 KiB every 0.2 s, then closed."""
    d = daemon
    d.configure(watch=WRITER_WATCH, daemon={"originals": "keep"})
    src = clips.clip(0, WRITER_FRAMES, "vtest.avi")
    d.start()
    with Watch(d) as watch:
        with (d.incoming / "ftp.mp4").open("wb") as f:
            for chunk in pieces(src.read_bytes(), -(-src.stat().st_size // (64 << 10))):
                f.write(chunk)
                f.flush()
                time.sleep(0.2)  # paces the writer (an FTP upload); no outcome depends on its length
        assert_processed_once(d, src, "ftp.mp4", watch)
    assert d.terminate(timeout=15) == 0


def test_part_upload_renamed_when_complete(daemon: Daemon, clips: Clips) -> None:
    """NAME.mp4.part is never taken, even when it rests longer than the settle time; NAME.mp4 is."""
    d = daemon
    d.configure(watch=WRITER_WATCH, daemon={"originals": "keep"})
    src = clips.clip(0, WRITER_FRAMES, "vtest.avi")
    d.start()
    part = d.incoming / "upload.mp4.part"
    with Watch(d) as watch:
        for i, chunk in enumerate(pieces(src.read_bytes(), 3)):
            if i:
                time.sleep(PAUSE)  # paces the writer: the .part rests longer than the settle time
            with part.open("ab") as f:
                f.write(chunk)
        # A file arriving after the .part's last write settles after it, and files are taken
        # oldest first: once this one is done, the daemon has had its chance to take the .part.
        d.drop(media("city.jpg"), "after-part.jpg")
        wait_until(partial(done, d, "after-part.jpg"), 60, "after-part.jpg done", 0.1, d.log_tail)
        assert part.exists(), "the .part upload was taken"
        assert [j["name"] for j in d.jobs()] == ["after-part.jpg"], "the .part upload was claimed"
        os.rename(part, d.incoming / "upload.mp4")
        assert_processed_once(d, src, "upload.mp4", watch, others=["after-part.jpg"])
    assert d.terminate(timeout=15) == 0


def test_copy_from_another_filesystem(daemon: Daemon, clips: Clips) -> None:
    """A copy from tmpfs writes the final name directly (no rename within one filesystem)."""
    shm = Path("/dev/shm")
    d = daemon
    if not shm.is_dir() or shm.stat().st_dev == d.incoming.stat().st_dev:
        pytest.skip("SKIPPED: no /dev/shm on a filesystem other than the incoming folder's")
    d.configure(watch=WRITER_WATCH, daemon={"originals": "keep"})
    src = clips.clip(0, WRITER_FRAMES, "vtest.avi")
    fd, staged_name = tempfile.mkstemp(dir=shm, prefix="edgeguard-test-", suffix=".mp4")
    os.close(fd)
    staged = Path(staged_name)
    try:
        shutil.copyfile(src, staged)
        d.start()
        with Watch(d) as watch:
            shutil.copyfile(staged, d.incoming / "copied.mp4")
            assert_processed_once(d, src, "copied.mp4", watch)
    finally:
        staged.unlink(missing_ok=True)
    assert d.terminate(timeout=15) == 0


# ------------------------------------------------------------------ links and races


@pytest.mark.parametrize("fmt", ["mp4", "ts"])
@pytest.mark.parametrize("when", ["claimed", "decoding"])
def test_hard_link_truncated_outside_after_the_claim(
    daemon: Daemon, long_clip: Path, tmp_path: Path, when: str, fmt: str
) -> None:
    """The uploader keeps another name for the file and truncates it through that name right
    after the claim, or once frames are being decoded: what the daemon publishes must be what it
    claimed, never the shortened file recorded as done. An MP4's index gives a cut file away;
    MPEG-TS declares no frame count, so there only the daemon's own check can."""
    d = daemon
    d.configure(watch={"settle_seconds": SETTLE})
    outside = tmp_path / "elsewhere" / f"cam.{fmt}"
    outside.parent.mkdir()
    if fmt == "ts":
        remux_video(long_clip, outside, format="mpegts")  # declares no frame count
    else:
        shutil.copyfile(long_clip, outside)
    full, size, full_sha = frame_count(outside), outside.stat().st_size, sha256(outside)
    d.start()
    with Watch(d) as watch:
        os.link(outside, d.incoming / outside.name)

        def claimed() -> bool:
            if when == "decoding":  # hashed: the bytes claimed are on record, decoding has begun
                return any(j["state"] == "processing" and j["sha256"] for j in d.jobs())
            return bool(names(d.work)) or any(j["state"] == "processing" for j in d.jobs())

        wait_until(claimed, 30, f"cam.{fmt} {when}", 0.02, d.log_tail)
        os.truncate(outside, size * 4 // 10)
        quiet(d)
        watch.stop()
    cut = tmp_path / f"cut.{fmt}"
    shutil.copyfile(outside, cut)
    cut_sha = sha256(cut)
    # Each output is the protected copy of exactly the bytes its job claimed (and hashed).
    for job in d.jobs():
        if job["state"] == "done":
            assert job["sha256"] in (full_sha, cut_sha), job
            expected = full if job["sha256"] == full_sha else frame_count(cut)
            assert frame_count(Path(job["output"])) == expected, ("an output is not what its job claimed", job)
    published = [n for n in names(d.output) if not n.startswith(".")]
    assert len(published) <= 1, published
    assert outside.exists() and outside.stat().st_size == size * 4 // 10
    d.assert_alive()
    assert d.terminate(timeout=15) == 0


RACE_FILES, RACE_ROUNDS = 20, 10  # 200 names, each swapped many times while the daemon takes them
RACE_SECONDS = 2.5  # least time each round's swapper runs
ZERO_SWAP_SECONDS = 6.0  # least time the /dev/zero swapper runs


@pytest.mark.slow  # ~27 s: ten rounds of at least RACE_SECONDS each
def test_symlink_swapped_in_while_claiming(daemon: Daemon, tmp_path: Path) -> None:
    """200 names, 20 at a time, each switched back and forth between a regular photo and a symlink to
    a 0600 secret (os.replace, so every look sees one or the other) while the daemon, settling in
    0.2 s, tries to take them. Whatever instant its look and its claim fall on, the secret is never
    read: no ledger row or error report holds its sha256, no output has its size, no link is moved
    anywhere. Twenty at a time in ten rounds keeps the test under a minute."""
    d = daemon
    d.configure(watch={"settle_seconds": 0.2, "rescan_seconds": 0.2})
    secret = tmp_path / "private" / "secret.jpg"
    secret.parent.mkdir()
    shutil.copyfile(media("000000465822.jpg"), secret)
    secret.chmod(0o600)
    secret_bytes, secret_sha = secret.read_bytes(), sha256(secret)
    photo = tmp_path / "photo.jpg"
    shutil.copyfile(media("city.jpg"), photo)
    photo_size = image_size(photo)
    assert photo_size is not None and photo_size != image_size(secret)
    d.start()

    stage = tmp_path / "stage"
    stage.mkdir()
    for round_ in range(RACE_ROUNDS):
        batch = [f"race-{round_ * RACE_FILES + i}.jpg" for i in range(RACE_FILES)]
        # One inode per name: linking a shared one would move every name's ctime at each swap.
        for name in batch:
            shutil.copyfile(photo, stage / name)
            os.link(stage / name, d.incoming / name)
        stop = threading.Event()
        regulars = {name: stage / name for name in batch}
        swapper = threading.Thread(
            target=swap_loop, args=(d.incoming, regulars, secret, stop, round_), name="symlink-swapper", daemon=True
        )
        swapper.start()

        def raced(batch: frozenset[str] = frozenset(regulars), began: float = time.monotonic()) -> bool:
            # The daemon claimed at least one name of the round while it was being swapped. The
            # minimum length only sets how many swaps its looks meet, not what they may find.
            claimed = any(j["name"] in batch for j in d.jobs())
            return claimed and time.monotonic() - began >= RACE_SECONDS

        wait_until(raced, 60, f"a claim in round {round_}", 0.05, d.log_tail)
        stop.set()
        swapper.join(timeout=10)
        # Take every name of the round away (and any the daemon put back under another name).
        for name in names(d.incoming):
            if name.startswith(("race-", ".race-")):
                (d.incoming / name).unlink(missing_ok=True)
        wait_until(lambda: not any(j["state"] in ACTIVE for j in d.jobs()), 30, "the round's jobs to end", 0.05)
    quiet(d, timeout=30)

    d.assert_alive()
    assert secret.read_bytes() == secret_bytes and not secret.is_symlink()
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    for folder in (d.output, d.quarantine, d.processed, d.failed, d.work):
        links = [n for n in names(folder) if (folder / n).is_symlink()]
        assert links == [], f"symlinks in {folder.name}/: {links}"
    jobs = d.jobs()
    assert [j for j in jobs if j["sha256"] == secret_sha] == [], "the secret was read through a link"
    for report in (n for n in names(d.failed) if n.endswith(".error.json")):
        assert json.loads((d.failed / report).read_text(encoding="utf-8")).get("sha256") != secret_sha
    for name in names(d.output):
        assert image_size(d.output / name) == photo_size, f"{name} is not the photo"
    assert any(j["state"] == "done" for j in jobs), "no regular file was ever taken: the race was not run"
    assert d.terminate(timeout=15) == 0


def test_symlink_to_dev_zero_is_never_followed(daemon: Daemon, clips: Clips, tmp_path: Path) -> None:
    """A symlink to an endless device, placed as is and swapped in for regular files while they
    settle: reading it would never end. The daemon takes the next file and stops on SIGTERM."""
    d = daemon
    d.configure(watch={"settle_seconds": 0.2, "rescan_seconds": 0.2})
    clip = clips.clip(30, 30, "vtest.avi")
    regulars = {f"swap-{i}.mp4": tmp_path / f"swap-{i}.mp4" for i in range(10)}
    for name, path in regulars.items():
        shutil.copyfile(clip, path)
        os.link(path, d.incoming / name)
    d.start()
    os.symlink("/dev/zero", d.incoming / "zero.mp4")
    stop = threading.Event()
    swapper = threading.Thread(
        target=swap_loop, args=(d.incoming, regulars, Path("/dev/zero"), stop, 8), name="zero-swapper", daemon=True
    )
    swapper.start()
    began = time.monotonic()

    def raced() -> bool:
        # The daemon looked at the placed link and claimed swapped names while they were being
        # swapped. The minimum length only sets how many swaps its looks meet.
        looked = "zero.mp4: skipped: a symlink" in d.log()
        claims = [j for j in d.jobs() if j["name"].startswith("swap-")]
        return looked and len(claims) >= 2 and time.monotonic() - began >= ZERO_SWAP_SECONDS

    wait_until(raced, 90, "the link skipped and two swapped names claimed", 0.05, d.log_tail)
    stop.set()
    swapper.join(timeout=10)

    normal = clips.clip(0, 30, "vtest.avi")
    d.drop(normal, "normal.mp4")
    wait_until((d.output / "normal.mp4").exists, 60, "normal.mp4 published", 0.1, d.log_tail)
    assert frame_count(d.output / "normal.mp4") == 30
    d.assert_alive()
    assert (d.incoming / "zero.mp4").is_symlink() and os.readlink(d.incoming / "zero.mp4") == "/dev/zero"
    for folder in (d.output, d.failed, d.work, d.quarantine, d.processed):
        for name in names(folder):
            assert not (folder / name).is_symlink(), f"{folder.name}/{name} is a link"
            assert (folder / name).lstat().st_size < 50 << 20, f"{folder.name}/{name} was read from /dev/zero"
    assert d.terminate(timeout=15) == 0


# ------------------------------------------------------------------ a daemon without root's rights


@dataclass
class Unprivileged:
    """A daemon harness whose process runs as an ordinary user (`wrap` is the command prefix)."""

    d: Daemon
    wrap: list[str]
    uid: int
    gid: int

    def start(self) -> None:
        self.d.start(wrap=self.wrap)
        assert self.d.proc is not None
        assert os.stat(f"/proc/{self.d.proc.pid}").st_uid == self.uid, "the daemon does not run as the user"

    def drop(self, src: Path, name: str) -> Path:
        """Like `Daemon.drop`, the file owned by the daemon's user (as uploads in its group would be)."""
        tmp = self.d.incoming / f".{name}.uploading"
        shutil.copyfile(src, tmp)
        os.chown(tmp, self.uid, self.gid)
        os.rename(tmp, self.d.incoming / name)
        return self.d.incoming / name


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            os.chown(os.path.join(top, name), uid, gid, follow_symlinks=False)


@pytest.fixture
def unprivileged(tmp_path: Path, models_dir: Path) -> Iterator[Unprivileged]:
    """Permission checks only bind a process without root's rights: as root, the daemon runs as the
    user `egtest` (created if missing) through setpriv, in folders of its own outside pytest's
    private temporary folder (which that user cannot enter)."""
    if os.geteuid() != 0:
        d = Daemon(tmp_path / "eg", models_dir)
        try:
            yield Unprivileged(d, [], os.getuid(), os.getgid())
        finally:
            d.close()
        return
    if shutil.which("setpriv") is None:
        pytest.skip("SKIPPED: running as root and setpriv (util-linux) is missing: cannot run the daemon unprivileged")
    try:
        user = pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        made = subprocess.run(
            ["useradd", "-M", "-s", "/usr/sbin/nologin", UNPRIVILEGED_USER], capture_output=True, text=True, check=False
        )
        if made.returncode:
            pytest.skip(f"SKIPPED: cannot create the user {UNPRIVILEGED_USER}: {made.stderr.strip()}")
        user = pwd.getpwnam(UNPRIVILEGED_USER)
    root = Path(tempfile.mkdtemp(prefix="eg-hostile-"))
    root.chmod(0o755)
    try:
        models = root / "models"
        shutil.copytree(models_dir, models)
        _chown_tree(models, user.pw_uid, user.pw_gid)
        d = Daemon(root / "eg", models)
        try:
            _chown_tree(d.root, user.pw_uid, user.pw_gid)
            os.chown(d.sock_path, user.pw_uid, user.pw_gid)
            d.sock_path.parent.chmod(0o755)
            wrap = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
            probe = subprocess.run(
                [*wrap, sys.executable, "-c", "import edgeguard.daemon.service"],
                cwd=d.root,
                env=d.env(),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if probe.returncode:
                pytest.skip(f"SKIPPED: {UNPRIVILEGED_USER} cannot run this Python: {probe.stderr.strip()[-300:]}")
            yield Unprivileged(d, wrap, user.pw_uid, user.pw_gid)
        finally:
            d.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_an_unreadable_file_does_not_block_the_queue(unprivileged: Unprivileged, clips: Clips, tmp_path: Path) -> None:
    """A file the daemon may not read is left where it is (not lost to failed/, not retried ahead of
    every other file) and said once; the file behind it is processed."""
    u, d = unprivileged, unprivileged.d
    d.configure(watch={"settle_seconds": SETTLE})
    u.start()
    locked = tmp_path / "locked.mp4"
    shutil.copyfile(clips.clip(30, 30, "vtest.avi"), locked)
    if os.geteuid() == 0:
        locked.chmod(0o600)  # root's, and the daemon is not root
    else:
        locked.chmod(0)
    locked_sha = sha256(locked)
    os.rename(locked, d.incoming / "locked.mp4")
    # Tried (and said) first, so it is the oldest file when the next one arrives.
    wait_until(lambda: "locked.mp4: cannot open" in d.log(), 30, "locked.mp4 refused", 0.05, d.log_tail)
    u.drop(clips.clip(0, 30, "vtest.avi"), "normal.mp4")
    wait_until((d.output / "normal.mp4").exists, 60, "normal.mp4 published", 0.1, d.log_tail)
    assert frame_count(d.output / "normal.mp4") == 30
    # Rescans look at it again: each later file settles for SETTLE, at least one rescan period,
    # with the held locked.mp4 looked at on every tick; two of them, one after the other.
    for later, src in (("later-1.jpg", "city.jpg"), ("later-2.jpg", "000000038829.jpg")):
        u.drop(media(src), later)
        wait_until(partial(done, d, later), 60, f"{later} done", 0.1, d.log_tail)
    d.assert_alive()
    assert regular_files(d.incoming) == ["locked.mp4"]
    assert sha256(d.incoming / "locked.mp4") == locked_sha
    assert names(d.failed) == []
    lines = [line for line in d.log().splitlines() if "locked.mp4" in line]
    assert len(lines) == 1, lines
    assert d.terminate(timeout=15) == 0


def test_a_read_only_output_folder_fails_nothing(unprivileged: Unprivileged, clips: Clips) -> None:
    """The output folder's fault is not the file's: the file waits (never counted toward poison)
    and is published once the folder is writable again."""
    u, d = unprivileged, unprivileged.d
    d.configure(watch={"settle_seconds": SETTLE})
    u.start()
    d.output.chmod(0o555)
    try:
        clip = clips.clip(0, 30, "vtest.avi")
        u.drop(clip, "cam.mp4")
        # Three tries (pause_seconds apart), each finding the output folder read-only.
        wait_until(
            lambda: d.log().count("is not writable by the daemon") >= 3,
            60,
            "three tries at a read-only output folder",
            0.1,
            d.log_tail,
        )
        d.assert_alive()
        assert names(d.failed) == [], d.log_tail()
        assert names(d.output) == []
        here = [n for n in names(d.incoming) + names(d.work) if n.endswith("cam.mp4")]
        assert here, "cam.mp4 is neither in incoming nor in work"
        assert not [j for j in d.jobs() if j["state"] == "failed"]
    finally:
        d.output.chmod(0o755)
    wait_until((d.output / "cam.mp4").exists, 60, "cam.mp4 published", 0.1, d.log_tail)
    d.wait_idle()
    assert names(d.output) == ["cam.mp4"]
    assert frame_count(d.output / "cam.mp4") == 30
    assert names(d.failed) == []
    assert [j["state"] for j in d.jobs()] == ["done"]
    assert d.terminate(timeout=15) == 0


# ------------------------------------------------------------------ the daemon's own surroundings


def test_a_second_daemon_on_the_same_folders_refuses(daemon: Daemon, clips: Clips) -> None:
    """Two daemons would claim the same files into one ledger: the second exits 3, saying why once."""
    d = daemon
    d.start()
    env = d.env()
    env.pop("NOTIFY_SOCKET", None)
    try:
        second = subprocess.run(
            [sys.executable, "-m", "edgeguard", "run", "-c", str(d.cfg_path)],
            env=env,
            cwd=d.root,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("a second daemon on the same folders was still running after 60 s")
    output = second.stdout + second.stderr
    assert second.returncode == 3, output
    assert len([line for line in output.splitlines() if "another edgeguard" in line.lower()]) == 1, output
    d.drop(clips.clip(0, 30, "vtest.avi"), "cam.mp4")
    d.wait_states({"done": 1})
    assert frame_count(d.output / "cam.mp4") == 30
    d.assert_alive()
    assert d.terminate(timeout=15) == 0


def test_a_file_sent_again_after_its_output_was_taken_away(daemon: Daemon, clips: Clips) -> None:
    """Duplicate detection saves work only while the output it points at exists: once a consumer has
    taken the output away, the same bytes sent again are processed again."""
    d = daemon
    clip = clips.clip(0, 30, "vtest.avi")
    d.start()
    d.drop(clip, "cam.mp4")
    d.wait_states({"done": 1})
    d.wait_idle()
    (d.output / "cam.mp4").unlink()

    d.drop(clip, "cam.mp4")

    def published() -> bool:
        if d.counts().get("duplicate"):
            pytest.fail(f"taken as a duplicate of a job whose output is gone: {d.jobs()}")
        return (d.output / "cam.mp4").exists()

    wait_until(published, 60, "cam.mp4 published again", 0.1, d.log_tail)
    d.wait_idle()
    assert frame_count(d.output / "cam.mp4") == 30
    assert [j["state"] for j in d.jobs()] == ["done", "done"]

    # The output is there now: the same bytes again make no second output.
    d.drop(clip, "again.mp4")
    d.wait_states({"duplicate": 1})
    d.wait_idle()
    assert names(d.output) == ["cam.mp4"]
    assert frame_count(d.output / "cam.mp4") == 30
    assert names(d.failed) == []
    assert d.terminate(timeout=15) == 0


def test_control_characters_in_a_name_cannot_forge_log_lines(daemon: Daemon, clips: Clips) -> None:
    """A newline in an uploaded name must not start a line of its own in the log."""
    d = daemon
    name = "evil\nINFO edgeguard.daemon.jobs: forged.mp4"
    d.start()
    d.drop(clips.clip(0, 30, "vtest.avi"), name)
    d.wait_states({"done": 1})
    d.wait_idle()
    assert [j["name"] for j in d.jobs()] == [name]
    assert names(d.output) == [name]
    log = d.log()
    forged = [line for line in log.splitlines() if line.startswith("INFO edgeguard.daemon.jobs: forged")]
    assert forged == [], forged
    assert "\\n" in log, "the name's newline is not written as an escape"
    assert d.terminate(timeout=15) == 0


def test_ledger_deleted_while_running_stops_the_daemon(daemon: Daemon, clips: Clips) -> None:
    """Without its ledger the daemon would forget what it did (and process it all again): it stops
    with an error instead of carrying on silently with a new, empty one."""
    d = daemon
    d.start()
    d.drop(clips.clip(0, 30, "vtest.avi"), "first.mp4")
    d.wait_states({"done": 1})
    d.wait_idle()
    for suffix in ("", "-wal", "-shm"):
        (d.state / f"ledger.sqlite3{suffix}").unlink(missing_ok=True)
    d.drop(clips.clip(30, 30, "vtest.avi"), "second.mp4")
    rc = exit_code(d, 30)
    assert rc != 0, d.log()
    assert [line for line in d.log().splitlines() if "ledger" in line.lower()], d.log()


def test_sigstop_longer_than_the_time_limit_does_not_fail_the_file(daemon: Daemon, clips: Clips) -> None:
    """Time the process spent stopped (SIGSTOP, a suspended machine) is not the file's fault."""
    d = daemon
    d.configure(daemon={"file_timeout": 5.0})
    clip = clips.clip(0, WRITER_FRAMES, "vtest.avi")  # about 2 s of work
    d.start()
    assert d.proc is not None
    d.drop(clip, "cam.mp4")
    wait_until(lambda: any(j["state"] == "processing" for j in d.jobs()), 30, "cam.mp4 processing", 0.02)
    os.kill(d.proc.pid, signal.SIGSTOP)
    try:
        # The stimulus, not a wait: stopped longer than file_timeout (and than the daemon's STALL).
        time.sleep(8.0)
    finally:
        os.kill(d.proc.pid, signal.SIGCONT)
    wait_until(lambda: "did not run for" in d.log(), 30, "the daemon noticing it was stopped", 0.1, d.log_tail)
    wait_until(
        lambda: (d.output / "cam.mp4").exists() or names(d.failed), 60, "cam.mp4 published or failed", 0.1, d.log_tail
    )
    d.wait_idle()
    assert names(d.failed) == [], d.log_tail()
    assert frame_count(d.output / "cam.mp4") == WRITER_FRAMES
    assert [j["state"] for j in d.jobs()] == ["done"]
    assert d.terminate(timeout=15) == 0


def test_two_video_streams_fail_cleanly(daemon: Daemon, tmp_path: Path) -> None:
    """Which of two video streams a player shows is its choice: protecting one and copying or
    dropping the other cannot be right, so the file fails (the original kept in failed/)."""
    d = daemon
    src = two_video_streams(media("vtest.avi"), tmp_path / "two.mp4", 30)
    with av.open(os.fspath(src)) as container:
        assert len(container.streams.video) == 2
    d.start()
    d.drop(src, "two.mp4")

    def failed() -> bool:
        if names(d.output):
            pytest.fail(f"published: {names(d.output)}\n{d.log_tail()}")
        return (d.failed / "two.mp4.error.json").exists()

    wait_until(failed, 60, "two.mp4 failed", 0.1, d.log_tail)
    d.wait_idle()
    assert "video streams" in d.error_report("two.mp4")["reason"]
    assert sha256(d.failed / "two.mp4") == sha256(src)
    assert names(d.output) == []
    assert d.terminate(timeout=15) == 0


def test_a_setup_failure_exits_3_with_one_line(daemon: Daemon) -> None:
    """paths.state under a regular file cannot be made: exit 3, a one-line reason, no traceback."""
    d = daemon
    (d.root / "notadir").write_text("a file, not a folder\n", encoding="utf-8")
    d.configure(paths={"state": str(d.root / "notadir" / "state")})
    d.start(ready=False)
    rc = exit_code(d, 60)
    log = d.log()
    assert rc == 3, log
    assert "Traceback" not in log, log
    lines = [line for line in log.splitlines() if line.strip()]
    assert lines and "notadir" in lines[-1], log


def test_a_full_disk_at_start_up_exits_3_with_one_line(daemon: Daemon) -> None:
    """The ledger cannot be written (RLIMIT_FSIZE stands in for a full disk: SQLite gets the same I/O error)."""
    d = daemon
    d.start(wrap=["prlimit", "--fsize=4096"], ready=False)
    rc = exit_code(d, 60)
    log = d.log()
    assert rc == 3, log
    assert "Traceback" not in log, log
    assert log.splitlines()[-1].startswith("edgeguard: paths.state: cannot open the ledger"), log


def test_a_disk_that_fills_while_running_pauses_with_one_line_per_try(daemon: Daemon, clips: Clips) -> None:
    """The ledger and the output cannot grow (RLIMIT_FSIZE set on the running daemon stands in for a
    full disk): each try is one log line, no traceback, nothing failed; room again, the file is done."""
    d = daemon
    d.start()
    assert d.proc is not None
    d.drop(clips.clip(0, 10), "first.mp4")
    d.wait_states({"done": 1})
    # The soft limit only: it can be raised again without CAP_SYS_RESOURCE.
    subprocess.run(["prlimit", f"--pid={d.proc.pid}", "--fsize=4096:"], check=True)
    d.drop(clips.clip(10, 10), "second.mp4")
    wait_until(lambda: d.log().count("retry") >= 2, 60, "two tries on the full disk", 0.2, d.log_tail)
    d.assert_alive()
    assert "Traceback" not in d.log(), d.log()
    assert names(d.failed) == []
    subprocess.run(["prlimit", f"--pid={d.proc.pid}", "--fsize=unlimited:"], check=True)
    d.wait_states({"done": 2}, timeout=90)
    d.wait_idle()
    assert names(d.output) == ["first.mp4", "second.mp4"]
    assert frame_count(d.output / "second.mp4") == 10
    assert d.terminate(timeout=15) == 0


def test_an_incoming_folder_given_as_a_symlink_is_resolved_once(daemon: Daemon, clips: Clips, tmp_path: Path) -> None:
    """inotify does not follow the link: the daemon watches where it points at start, and says so."""
    d = daemon
    real = tmp_path / "eg" / "real-incoming"
    real.mkdir()
    link = tmp_path / "eg" / "incoming-link"
    link.symlink_to(real)
    d.configure(watch={"rescan_seconds": 3600.0}, paths={"incoming": str(link)})  # events only, no rescans
    d.start()
    clip = clips.clip(0, 10)
    tmp = real / ".a.mp4.uploading"
    shutil.copyfile(clip, tmp)
    os.rename(tmp, real / "a.mp4")
    wait_until((d.output / "a.mp4").exists, 60, "a.mp4 published from an event", 0.1, d.log_tail)
    # Repointing the link later changes nothing for the running daemon, however often it rescans.
    mark = d.mark()
    d.configure(watch={"rescan_seconds": 0.5})
    d.hup()
    d.wait_field("READY", "1", mark)
    other = tmp_path / "eg" / "elsewhere"
    other.mkdir()
    link.unlink()
    link.symlink_to(other)
    shutil.copyfile(clip, other / ".b.mp4.uploading")
    os.rename(other / ".b.mp4.uploading", other / "b.mp4")
    # Two files in the real folder, one after the other: each settles over at least one rescan,
    # and files are taken oldest first, so had a rescan followed the link, b.mp4 would have gone first.
    for later, src in (("c.jpg", "city.jpg"), ("d.jpg", "000000038829.jpg")):
        shutil.copyfile(media(src), real / f".{later}.uploading")
        os.rename(real / f".{later}.uploading", real / later)
        wait_until(partial(done, d, later), 60, f"{later} done", 0.1, d.log_tail)
    assert names(other) == ["b.mp4"], "the daemon followed the link anew"
    assert "b.mp4" not in [j["name"] for j in d.jobs()]
    assert f"paths.incoming: {link} is a symlink; using {real}" in d.log()
    assert d.terminate(timeout=15) == 0


def test_reading_a_huge_file_counts_as_an_attempt_and_stops_on_sigterm(daemon: Daemon, tmp_path: Path) -> None:
    """Hashing 16 GiB (sparse: no disk used) takes many seconds. It is an attempt from its first byte
    (a read that hangs the daemon must become poison, not start again at attempt 0), and SIGTERM
    stops it within the grace time (reading /dev/zero once held the daemon for good)."""
    d = daemon
    # The free-space estimate would ask for twice the input's size on the output disk.
    d.configure(daemon={"output_ratio": 0.0001, "stop_grace": 2.0})
    huge = tmp_path / "stage" / "huge.mp4"
    huge.parent.mkdir()
    with huge.open("wb") as f:
        f.truncate(16 << 30)
    mark = d.start()
    os.rename(huge, d.incoming / "huge.mp4")
    # The attempt is counted just before the first read; the status says the job is in hand.
    wait_until(lambda: [j["attempts"] for j in d.jobs()] == [1], 30, "huge.mp4's first attempt", 0.05, d.log_tail)
    d.wait_field("STATUS", "processing huge.mp4", mark)
    d.kill()
    [job] = d.jobs()
    assert job["attempts"] == 1, job
    mark = d.start()
    wait_until(lambda: d.jobs()[0]["attempts"] == 2, 30, "the second attempt", 0.05, d.log_tail)
    d.wait_field("STATUS", "processing huge.mp4", mark)
    assert d.jobs()[0]["state"] == "processing", "the read is over already"
    sent = time.monotonic()
    assert d.terminate(timeout=30) == 0, d.log()
    assert time.monotonic() - sent < 2.0 + 5.0, "SIGTERM waited for the read to end"
    assert d.jobs()[0]["state"] == "queued"


def test_budgets_refuse_tiny_frame_floods_and_deep_pixels(daemon: Daemon, clips: Clips, tmp_path: Path) -> None:
    """A flood of frames with no declared count (MPEG-TS) and a 16-bit RGBA PNG are failed with the
    budget they break, the originals kept in failed/; an ordinary clip is still done after them."""
    d = daemon
    # 3 MiB: a 720p frame (2.6 MiB) fits, a 700x700 16-bit RGBA picture (3.7 MiB) does not.
    d.configure(media={"max_frames": 20, "max_frame_mb": 3})
    stage = tmp_path / "stage"
    stage.mkdir()
    flood = remux_video(clips.clip(0, 40), stage / "flood.ts", format="mpegts")
    deep = stage / "deep.png"
    assert cv2.imwrite(str(deep), np.full((700, 700, 4), 40000, np.uint16))
    d.start()
    for path in (flood, deep):
        os.rename(path, d.incoming / path.name)
    d.drop(clips.clip(0, 10), "fine.mp4")
    d.wait_states({"failed": 2, "done": 1}, timeout=90)
    d.wait_idle()
    assert "media.max_frames=20" in d.error_report("flood.ts")["reason"]
    assert "media.max_frame_mb=3" in d.error_report("deep.png")["reason"]
    assert sorted(n for n in names(d.failed) if not n.endswith(".json")) == ["deep.png", "flood.ts"]
    assert names(d.output) == ["fine.mp4"]
    assert d.terminate(timeout=15) == 0
