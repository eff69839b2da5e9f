"""A harness that runs the real `edgeguard run` daemon as a subprocess.

The test binds a real AF_UNIX datagram socket (standing in for systemd's) and
passes it as ``$NOTIFY_SOCKET``; a reader thread collects every datagram. The
daemon's config, folders, ledger and log all live under ``tmp_path``; teardown
SIGKILLs whatever is still running.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import pytest
import yaml

from tests.conftest import media

FOLDERS = ("incoming", "output", "quarantine", "failed", "processed", "work", "state", "sealed")
START_TIMEOUT = 60.0  # seconds to READY=1 (model load on a slow, busy CI machine)


# ------------------------------------------------------------------ helpers


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def frame_count(path: Path) -> int:
    """Frames that actually decode (PyAV), not the count the container declares."""
    with av.open(os.fspath(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def wait_until(
    predicate: Callable[[], Any],
    timeout: float,
    what: str | Callable[[], str],
    interval: float = 0.1,
    detail: Callable[[], str] | None = None,
) -> Any:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            text = what() if callable(what) else what
            more = f"\n{detail()}" if detail is not None else ""
            pytest.fail(f"timed out after {timeout:g} s waiting for {text}{more}")
        time.sleep(interval)  # the polling period only


def names(folder: Path) -> list[str]:
    """Every entry of a folder, hidden ones included, sorted."""
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def assert_clean(d: Daemon) -> None:
    """Nothing half done anywhere: no hidden or partial file in output, work empty."""
    assert names(d.work) == []
    leftovers = [n for n in names(d.output) if n.startswith(".") or "partial" in n]
    assert leftovers == []


def regular_files(folder: Path) -> list[str]:
    """Names of the regular, not hidden files in `folder` (symlinks, FIFOs and folders left out)."""
    out = []
    with os.scandir(folder) as entries:
        for entry in entries:
            try:
                if not entry.name.startswith(".") and entry.is_file(follow_symlinks=False):
                    out.append(entry.name)
            except FileNotFoundError:  # claimed meanwhile
                continue
    return sorted(out)


def make_clip(src: Path, dst: Path, start: int, count: int) -> Path:
    """Frames [start, start+count) of `src` re-encoded as a small H.264 MP4 (no audio)."""
    with av.open(os.fspath(src)) as inp, av.open(os.fspath(dst), "w") as out:
        vin = inp.streams.video[0]
        ctx = vin.codec_context
        rate = vin.average_rate or Fraction(25)
        vout = out.add_stream("libx264", rate=rate)
        vout.width, vout.height, vout.pix_fmt = ctx.width, ctx.height, "yuv420p"
        tb = vout.codec_context.time_base = 1 / Fraction(rate)
        vout.options = {"preset": "ultrafast"}
        written = 0
        for i, frame in enumerate(inp.decode(vin)):
            if i < start:
                continue
            if written == count:
                break
            picture = frame.reformat(format="yuv420p")
            picture.pts, picture.time_base = written, tb
            out.mux(vout.encode(picture))
            written += 1
        out.mux(vout.encode(None))
    assert written == count, f"{src} has fewer than {start + count} frames"
    return dst


def faststart(src: Path, dst: Path) -> Path:
    """`src`'s video packets remuxed with the index (moov) first, as cameras and our outputs write it."""
    return remux_video(src, dst, options={"movflags": "+faststart"})


def remux_video(src: Path, dst: Path, **output: Any) -> Path:
    """`src`'s video packets copied into `dst`, opened with `output` (format=, options=)."""
    with av.open(os.fspath(src)) as inp, av.open(os.fspath(dst), "w", **output) as out:
        vin = inp.streams.video[0]
        vout = out.add_stream_from_template(vin)
        for packet in inp.demux(vin):
            if packet.dts is not None:
                packet.stream = vout
                out.mux(packet)
    return dst


def tagged_jpeg(src: Path, dst: Path, tag: str) -> Path:
    """`src` with a JPEG comment segment after SOI: same pixels, different bytes (sha256)."""
    data = src.read_bytes()
    assert data[:2] == b"\xff\xd8"
    body = tag.encode()
    dst.write_bytes(data[:2] + b"\xff\xfe" + (len(body) + 2).to_bytes(2, "big") + body + data[2:])
    return dst


