"""The shipped systemd unit verifies, stays hardened, fits the daemon, and install.sh lays it out."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgeguard.config import DaemonConfig, load_config
from edgeguard.errors import ExitCode
from tests.conftest import REPO

UNIT = REPO / "systemd" / "edgeguard.service"
INSTALL = REPO / "systemd" / "install.sh"
SHIPPED_EXEC = "/opt/edgeguard/venv/bin/edgeguard"
MAX_EXPOSURE = 2.0


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> keys -> every value in order (units repeat keys, which configparser refuses)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(span: str) -> float:
    """A systemd time span as used in the unit ("90s", "5min", "2min 30s", "120")."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "ms": 0.001}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span):
        total += float(number) * units[unit]
    return total


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return parse_unit(UNIT)["Service"]


@pytest.fixture(scope="module")
def analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("SYSTEMD-ANALYZE IS NOT INSTALLED: the unit was NOT verified (apt-get install systemd)")
    return path


def _runnable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart= pointing at an executable that exists here (verify checks it)."""
    script = Path(sys.executable).with_name("edgeguard")
    exe = script if os.access(script, os.X_OK) else Path(shutil.which("true") or "/bin/true")
    text = UNIT.read_text(encoding="utf-8")
    assert f"ExecStart={SHIPPED_EXEC} " in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(f"ExecStart={SHIPPED_EXEC} ", f"ExecStart={exe} "), encoding="utf-8")
    return copy


# ------------------------------------------------------------------------------- systemd-analyze


def test_unit_verifies(analyze: str, tmp_path: Path) -> None:
    copy = _runnable_copy(tmp_path)
    proc = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=120, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    # Problems in unrelated units of this machine are not ours; anything about this unit is.
    ours = [line for line in output.splitlines() if "edgeguard" in line]
    assert not ours, "\n".join(ours)


def test_exposure_is_low(analyze: str) -> None:
    proc = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = proc.stdout + proc.stderr
    match = re.search(r"Overall exposure level for edgeguard\.service:\s*(\d+(?:\.\d+)?)", output)
    assert match, output
    exposure = float(match.group(1))
    print(f"systemd-analyze security --offline=true: exposure {exposure}")
    assert exposure <= MAX_EXPOSURE, output


# ------------------------------------------------------------------------------- what the daemon relies on


def test_unit_fits_the_daemon(service: dict[str, list[str]]) -> None:
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["ExecStart"] == [f"{SHIPPED_EXEC} run -c /etc/edgeguard/edgeguard.yaml"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["Restart"] == ["on-failure"]
    assert seconds(service["WatchdogSec"][-1]) >= 60  # a Mask R-CNN frame is ~2 s on a gateway CPU
    # Config and setup errors need an operator: restarting them would only loop.
    prevented = {int(code) for value in service["RestartPreventExitStatus"] for code in value.split()}
    assert {int(ExitCode.USAGE), int(ExitCode.SETUP)} <= prevented
    assert int(ExitCode.INTERNAL) not in prevented
    # systemd must not SIGKILL the daemon while it still finishes or rolls back the current file.
    assert seconds(service["TimeoutStopSec"][-1]) > DaemonConfig().stop_grace + 10
    assert service["WorkingDirectory"] == ["/var/lib/edgeguard"]
    assert service["User"] == ["edgeguard"]
    assert service["Group"] == ["edgeguard"]


def test_unit_is_sandboxed(service: dict[str, list[str]]) -> None:
    expected = {
        "ProtectSystem": "strict",
        "ReadWritePaths": "/var/lib/edgeguard",
        "StateDirectory": "edgeguard",
        "PrivateNetwork": "yes",
        "IPAddressDeny": "any",
        "RestrictAddressFamilies": "AF_UNIX",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectHome": "yes",
        "ProtectProc": "invisible",
        "ProcSubset": "pid",
        "SystemCallArchitectures": "native",
        "UMask": "0027",
    }
    for key, value in expected.items():
        assert service.get(key) == [value], key
    assert service["SystemCallFilter"][0] == "@system-service"
    denied = " ".join(v for v in service["SystemCallFilter"][1:] if v.startswith("~"))
    assert "@privileged" in denied
    assert "@resources" in denied
    # OpenCV refuses an ocl4dnn cache folder that does not exist yet: systemd must create it.
    assert "edgeguard/opencv" in service["CacheDirectory"][0].split()
    env = " ".join(service["Environment"])
    for var in ("XDG_CACHE_HOME=/var/cache/edgeguard", "POCL_CACHE_DIR=", "OPENCV_OCL4DNN_CONFIG_PATH="):
        assert var in env


# ------------------------------------------------------------------------------- install.sh


def _install(root: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "EDGEGUARD_ROOT": str(root),
        "EDGEGUARD_SKIP_PIP": "1",
        # The interpreter running the tests: /usr/bin/python3 may be older elsewhere.
        "PYTHON": sys.executable,
    }
    env.pop("DESTDIR", None)
    return subprocess.run(["bash", str(INSTALL)], env=env, capture_output=True, text=True, timeout=300, check=False)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_into_a_temporary_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    proc = _install(root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "not creating user" in proc.stdout

    venv = root / "opt/edgeguard/venv"
    assert (venv / "bin/python").exists()
    shipped = sorted(p.name for p in (REPO / "models").glob("*.yaml"))
    assert shipped
    share = venv / "share/edgeguard/models"
    assert sorted(p.name for p in share.glob("*.yaml")) == shipped
    for name in shipped:
        assert (share / name).read_bytes() == (REPO / "models" / name).read_bytes()

    unit = root / "etc/systemd/system/edgeguard.service"
    assert unit.read_bytes() == UNIT.read_bytes()
    if shutil.which("systemd-analyze"):
        assert "systemd-analyze verify: ok" in proc.stdout

    config = root / "etc/edgeguard/edgeguard.yaml"
    assert _mode(config) == 0o640
    assert _mode(config.parent) == 0o750
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    assert data["paths"]["incoming"] == "incoming"
    original = yaml.safe_load((REPO / "config/edgeguard.yaml").read_text(encoding="utf-8"))
    original["paths"]["incoming"] = "incoming"
    assert data == original  # nothing but the drop folder changed
    load_config(config)  # still a valid config

    state = root / "var/lib/edgeguard"
    assert _mode(state) == 0o750
    assert _mode(state / "incoming") == 0o2770
    for name in ("output", "quarantine", "failed", "processed", "work", "state", "models"):
        assert _mode(state / name) == 0o750, name

    assert "edgeguard models fetch" in proc.stdout
    assert "systemctl enable --now edgeguard" in proc.stdout


def test_install_keeps_an_existing_config_and_refreshes_the_rest(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert _install(root).returncode == 0
    config = root / "etc/edgeguard/edgeguard.yaml"
    config.write_text("# the operator's own\ndetector:\n  target: opencl\n", encoding="utf-8")
    stale = root / "opt/edgeguard/venv/share/edgeguard/models/removed_model.yaml"
    stale.write_text("name: removed_model\n", encoding="utf-8")
    unit = root / "etc/systemd/system/edgeguard.service"
    unit.write_text("[Service]\n", encoding="utf-8")

    proc = _install(root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert config.read_text(encoding="utf-8") == "# the operator's own\ndetector:\n  target: opencl\n"
    assert "keeping the existing" in proc.stdout
    assert not stale.exists()
    assert unit.read_bytes() == UNIT.read_bytes()


# ------------------------------------------------------------------------------- the cluster drop-in

CLUSTER_DROPIN = REPO / "systemd" / "cluster.conf"


def _verify_with_dropin(analyze: str, tmp_path: Path, extra: str = "") -> list[str]:
    """systemd-analyze verify of the unit with the cluster drop-in beside it; the lines about edgeguard."""
    copy = _runnable_copy(tmp_path)
    dropins = tmp_path / f"{UNIT.name}.d"
    dropins.mkdir(exist_ok=True)
    (dropins / CLUSTER_DROPIN.name).write_text(CLUSTER_DROPIN.read_text(encoding="utf-8") + extra, encoding="utf-8")
    proc = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=120, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    return [line for line in output.splitlines() if "edgeguard" in line]


def test_cluster_dropin_verifies(analyze: str, tmp_path: Path) -> None:
    # The drop-in is read (a key systemd does not know in it is reported) ...
    assert any("cluster.conf" in line for line in _verify_with_dropin(analyze, tmp_path, "NotAKey=1\n"))
    # ... and as shipped, nothing in it or the unit is reported.
    assert _verify_with_dropin(analyze, tmp_path) == []


def test_cluster_dropin_opens_only_the_network(service: dict[str, list[str]]) -> None:
    dropin = parse_unit(CLUSTER_DROPIN)["Service"]
    assert dropin["PrivateNetwork"] == ["no"]
    assert "localhost" in dropin["IPAddressAllow"] and "any" not in dropin["IPAddressAllow"]
    # The unit's deny-all stays: the drop-in only adds ranges to allow, and resets nothing else.
    assert service["IPAddressDeny"] == ["any"] and "IPAddressDeny" not in dropin
    assert set(dropin) <= {
        "PrivateNetwork",
        "RestrictAddressFamilies",
        "IPAddressAllow",
        "ReadWritePaths",
        "ProcSubset",
        "ProtectProc",
    }
