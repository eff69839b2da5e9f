"""DNN targets: unavailable ones fail clearly or fall back on request; OpenCL on PoCL really runs.

OpenCV reads OPENCV_OPENCL_DEVICE and OPENCV_DNN_OPENCL_ALLOW_ALL_DEVICES once, when cv2 is
imported, so the OpenCL cases run in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeguard import dnn_target
from edgeguard.errors import ExitCode, TargetUnavailableError
from tests.conftest import REPO, media
from tests.support.cli import YOLOX, cli, error_lines

OPENCL_ENV = ("OPENCV_OPENCL_DEVICE", "OPENCV_DNN_OPENCL_ALLOW_ALL_DEVICES")


def cuda_really_works() -> bool:
    return dnn_target.probe("cuda").ok


@pytest.fixture
def no_cuda() -> None:
    if cuda_really_works():
        pytest.skip("CUDA REALLY WORKS ON THIS MACHINE: the unavailable-CUDA behaviour cannot be tested here")


@pytest.mark.parametrize("target", ["cuda", "cuda_fp16"])
def test_unavailable_cuda_fails_with_one_clear_line(
    target: str, no_cuda: None, yolox_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "out"
    code, out, err = cli(
        capsys, "protect", media("city.jpg"), "--out-dir", out_dir, *YOLOX,
        "--set", f"detector.target={target}", "--set", "detector.on_unavailable=fail",
    )  # fmt: skip
    assert code == ExitCode.SETUP == 3
    assert out == ""
    assert err.strip().splitlines() == error_lines(err), "nothing but the one error line"
    (line,) = error_lines(err)
    assert f"detector.target {target} is unavailable" in line
    assert "CUDA" in line
    assert "on_unavailable: cpu" in line  # tells the user the way out
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


@pytest.mark.parametrize("target", ["cuda", "cuda_fp16"])
def test_unavailable_cuda_falls_back_to_cpu_with_a_warning(
    target: str, no_cuda: None, yolox_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dst = tmp_path / "city.jpg"
    code, out, err = cli(
        capsys, "protect", media("city.jpg"), "-o", dst, "--json", *YOLOX,
        "--set", f"detector.target={target}", "--set", "detector.on_unavailable=cpu",
    )  # fmt: skip
    assert code == 0, err
    assert dst.is_file()
    summary = json.loads(out)
    assert summary["target"] == "cpu"
    assert summary["detections"] >= 5
    warnings = [line for line in err.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1, err
    assert f"detector.target {target} is unavailable" in warnings[0] and "running on cpu" in warnings[0]
    assert error_lines(err) == []


def test_choose_and_probe_in_process(no_cuda: None) -> None:
    assert dnn_target.probe("cpu").ok
    assert dnn_target.choose("cpu", "fail") == "cpu"
    assert dnn_target.choose("cuda", "cpu") == "cpu"
    with pytest.raises(TargetUnavailableError) as info:
        dnn_target.choose("cuda", "fail")
    assert info.value.exit_code == 3
    report = dnn_target.probe("cuda")
    assert not report.ok and "CUDA" in report.detail


# ------------------------------------------------------------------ OpenCL (PoCL) in a fresh interpreter

_SCRIPT = r"""
import json, sys
import cv2
from edgeguard import dnn_target
from edgeguard.config import load_config
from edgeguard.detectors.factory import create_detector

image = cv2.imread(sys.argv[1])
out = {"probe": {}, "runs": {}}
for name in ("cpu", "opencl"):
    report = dnn_target.probe(name)
    out["probe"][name] = {"ok": report.ok, "detail": report.detail}
if sys.argv[2] == "detect":
    for name in ("cpu", "opencl"):
        detector = create_detector(load_config(None, ["detector.model=yolox_nano", f"detector.target={name}"]))
        det = detector.detect(image.copy())
        out["runs"][name] = {"target": detector.target, "boxes": det.boxes.tolist(), "scores": det.scores.tolist()}
