"""edgeguard installed by systemd/install.sh inside a booted systemd container, driven with systemctl.

One container is booted per module (about a second) and edgeguard installed once into it (tens
of seconds: pip from cached wheels); the tests then share the service, each with its own file
names. Where the machine cannot boot the container the tests skip, naming the step that failed.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import CANDIDATES, REPO, media, need
from tests.e2e.daemon.conftest import _merge, wait_until
from tests.e2e.systemd.harness import BootError, Container, checkout_files, preflight, wheelhouse

UNIT = "edgeguard"
VENV = "/opt/edgeguard/venv"
CONFIG = "/etc/edgeguard/edgeguard.yaml"
STATE = "/var/lib/edgeguard"
SRC = "/usr/local/src/edgeguard"  # the checkout's copy inside (pip cannot build from a read-only bind)
WHEELS = "/wheels"
MODEL_SOURCE = "/var/tmp/e2e-models"
UPLOAD = "/var/tmp/e2e-upload"  # uploads are written here, then renamed into incoming (same file system)
DROP_IN = "/etc/systemd/system/edgeguard.service.d/e2e.conf"
# The metrics set-up the README gives: node_exporter's textfile folder, writable by group
# edgeguard, and opened to the sandbox by a ReadWritePaths= drop-in.
TEXTFILE = "/var/lib/node_exporter/textfile_collector"
METRICS_DROP_IN = "/etc/systemd/system/edgeguard.service.d/metrics.conf"
METRICS_DROP_IN_TEXT = f"""\
[Service]
ReadWritePaths=-{TEXTFILE}
"""

# Test-only timings: a hang is noticed in 5 s instead of 120 s, a crash restarts after 1 s.
DROP_IN_TEXT = """\
# Written by tests/e2e/systemd: short watchdog and restart delay so the tests are quick.
[Service]
WatchdogSec=5s
RestartSec=1s
"""

READ_LEDGER = """
import json, os, sqlite3, sys
rows = []
if os.path.exists(sys.argv[1]):
    db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=10)
    db.row_factory = sqlite3.Row
    rows = [dict(r) for r in db.execute("SELECT * FROM jobs ORDER BY id")]
