"""Memory, images and the daemon: the measurements that end a full bench run."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

from bench.costed import standin_set
from bench.paths import IMAGES, SHARED
from edgeguard.config import load_config
from edgeguard.detectors.base import Detector
from edgeguard.detectors.factory import create_detector
from edgeguard.engine import Engine
from edgeguard.media import video as video_io


def memory_check(models_dir: Path, clip: Path, cache: Path) -> tuple[int, int, int, int]:
    """Peak RSS of fresh processes protecting a clip and one 10x longer (yolox_nano, default)."""
    long_clip = cache / f"{clip.stem}-x10.mp4"
    if not long_clip.exists():
        concat(clip, long_clip, 10)
    out = []
    for src in (clip, long_clip):
        # VmHWM, not ru_maxrss: the latter keeps the forking parent's peak across exec.
        code = (
            "from pathlib import Path; from edgeguard.config import load_config;"
            "from edgeguard.engine import Engine;"
            "e=Engine(load_config(None,['detector.model=yolox_nano']));"
            f"r=e.protect_file(Path({str(src)!r}), Path({str(cache / 'mem-out.mp4')!r}));"
            "hwm=[l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0];"
            "print(r.frames, hwm)"
        )
        env = {**os.environ, "EDGEGUARD_MODELS_DIR": str(models_dir)}
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        n, kb = res.stdout.split()
        out += [int(n), int(kb) * 1024]
    return out[0], out[1], out[2], out[3]


def concat(src: Path, dst: Path, times: int) -> None:
    """`src` repeated `times` times with continuous timestamps."""
    tmp = dst.with_suffix(".tmp.mp4")
    with video_io.VideoReader(src, max_pixels=1 << 28) as r:
        info = r.info
    step = None
    with video_io.VideoWriter(tmp, info, source=None, crf=12, preset="veryfast", audio="strip") as w:
        offset = 0
        for _ in range(times):
            last = 0
            with video_io.VideoReader(src, max_pixels=1 << 28) as r:
                for f in r.frames():
                    pts = f.pts or 0
                    if step is None and pts:
                        step = pts
                    w.write(video_io.Frame(f.index, offset + pts, f.image), f.image)
                    last = pts
            offset += last + (step or 1)
    tmp.rename(dst)


def bare_rate(detector: Detector) -> float:
    """Images per second of the detector alone on the decoded bench images."""
    decoded = [cv2.imread(str(SHARED / "media" / n)) for n in IMAGES if (SHARED / "media" / n).exists()]
    detector.detect(decoded[0])  # warm-up
    t0 = time.perf_counter()
    for img in decoded:
        detector.detect(img.copy())
    return len(decoded) / (time.perf_counter() - t0)


def images_rate(engine: Engine, out: Path) -> tuple[float, float]:
    """Images per second through the engine (model loaded once) vs the bare detector."""
    pure = bare_rate(engine.detector)
    paths = [SHARED / "media" / n for n in IMAGES if (SHARED / "media" / n).exists()]
    t0 = time.perf_counter()
    for p in paths:
        engine.protect_file(p, out / p.name)
    full = len(paths) / (time.perf_counter() - t0)
    return full, pure


def daemon_rate(models_dir: Path, cache: Path, detector_yaml: str, copies: int) -> tuple[int, float]:
    """Images per second through the real daemon: from READY=1 to the last output."""
    import shutil
    import socket

    root = Path(tempfile.mkdtemp(prefix="daemon-", dir=cache))
    incoming = root / "incoming"
    incoming.mkdir()
    paths = [SHARED / "media" / n for n in IMAGES if (SHARED / "media" / n).exists()]
    for i in range(copies):
        for p in paths:
            # Different bytes per copy, so the ledger does not treat them as duplicates.
            (incoming / f"{i}-{p.name}").write_bytes(p.read_bytes() + bytes([i]))
    n = len(paths) * copies
    cfg = root / "edgeguard.yaml"
    cfg.write_text(
        f"detector: {detector_yaml}\n"
        f"paths: {{incoming: {incoming}, output: {root}/output, quarantine: {root}/q, failed: {root}/failed,"
        f" processed: {root}/p, work: {root}/work, state: {root}/state}}\n"
        "watch: {settle_seconds: 0, rescan_seconds: 1}\ndaemon: {min_free_mb: 1}\n",
        encoding="utf-8",
    )
    sock_path = root / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(120)
    env = {**os.environ, "EDGEGUARD_MODELS_DIR": str(models_dir), "NOTIFY_SOCKET": str(sock_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeguard", "run", "-c", str(cfg)], env=env, stderr=subprocess.DEVNULL
    )
    try:
        while b"READY=1" not in sock.recv(4096):
            pass
        t0 = time.perf_counter()
        output = root / "output"
        sock.setblocking(False)
        while not (output.exists() and len(list(output.iterdir())) >= n):
            if proc.poll() is not None:
                raise RuntimeError("the daemon exited early")
            # Read its notifications as systemd would (STATUS, WATCHDOG).
            with contextlib.suppress(BlockingIOError):
                while sock.recv(4096):
                    pass
            time.sleep(0.05)
        return n, n / (time.perf_counter() - t0)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        sock.close()
        shutil.rmtree(root, ignore_errors=True)


def measure_all(
    models_dir: Path, cache: Path, clip: Path, yolox: Engine, mr: Engine | None, standin: Path
) -> list[str]:
    """Memory, images and daemon rates, as report lines."""
    out = cache / "out"
    n1, rss1, n10, rss10 = memory_check(models_dir, clip, cache)
    lines = [
        f"Memory (fresh processes, yolox_nano default): {n1} frames peak {rss1 / 2**20:.0f} MB; "
        f"{n10} frames peak {rss10 / 2**20:.0f} MB ({100 * (rss10 - rss1) / rss1:+.1f}%)."
    ]
    images = {"yolox_nano": images_rate(yolox, out)}
    if mr is not None:
        images["mask_rcnn"] = images_rate(mr, out)
    for model, (full, pure) in images.items():
        lines.append(
            f"Images through the engine with the model loaded once ({model}): {full:.2f} images/s; "
            f"bare inference on the same images: {pure:.2f} images/s ({100 * full / pure:.0f}%)."
        )
    daemons = {"yolox_nano": (*daemon_rate(models_dir, cache, "{model: yolox_nano}", 4), images["yolox_nano"][1])}
    if mr is not None:
        files = ", ".join(s.replace("detector.files.", "").replace("=", ": ") for s in standin_set(standin))
        plain = create_detector(load_config(None, standin_set(standin)))
        daemons["mask_rcnn"] = (*daemon_rate(models_dir, cache, f"{{files: {{{files}}}}}", 2), bare_rate(plain))
    for model, (n, ips, pure) in daemons.items():
        lines.append(
            f"The daemon (`edgeguard run`, {model}, {n} images dropped at once, from READY=1 to the last output, "
            f"with claim, sha256, fsyncs, output check and ledger): {ips:.2f} images/s "
            f"({100 * ips / pure:.0f}% of the bare detector's {pure:.2f} images/s)."
        )
    return lines