print("RESULT " + json.dumps(out))
"""


def opencl_missing() -> str | None:
    """Why no OpenCL device can be used here (a skip reason naming what to install), or None."""
    clinfo = shutil.which("clinfo")
    if clinfo is None:
        return (
            "NO OPENCL DEVICE CHECK: clinfo is not installed; install pocl-opencl-icd and clinfo (apt, or `make deps`)"
            " to test the opencl target"
        )
    listing = subprocess.run([clinfo, "-l"], capture_output=True, text=True, check=False).stdout
    if "Platform" not in listing:
        return (
            "NO OPENCL DEVICE: `clinfo -l` lists no platform; install pocl-opencl-icd (apt, or `make deps`)"
            " to test the opencl target"
        )
    return None


@pytest.fixture(scope="module")
def opencl_platform() -> None:
    reason = opencl_missing()
    if reason is not None:
        pytest.skip(reason)


def run_probe(env_extra: dict[str, str], mode: str, models_dir: Path | None) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k not in OPENCL_ENV}
    env.update(env_extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if models_dir is not None:
        env["EDGEGUARD_MODELS_DIR"] = str(models_dir)
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(media("city.jpg")), mode],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    result: dict[str, object] = json.loads(line.removeprefix("RESULT "))
    return result


def iou(a: list[int], b: list[int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def test_opencl_on_pocl_agrees_with_cpu(opencl_platform: None, models_dir: Path) -> None:
    result = run_probe(
        {"OPENCV_OPENCL_DEVICE": ":CPU:", "OPENCV_DNN_OPENCL_ALLOW_ALL_DEVICES": "1"}, "detect", models_dir
    )
    probe = result["probe"]
    assert isinstance(probe, dict)
    assert probe["opencl"]["ok"], probe["opencl"]["detail"]
    assert probe["opencl"]["detail"].startswith("OpenCL device")
    runs = result["runs"]
    assert isinstance(runs, dict)
    cpu, ocl = runs["cpu"], runs["opencl"]
    assert ocl["target"] == "opencl", "the detector was not loaded on the OpenCL target"
    assert len(cpu["boxes"]) >= 5
    assert abs(len(ocl["boxes"]) - len(cpu["boxes"])) <= 1
    unmatched = [b for b in cpu["boxes"] if max((iou(b, o) for o in ocl["boxes"]), default=0.0) <= 0.9]
    assert len(unmatched) <= abs(len(ocl["boxes"]) - len(cpu["boxes"])), unmatched


@pytest.mark.parametrize(
    ("env", "why"),
    [
        ({}, "OPENCV_OPENCL_DEVICE"),
        ({"OPENCV_OPENCL_DEVICE": ":CPU:"}, "OPENCV_DNN_OPENCL_ALLOW_ALL_DEVICES=1"),
    ],
    ids=["no-env", "cpu-device-not-allowed"],
)
def test_opencl_without_the_env_is_reported_unavailable(opencl_platform: None, env: dict[str, str], why: str) -> None:
    probe = run_probe(env, "probe", None)["probe"]
    assert isinstance(probe, dict)
    assert probe["cpu"]["ok"]
    assert not probe["opencl"]["ok"]
    assert why in probe["opencl"]["detail"], "the report must say what to set"


def test_opencl_unavailable_fails_the_cli(
    opencl_platform: None, yolox_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if dnn_target.probe("opencl").ok:
        pytest.skip("OPENCL IS USABLE IN THIS PROCESS (OPENCV_OPENCL_DEVICE set by the environment)")
    code, _, err = cli(capsys, "protect", media("city.jpg"), "-o", tmp_path / "x.jpg", *YOLOX,
                       "--set", "detector.target=opencl")  # fmt: skip
    assert code == 3
    (line,) = error_lines(err)
    assert "detector.target opencl is unavailable" in line
    assert not (tmp_path / "x.jpg").exists()