print(json.dumps(rows))
"""

# Short settle times and grace so the tests are quick; quarantine so originals can be counted.
SETTINGS: dict[str, Any] = {
    "detector": {"model": "yolox_nano"},
    "video": {"preset": "ultrafast"},
    "watch": {"settle_seconds": 0.5, "rescan_seconds": 1.0, "incomplete_seconds": 0},
    "daemon": {"originals": "quarantine", "min_free_mb": 1, "stop_grace": 2.0, "pause_seconds": 1.0},
    "logging": {"level": "info"},
    "metrics": {"folder": TEXTFILE},
}


def skip_loudly(exc: BootError) -> None:
    pytest.skip(f"SKIPPED: cannot boot a systemd container here; step '{exc.step}' failed: {exc.detail}")


class Service:
    """The installed edgeguard service inside `container`, as an operator drives it."""

    def __init__(self, container: Container) -> None:
        self.c = container
        self.settings: dict[str, Any] = {}
        self.gid = 0

    # ------------------------------------------------------------- systemctl

    def systemctl(self, *args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return self.c.run(["systemctl", *args], check=check, timeout=timeout)

    def show(self, prop: str) -> str:
        return self.systemctl("show", "-p", prop, "--value", UNIT).stdout.strip()

    def main_pid(self) -> int:
        return int(self.show("MainPID") or 0)

    def active(self) -> str:
        """ActiveState/SubState, e.g. 'active/running'."""
        return f"{self.show('ActiveState')}/{self.show('SubState')}"

    def status_text(self) -> str:
        return self.show("StatusText")

    def ensure_running(self) -> None:
        """Start the service if it is not running (after clearing the start rate limit of earlier tests)."""
        self.systemctl("reset-failed", UNIT, check=False)
        if self.active() != "active/running":
            self.systemctl("start", UNIT)
        self.wait_active()

    def wait_active(self, timeout: float = 60.0) -> None:
        wait_until(lambda: self.active() == "active/running", timeout, "edgeguard active/running", 0.2, self.describe)

    def describe(self) -> str:
        """What to show when a wait fails: the unit's status and its journal's tail."""
        status = self.systemctl("status", "--no-pager", "-n", "0", UNIT, check=False).stdout
        tail = self.c.run(["journalctl", "-u", UNIT, "--no-pager", "-n", "60", "-o", "short-monotonic"], check=False)
        return f"{status}\njournal (tail):\n{tail.stdout}"

    # --------------------------------------------------------------- journal

    @staticmethod
    def mark() -> int:
        """Now, in the journal's microseconds (the container shares the host's clock)."""
        return time.time_ns() // 1000

    def journal(self, since: int = 0) -> list[dict[str, Any]]:
        """The unit's journal entries (systemd's own lines about it included) since `since`."""
        out = self.c.run(["journalctl", "-u", UNIT, "-o", "json", "--no-pager"], timeout=60).stdout
        entries = [json.loads(line) for line in out.splitlines() if line.strip()]
        return [e for e in entries if int(e.get("__REALTIME_TIMESTAMP", 0)) >= since]

    def messages(self, since: int = 0) -> list[str]:
        return [message(e) for e in self.journal(since)]

    def wait_message(self, text: str, since: int, timeout: float = 30.0) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((e for e in self.journal(since) if text in message(e)), None)

        entry: dict[str, Any] = wait_until(found, timeout, f"journal line {text!r}", 0.3, self.describe)
        return entry

    # ---------------------------------------------------------------- config

    def reload(self, **sections: dict[str, Any]) -> None:
        """Merge `sections` into the config and `systemctl reload`; returns once the daemon took it."""
        since = self.mark()
        self.configure(**sections)
        self.systemctl("reload", UNIT)
        self.wait_message("configuration reloaded", since)

    @contextlib.contextmanager
    def reconfigured(self, **sections: dict[str, Any]) -> Iterator[None]:
        """Run the block with `sections` merged in and reloaded; the config before comes back after."""
        before = copy.deepcopy(self.settings)
        try:
            self.reload(**sections)
            yield
        finally:
            self.settings = {}
            self.reload(**before)

    def configure(self, **sections: dict[str, Any]) -> None:
        """Merge `sections` into the config and write it (read at start and on reload)."""
        _merge(self.settings, sections)
        self.write_config(yaml.safe_dump(self.settings))

    def write_config(self, text: str) -> None:
        """Replace the config atomically, root:edgeguard 0640 as install.sh leaves it."""
        tmp = self.c.path(f"{CONFIG}.e2e-tmp")
        tmp.write_text(text, encoding="utf-8")
        os.chown(tmp, 0, self.gid)
        os.chmod(tmp, 0o640)
        os.replace(tmp, self.c.path(CONFIG))

    def read_config(self) -> dict[str, Any]:
        data: dict[str, Any] = yaml.safe_load(self.c.path(CONFIG).read_text(encoding="utf-8"))
        return data

    # ----------------------------------------------------------------- files

    def folder(self, name: str) -> Path:
        """The host's view of /var/lib/edgeguard/NAME."""
        return self.c.path(f"{STATE}/{name}")

    def drop(self, src: Path, name: str) -> None:
        """Upload `src` as incoming/NAME: written under a temporary name outside, then renamed in.

        Group edgeguard may read and write it, as an uploader in that group with umask 002 leaves
        it (the daemon claims a file by hard-linking it, which fs.protected_hardlinks allows only
        for files it may write).
        """
        tmp = self.c.path(f"{UPLOAD}/{name}")
        shutil.copyfile(src, tmp)
        os.chown(tmp, 0, self.gid)
        os.chmod(tmp, 0o660)
        os.rename(tmp, self.folder("incoming") / name)

    def jobs(self, name: str | None = None) -> list[dict[str, Any]]:
        """Ledger rows (all, or those of file `name`), read-only as `edgeguard status` does.

        Read inside the container: SQLite resolves symlinks in a path, so it cannot open the
        ledger through the host's /proc/PID/root view.
        """
        out = self.c.run(["python3", "-c", READ_LEDGER, f"{STATE}/state/ledger.sqlite3"], timeout=60).stdout
        rows: list[dict[str, Any]] = json.loads(out)
        return [r for r in rows if name is None or r["name"] == name]

    def wait_final(self, name: str, timeout: float = 90.0) -> dict[str, Any]:
        """Wait until the ledger has file `name` in a final state; returns its last row."""
        final = {"done", "duplicate", "failed", "withdrawn"}

        def reached() -> dict[str, Any] | None:
            rows = self.jobs(name)
            return rows[-1] if rows and rows[-1]["state"] in final else None

        row: dict[str, Any] = wait_until(reached, timeout, f"{name} to reach a final state", 0.3, self.describe)
        return row

    def wait_processing(self, name: str, timeout: float = 60.0) -> None:
        """Wait until systemd's status line says the daemon is working on `name`."""
        wait_until(
            lambda: self.status_text().startswith(f"processing {name} "),
            timeout,
            f"StatusText 'processing {name} ...'",
            0.1,
            self.describe,
        )


