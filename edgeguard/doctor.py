"""`edgeguard doctor`: can this machine run the configured setup?"""

from __future__ import annotations

import sys

import av
import cv2

from edgeguard import __version__, dnn_target, seal
from edgeguard.config import Config
from edgeguard.detectors.factory import model_files
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


def _sealing(cfg: Config, blockers: list[str]) -> None:
    """Whether originals are sealed, and to which keys (by fingerprint, as status and records name them)."""
    what = [k for k, on in (("originals", cfg.daemon.originals == "seal"), ("failed", cfg.daemon.seal_failed)) if on]
    if not what:
        _line(None, "sealing", f"off (daemon.originals: {cfg.daemon.originals})")
        return
    try:
        keys = cfg.seal.keys()
    except ValueError as exc:  # a recipients file changed or vanished since the config was checked
        _line(False, "sealing", f"seal.recipients: {exc}")
        blockers.append("the sealing keys cannot be read")
        return
    prints = ", ".join(seal.fingerprint(k) for k in keys)
    _line(True, "sealing", f"{' and '.join(what)} sealed to {len(keys)} key(s): {prints}")


def _cluster(cfg: Config, blockers: list[str]) -> None:
    """The cluster's nodes: their versions, their actors, and whether the model reached them intact."""
    c = cfg.cluster
    if not c.on:
        _line(None, "cluster", "off (cluster.address is empty: files are protected on this machine)")
        return
    from edgeguard.cluster import Unavailable
    from edgeguard.cluster.client import ClusterEngine

    try:
        engine = ClusterEngine(cfg)
    except EdgeguardError as exc:
        _line(False, "cluster", str(exc))
        blockers.append("the cluster cannot be used")
        return
    try:
        nodes = engine.nodes()
    except Unavailable as exc:
        if c.mode == "only":
            _line(False, "cluster", f"{c.address}: {exc}")
            blockers.append("the cluster is unavailable (cluster.mode: only)")
        else:
            _line(None, "cluster", f"{c.address}: {exc} (cluster.mode: prefer: files are protected here meanwhile)")
        return
    finally:
        engine.close()
    room = sum(n["room"] for n in nodes if n["about"] is not None)
    _line(room > 0, "cluster", f"{c.address}: {len(nodes)} nodes, room for {room} actors (mode {c.mode})")
    if not room and c.mode == "only":
        blockers.append("no node of the cluster can run an actor (cluster.mode: only)")
    for node in nodes:
        what = f"node {node['address']} {node['node'][:8]}"
        about = node["about"]
        if about is None:
            _line(False, what, f"cannot be used: {node['problem']}")
            continue
        same_model = about["weights"] == dict(engine.weights)
        same_version = about["edgeguard"] == __version__
        arrived = "received, sha256 verified" if same_model else "DIFFERS from this machine's"
        version = f"edgeguard {about['edgeguard']}" + ("" if same_version else f" (this machine: {__version__})")
        if node["room"]:
            actors = f"room for {node['room']} actor(s)"
        else:
            actors = f"no room for an actor ({node['cpus']:g} CPUs, one takes {c.actor_cpus:g})"
        detail = f"{version}, Ray {about['ray']}, {actors}, model {engine.model_name} {arrived}"
        _line((same_model and same_version) if node["room"] else None, what, detail)


def run_doctor(cfg: Config) -> int:
    """Print one line per check, and last whether the configured setup can run; non-zero if not."""
    blockers: list[str] = []
    _line(None, "OpenCV", cv2.__version__)
    _line(None, "FFmpeg (PyAV)", f"{av.ffmpeg_version_info} (PyAV {av.__version__})")
    enc = h264_encoder()
    _line(enc is not None, "H.264 encoder", enc or "none: PyAV's FFmpeg cannot write H.264")
    if enc is None:
        blockers.append("no H.264 encoder")
    if cv2.ocl.haveOpenCL():
        _line(None, "OpenCL device", cv2.ocl.Device.getDefault().name() or "(none selected)")
    else:
        _line(None, "OpenCL device", "no OpenCL runtime")
    wanted = cfg.detector.target
    runs_on = wanted
    for name in dnn_target.TARGETS:
        report = dnn_target.probe(name)
        if name != wanted:
            # Nobody asked for it: information, not a failure.
            _line(None, f"target {name}", report.detail if report.ok else f"not available here: {report.detail}")
        elif report.ok:
            _line(True, f"target {name} (configured)", report.detail)
        elif cfg.detector.on_unavailable == "cpu":
            _line(None, f"target {name} (configured)", f"not available here, falls back to cpu: {report.detail}")
            runs_on = "cpu"
        else:
            _line(False, f"target {name} (configured)", report.detail)
            blockers.append(f"target {name} is not available (detector.on_unavailable: fail)")
    try:
        manifest, files = model_files(cfg)
        _line(True, f"model {manifest.name}", ", ".join(p.name for p in files.values()) + " present and verified")
    except EdgeguardError as exc:
        _line(False, f"model {cfg.detector.model}", str(exc))
        blockers.append(f"model {cfg.detector.model} is not ready")
    _sealing(cfg, blockers)
    _cluster(cfg, blockers)
    if blockers:
        print(f"the configured setup cannot run here: {'; '.join(blockers)}", file=sys.stdout)
        return ExitCode.SETUP
    where = f", and on the cluster at {cfg.cluster.address} (mode {cfg.cluster.mode})" if cfg.cluster.on else ""
    print(f"the configured setup can run here: model {cfg.detector.model} on {runs_on}{where}", file=sys.stdout)
    return ExitCode.OK
