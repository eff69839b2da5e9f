"""`edgeguard doctor`: can this machine run the configured setup?"""

from __future__ import annotations

import sys

import av
import cv2

from edgeguard import dnn_target
from edgeguard.config import Config
from edgeguard.detectors import model_files
from edgeguard.errors import EdgeguardError, ExitCode


def _line(ok: bool | None, what: str, detail: str) -> None:
    mark = {True: "ok  ", False: "FAIL", None: "--  "}[ok]
    print(f"{mark} {what:24} {detail}", file=sys.stdout)


def h264_encoder() -> str | None:
    for name in ("libx264", "h264"):
        try:
            av.codec.Codec(name, "w")
        except (av.codec.codec.UnknownCodecError, ValueError):
            continue
        return name
    return None


def run_doctor(cfg: Config) -> int:
    """Print one line per check; exit non-zero if the configured setup cannot run."""
    fatal = False
    _line(None, "OpenCV", cv2.__version__)
    _line(None, "FFmpeg (PyAV)", f"{av.ffmpeg_version_info} (PyAV {av.__version__})")
    enc = h264_encoder()
    _line(enc is not None, "H.264 encoder", enc or "none: PyAV's FFmpeg cannot write H.264")
    fatal |= enc is None
    if cv2.ocl.haveOpenCL():
        _line(None, "OpenCL device", cv2.ocl.Device.getDefault().name() or "(none selected)")
    else:
        _line(None, "OpenCL device", "no OpenCL runtime")
    for name in dnn_target.TARGETS:
        report = dnn_target.probe(name)
        configured = name == cfg.detector.target
        label = f"target {name}" + (" (configured)" if configured else "")
        _line(report.ok, label, report.detail)
        if configured and not report.ok and cfg.detector.on_unavailable == "fail":
            fatal = True
    try:
        manifest, files = model_files(cfg)
        _line(True, f"model {manifest.name}", ", ".join(p.name for p in files.values()) + " present and verified")
    except EdgeguardError as exc:
        _line(False, f"model {cfg.detector.model}", str(exc))
        fatal = True
    return ExitCode.SETUP if fatal else ExitCode.OK
