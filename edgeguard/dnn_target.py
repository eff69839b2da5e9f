"""DNN backends/targets: what the YAML names mean and whether they really run here.

OpenCV quietly falls back to the CPU when an OpenCL device is not a GPU (unless
OPENCV_DNN_OPENCL_ALLOW_ALL_DEVICES=1) and pip builds have no CUDA at all, so a
target is only trusted after a probe network ran on it without OpenCV printing
a fallback warning and gave the CPU's answer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np

from edgeguard.errors import TargetUnavailableError
from edgeguard.settings import Target

log = logging.getLogger(__name__)

TARGETS: dict[str, tuple[int, int]] = {
    "cpu": (cv2.dnn.DNN_BACKEND_OPENCV, cv2.dnn.DNN_TARGET_CPU),
    "opencl": (cv2.dnn.DNN_BACKEND_OPENCV, cv2.dnn.DNN_TARGET_OPENCL),
    "opencl_fp16": (cv2.dnn.DNN_BACKEND_OPENCV, cv2.dnn.DNN_TARGET_OPENCL_FP16),
    "cuda": (cv2.dnn.DNN_BACKEND_CUDA, cv2.dnn.DNN_TARGET_CUDA),
    "cuda_fp16": (cv2.dnn.DNN_BACKEND_CUDA, cv2.dnn.DNN_TARGET_CUDA_FP16),
}

# A weightless one-layer Caffe net: enough to exercise a backend, no file needed.
_PROBE_NET = b"""
input: "data"
input_dim: 1
input_dim: 3
input_dim: 32
input_dim: 32
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
"""

_FALLBACK_WORDS = ("switching to", "fallback", "not supported", "is not available")


@dataclass(frozen=True)
class TargetReport:
    name: str
    ok: bool
    detail: str


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Capture what native code writes to fd 2 (OpenCV's own warnings)."""
    out: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode("utf-8", "replace"))


def _why_not(name: str) -> str | None:
    """Reasons known before running anything."""
    if name.startswith("cuda"):
        if cv2.cuda.getCudaEnabledDeviceCount() == 0:
            return "this OpenCV build has no CUDA support or sees no CUDA device"
    elif name.startswith("opencl"):
        if not cv2.ocl.haveOpenCL():
            return "no OpenCL runtime found (install an ICD, e.g. pocl-opencl-icd)"
        if not cv2.ocl.useOpenCL():
            return "OpenCL is disabled (set OPENCV_OPENCL_DEVICE, e.g. ':CPU:' or ':GPU:')"
        dev = cv2.ocl.Device.getDefault()
        allow_all = os.environ.get("OPENCV_DNN_OPENCL_ALLOW_ALL_DEVICES", "0") not in ("", "0")
        if dev.type() != cv2.ocl.Device_TYPE_GPU and not allow_all:
            return (
                f"OpenCL device {dev.name()!r} is not a GPU and OpenCV would use the CPU instead"
                " (set OPENCV_DNN_OPENCL_ALLOW_ALL_DEVICES=1 to allow it)"
            )
        if name == "opencl_fp16" and not dev.isExtensionSupported("cl_khr_fp16"):
            return f"OpenCL device {dev.name()!r} lacks cl_khr_fp16"
    return None


@cache
def probe(name: str) -> TargetReport:
    """Run the probe net on `name` and compare with the CPU result."""
    reason = _why_not(name)
    if reason:
        return TargetReport(name, False, reason)
    backend, target = TARGETS[name]
    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32) - 0.5
    try:
        ref_net = cv2.dnn.readNetFromCaffe(np.frombuffer(_PROBE_NET, np.uint8))
        ref_net.setInput(x)
        ref = ref_net.forward()
        net = cv2.dnn.readNetFromCaffe(np.frombuffer(_PROBE_NET, np.uint8))
        net.setPreferableBackend(backend)
        net.setPreferableTarget(target)
        with _captured_stderr() as err:
            net.setInput(x)
            got = net.forward()
    except cv2.error as exc:
        return TargetReport(name, False, f"OpenCV error: {str(exc).strip().splitlines()[-1]}")
    warning = "".join(err).strip()
    if any(w in warning.lower() for w in _FALLBACK_WORDS):
        return TargetReport(name, False, f"OpenCV fell back: {warning.splitlines()[-1]}")
    if got.shape != ref.shape or not np.allclose(got, ref, atol=1e-2):
        return TargetReport(name, False, "results differ from the CPU")
    detail = "OpenCV CPU backend"
    if name.startswith("opencl"):
        detail = f"OpenCL device {cv2.ocl.Device.getDefault().name()}"
    elif name.startswith("cuda"):
        detail = f"{cv2.cuda.getCudaEnabledDeviceCount()} CUDA device(s)"
    return TargetReport(name, True, detail)


def choose(name: Target, on_unavailable: str) -> str:
    """The target to run on, after checking `name` really works here."""
    report = probe(name)
    if report.ok:
        return name
    if on_unavailable == "cpu":
        log.warning("detector.target %s is unavailable here (%s); running on cpu", name, report.detail)
        return "cpu"
    raise TargetUnavailableError(
        f"detector.target {name} is unavailable here: {report.detail}"
        " (set detector.on_unavailable: cpu to run on the CPU instead)"
    )


def apply(net: cv2.dnn.Net, name: str) -> None:
    backend, target = TARGETS[name]
    net.setPreferableBackend(backend)
    net.setPreferableTarget(target)