class Clips:
    """Derived test media, made once per session from the real files in ../shared."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def clip(self, start: int = 0, count: int = 10, source: str = "dos.mp4") -> Path:
        """Frames [start, start+count) of a shared video as an MP4, cached."""
        path = self.root / f"{Path(source).stem}-{start}-{count}.mp4"
        if not path.exists():
            tmp = path.with_name(f".{path.name}.tmp.mp4")
            make_clip(media(source), tmp, start, count)
            tmp.rename(path)
        return path


LONG_FRAMES = 300


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Clips:
    return Clips(tmp_path_factory.mktemp("clips"))


@pytest.fixture(scope="session")
def long_clip(clips: Clips) -> Path:
    """300 frames of vtest.avi (480x360): several seconds of work, well past a 1 s grace or limit."""
    return clips.clip(0, LONG_FRAMES, "vtest.avi")


@pytest.fixture(scope="session")
def clip10(clips: Clips) -> Path:
    """The first 10 frames of dos.mp4 (about 0.7 s of work for yolox_nano on 2 cores)."""
    return clips.clip(0, 10)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs, so writes really fail with ENOSPC (needs root, as CI has)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=False, capture_output=True, text=True
    )
    if res.returncode:
        pytest.skip(f"CANNOT MOUNT A TMPFS (needs root/CAP_SYS_ADMIN): {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# ------------------------------------------------------------------ the daemon


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


class Daemon:
    """One daemon's folders, config, notify socket and (re)started process."""

    def __init__(self, root: Path, models_dir: Path) -> None:
        self.root = root
        self.models_dir = models_dir
        self.incoming, self.output, self.quarantine, self.failed, self.processed, self.work, self.state, self.sealed = (
            root / name for name in FOLDERS
        )
        for name in FOLDERS:
            (root / name).mkdir(parents=True)
        self.cfg_path = root / "edgeguard.yaml"
        self.log_path = root / "daemon.log"
        self.settings: dict[str, Any] = {
            "detector": {"model": "yolox_nano"},
            "video": {"preset": "ultrafast"},
            "paths": {name: str(root / name) for name in FOLDERS},
            # incomplete_seconds 0: a cut-short test file fails at once (writer tests raise it).
            "watch": {"settle_seconds": 0.5, "rescan_seconds": 1.0, "incomplete_seconds": 0},
            "daemon": {"min_free_mb": 1, "stop_grace": 5.0, "pause_seconds": 1.0},
            "logging": {"level": "info"},
        }
        self.write_config()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_offset = 0  # where the current process's log starts
        self._cleanup_dir: str | None = None
        self._messages: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._deaf = threading.Event()  # set: the stand-in manager stops reading (see `stop_reading`)
        sock_path = root / "notify.sock"
        if len(os.fsencode(sock_path)) >= 100:  # sun_path holds 108 bytes
            sock_path = Path(self._short_dir()) / "notify.sock"
        self.sock_path = sock_path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(os.fspath(sock_path))
        self.sock.settimeout(0.1)
        self._reader = threading.Thread(target=self._read, name="notify-reader", daemon=True)
        self._reader.start()

    def _short_dir(self) -> str:
        self._cleanup_dir = tempfile.mkdtemp(prefix="eg-")
        return self._cleanup_dir

    # -------------------------------------------------------------- folders

    def drop(self, src: Path, name: str | None = None) -> Path:
        """Put a copy of `src` into incoming atomically (hidden temporary name, then rename)."""
        dst = self.incoming / (name or src.name)
        tmp = self.incoming / f".{dst.name}.uploading"
        shutil.copyfile(src, tmp)
        os.rename(tmp, dst)
        return dst

    # --------------------------------------------------------------- config

    def configure(self, **sections: dict[str, Any]) -> None:
        """Merge `sections` into the config and write it (takes effect at start or SIGHUP)."""
        _merge(self.settings, sections)
        self.write_config()

    def write_config(self, text: str | None = None) -> None:
        tmp = self.cfg_path.with_name(".edgeguard.yaml.tmp")
        tmp.write_text(text if text is not None else yaml.safe_dump(self.settings), encoding="utf-8")
        os.replace(tmp, self.cfg_path)

    # -------------------------------------------------------------- process

    def env(self, watchdog_usec: int | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_", "JOURNAL_"))}
        env.pop("EDGEGUARD_CONFIG", None)
        env["EDGEGUARD_MODELS_DIR"] = str(self.models_dir)
        env["NOTIFY_SOCKET"] = str(self.sock_path)
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        return env

    def start(self, *, watchdog_usec: int | None = None, wrap: Sequence[str] = (), ready: bool = True) -> int:
        """Start the daemon; returns the notify mark taken before start (see `messages`)."""
        assert not self.alive(), "daemon already running"
        mark = self.mark()
        with self.log_path.open("ab") as log:
            self.log_offset = log.tell()
            self.proc = subprocess.Popen(
                [*wrap, sys.executable, "-m", "edgeguard", "run", "-c", str(self.cfg_path)],
                env=self.env(watchdog_usec),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
            )
        if ready:
            self.wait_ready(mark)
        return mark

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def terminate(self, timeout: float) -> int:
        """SIGTERM and wait for the exit code (fails the test after `timeout` seconds)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"daemon did not exit within {timeout:g} s of SIGTERM")

    def hup(self) -> None:
        assert self.proc is not None and self.alive()
        self.proc.send_signal(signal.SIGHUP)

    def log(self, *, all_runs: bool = False) -> str:
        """The log of the current (or last) process, or of every run."""
        data = self.log_path.read_bytes() if self.log_path.exists() else b""
        return data[0 if all_runs else self.log_offset :].decode("utf-8", "replace")

    def log_tail(self, chars: int = 4000) -> str:
        return "daemon log (tail):\n" + self.log(all_runs=True)[-chars:]

    def assert_alive(self) -> None:
        assert self.alive(), f"daemon exited with {self.proc and self.proc.returncode}:\n{self.log()}"

    # --------------------------------------------------------------- notify

    def stop_reading(self) -> None:
        """Behave like a wedged service manager: leave every further datagram in the socket's queue."""
        self._deaf.set()

    def _read(self) -> None:
        while not self._stop.is_set():
            if self._deaf.is_set():
                time.sleep(0.05)  # idles the reader thread while deaf; nothing waits on its length
                continue
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._messages.append((time.monotonic(), data.decode("utf-8", "replace")))

    def mark(self) -> int:
        with self._lock:
            return len(self._messages)

    def messages(self, since: int = 0) -> list[tuple[float, str]]:
        """(arrival time, datagram) pairs received since `mark`."""
        with self._lock:
            return self._messages[since:]

    def fields(self, since: int = 0) -> list[tuple[float, str, str]]:
        """Every KEY=VALUE line of every datagram since `mark`, as (time, key, value)."""
        out = []
        for at, text in self.messages(since):
            for line in text.split("\n"):
                key, _, value = line.partition("=")
                out.append((at, key, value))
        return out

    def statuses(self, since: int = 0) -> list[str]:
        return [value for _, key, value in self.fields(since) if key == "STATUS"]

    def wait_field(self, key: str, value: str | None = None, since: int = 0, timeout: float = 30.0) -> int:
        """Wait for KEY (=VALUE, or containing `value` for STATUS); returns the index after that datagram."""

        def found() -> int | None:
            with self._lock:
                messages = self._messages[since:]
            for i, (_, text) in enumerate(messages):
                for line in text.split("\n"):
                    k, _, v = line.partition("=")
                    if k == key and (value is None or (value in v if key == "STATUS" else v == value)):
                        return since + i + 1
            if self.proc is not None and self.proc.poll() is not None:
                pytest.fail(f"daemon exited ({self.proc.returncode}) while waiting for {key}:\n{self.log()}")
            return None

        what = f"{key}={value or '*'} on the notify socket"
        return int(wait_until(found, timeout, what, 0.05, self.log_tail))

    def wait_ready(self, since: int = 0, timeout: float = START_TIMEOUT) -> int:
        return self.wait_field("READY", "1", since, timeout)

    # --------------------------------------------------------------- ledger

    def jobs(self) -> list[dict[str, Any]]:
        """Every ledger row (read-only; safe while the daemon runs)."""
        return self._rows("SELECT * FROM jobs ORDER BY id")

    def audits(self) -> list[dict[str, Any]]:
        """Every audit row of the ledger (read-only)."""
        return self._rows("SELECT * FROM audit ORDER BY job")

    def _rows(self, sql: str) -> list[dict[str, Any]]:
        path = self.state / "ledger.sqlite3"
        if not path.exists():
            return []
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute(sql)]
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # killed between creating the file and its schema
                return []
            raise
        finally:
            db.close()

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for job in self.jobs():
            counts[job["state"]] = counts.get(job["state"], 0) + 1
        return counts

    def status(self) -> dict[str, Any]:
        """`edgeguard status --json`, run as a separate command as an operator would."""
        done = subprocess.run(
            [sys.executable, "-m", "edgeguard", "status", "--json", "-c", str(self.cfg_path)],
            env=self.env(),
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        report: dict[str, Any] = json.loads(done.stdout)
        return report

    def error_report(self, name: str) -> dict[str, Any]:
        report: dict[str, Any] = json.loads((self.failed / f"{name}.error.json").read_text(encoding="utf-8"))
        return report

    # ---------------------------------------------------------------- waits

    def wait_idle(self, timeout: float = 60.0, stays: Sequence[str] = ()) -> None:
        """Incoming holds no regular file (but those in `stays`), work is empty, no job is active."""
        active = {"claiming", "queued", "processing", "output_done", "failing"}

        def idle() -> bool:
            self.assert_alive()
            if names(self.work) or set(regular_files(self.incoming)) - set(stays):
                return False
            return not any(j["state"] in active for j in self.jobs())

        wait_until(idle, timeout, lambda: f"the daemon to become idle (ledger {self.counts()})", 0.1, self.log_tail)

    def wait_states(self, expected: dict[str, int], timeout: float = 60.0) -> None:
        """Wait until the ledger counts include `expected` (state -> rows)."""

        def reached() -> bool:
            self.assert_alive()
            counts = self.counts()
            return all(counts.get(k, 0) >= v for k, v in expected.items())

        wait_until(reached, timeout, lambda: f"ledger counts {expected} (have {self.counts()})", 0.1, self.log_tail)

    def close(self) -> None:
        self.kill()
        self._stop.set()
        self._reader.join(timeout=5)
        self.sock.close()
        with contextlib.suppress(OSError):
            self.sock_path.unlink()
        if self._cleanup_dir is not None:
            shutil.rmtree(self._cleanup_dir, ignore_errors=True)


@pytest.fixture
def daemon(tmp_path: Path, models_dir: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "eg", models_dir)
    try:
        yield d
    finally:
        d.close()