def message(entry: dict[str, Any]) -> str:
    """An entry's MESSAGE (journalctl gives non-UTF-8 ones as a list of bytes)."""
    value = entry.get("MESSAGE", "")
    return bytes(value).decode("utf-8", "replace") if isinstance(value, list) else str(value)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    """A booted container with the checkout's dependency wheels at /wheels; stopped and removed afterwards."""
    try:
        preflight()  # before building wheels a machine that cannot boot would not use
        wheels = wheelhouse(REPO)
    except BootError as exc:
        skip_loudly(exc)
    box = Container(tmp_path_factory.mktemp("nspawn"), binds_ro={wheels: WHEELS})
    try:
        try:
            took = box.boot()
        except BootError as exc:
            skip_loudly(exc)
        print(f"systemd container {box.name} booted in {took:.1f} s")
        yield box
    finally:
        box.stop()


@pytest.fixture(scope="module")
def service(container: Container) -> Service:
    """edgeguard installed with systemd/install.sh, yolox_nano provisioned, a quick test config; not started."""
    need(CANDIDATES / "yolox_nano.onnx")
    c = container
    began = time.monotonic()
    c.copy_tree_in(REPO, checkout_files(REPO), SRC)
    done = c.run(
        [f"{SRC}/systemd/install.sh"],
        # No pip cache: the container sees the host's ~/.cache/pip (its root is the host's), and
        # the install must work from /wheels alone, as on a fresh offline gateway.
        env={"EDGEGUARD_PIP_ARGS": f"--no-index --find-links {WHEELS}", "PIP_NO_CACHE_DIR": "1"},
        timeout=600,
    )
    print(done.stdout)
    svc = Service(c)
    svc.gid = int(c.run(["getent", "group", "edgeguard"]).stdout.split(":")[2])
    for name in ("yolox_nano.onnx", "coco.names"):
        c.copy_in(need(CANDIDATES / name), f"{MODEL_SOURCE}/{name}")
    c.run(
        [f"{VENV}/bin/edgeguard", "models", "fetch", "yolox_nano", "--from", MODEL_SOURCE, "-c", CONFIG],
        user="edgeguard",
        cwd=STATE,
        env={"EDGEGUARD_MODELS_DIR": f"{STATE}/models"},
    )
    svc.settings = svc.read_config()
    svc.configure(**SETTINGS)
    c.run([f"{VENV}/bin/edgeguard", "check-config", "-c", CONFIG], user="edgeguard", cwd=STATE)
    c.path(DROP_IN).parent.mkdir(parents=True, exist_ok=True)
    c.path(DROP_IN).write_text(DROP_IN_TEXT, encoding="utf-8")
    c.path(METRICS_DROP_IN).write_text(METRICS_DROP_IN_TEXT, encoding="utf-8")
    textfile = c.path(TEXTFILE)
    textfile.mkdir(parents=True, exist_ok=True)
    os.chown(textfile, 0, svc.gid)
    os.chmod(textfile, 0o775)
    c.run(["systemctl", "daemon-reload"])
    c.path(UPLOAD).mkdir(mode=0o700, parents=True, exist_ok=True)
    print(f"edgeguard installed in the container in {time.monotonic() - began:.1f} s")
    return svc


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Test media derived from ../shared (kept in a tmp folder, never in the repo)."""
    return tmp_path_factory.mktemp("systemd-media")


def long_video(media_dir: Path, tag: str) -> Path:
    """vtest.avi (795 frames, about 10 s of work) as an MP4 with its own bytes (a `tag` comment).

    Distinct bytes per test: the daemon would otherwise see a duplicate of an earlier output.
    """
    base = media_dir / "vtest.mp4"
    if not base.exists():
        tmp = media_dir / ".vtest.tmp.mp4"
        ffmpeg("-i", str(media("vtest.avi")), "-an", "-c:v", "libx264", "-preset", "ultrafast", str(tmp))
        tmp.rename(base)
    out = media_dir / f"{tag}.mp4"
    ffmpeg("-i", str(base), "-c", "copy", "-metadata", f"comment={tag}-{secrets.token_hex(4)}", str(out))
    return out


def ffmpeg(*args: str) -> None:
    if shutil.which("ffmpeg") is None:
        pytest.skip("SKIPPED: no ffmpeg on PATH (apt-get install ffmpeg) to make the test videos")
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", *args], check=True, timeout=300)
