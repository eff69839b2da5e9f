"""`make bench`: edgeguard's profiles against the seed's every-frame loop, side by side.

One process runs every configuration on every clip, clip by clip, so all of
them share the machine's state. Speed for Mask R-CNN comes from the stand-in
weights (the real model's cost); privacy coverage needs a real detector, so
every profile is also run with yolox_nano and compared, frame by frame, with
yolox_nano's own every-frame loop.

    python -m bench.run [--frames 96] [--clips dos.mp4 ...] [--out bench/results/latest.md]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edgeguard.config import Config, load_config
from edgeguard.detections import Detections
from edgeguard.detectors import Detector, create_detector, model_files
from edgeguard.detectors.maskrcnn import MaskRCNN
from edgeguard.engine import Engine
from edgeguard.media import video as video_io
from edgeguard.protection import Mask, hide, rasterize

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGEGUARD_SHARED", REPO.parent / "shared")).resolve()
# Fixed cameras like a gateway's (pedestrians, example_02, vtest), the seed's own sample (a
# head-worn camera over a desk), and two handheld clips.
CLIPS = [
    "pedestrians.mp4",
    "example_02.mp4",
    "vtest.avi",
    "croped_mini_subject_2_typeset.MP4",
    "dos.mp4",
    "ecuador.mp4",
]
IMAGES = ["city.jpg", "000000005001.jpg", "000000038829.jpg", "000000465822.jpg", "messi5.jpg"]

# Named profiles: overrides on top of the shipped defaults. Only `default` is what users get.
PROFILES: dict[str, list[str]] = {
    "default": [],
    # Boxes instead of masks: Mask R-CNN skips its mask branch.
    "boxes": ["protect.shape=box"],
    # Opt-in, trades coverage for speed: no motion check, a keyframe a second.
    "fast-unsafe": ["temporal.motion_check=false", "temporal.keyframe_interval=25"],
}
YOLOX_ONLY: dict[str, list[str]] = {
    # Every frame detected, but decode/detect/encode overlapped (the pipelining lever alone).
    "every-frame": ["temporal.keyframe_interval=1"],
    "realtime": ["video.preset=superfast"],
}
MASKRCNN_ONLY: dict[str, list[str]] = {
    # Without the row ladder: the mask branch runs on all 100 rows on every keyframe.
    "all-rows": ["detector.adaptive_rows=false"],
}
# Mask R-CNN does not look at mirrored keyframes (keyframe_mirror: auto); its coverage twin is
# yolox_nano with the same temporal settings.
AS_MASKRCNN = ["temporal.keyframe_mirror=never"]
# The seed ran OpenCV's published graph on all 100 rows (SeedMaskRCNN builds it as is).
SEED = ["detector.adaptive_rows=false"]


# ------------------------------------------------------------------ measuring


class PeakRSS:
    """Samples this process's resident memory while a configuration runs."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def now() -> int:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            self._stop.wait(0.02)

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = self.now()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Run:
    config: str
    clip: str
    frames: int
    seconds: float
    rss: int
    stages: dict[str, float]
    keyframes: int
    masks: list[np.ndarray] = field(default_factory=list, repr=False)  # packed bits, yolox runs only
    boxes: list[np.ndarray] = field(default_factory=list, repr=False)  # reference instances per frame


class Recorder:
    """Keeps each frame's mask (bit-packed) and, for the reference, its instances."""

    def __init__(self) -> None:
        self.masks: list[np.ndarray] = []
        self.boxes: list[np.ndarray] = []

    def __call__(self, mask: Mask, det: Detections | None) -> None:
        self.masks.append(np.packbits(mask > 0))
        self.boxes.append(det.boxes.copy() if det is not None else np.zeros((0, 4), np.int32))


def seed_loop(
    cfg: Config, detector: Detector, src: Path, dst: Path, observe: Recorder | None
) -> tuple[int, dict[str, float]]:
    """The seed's algorithm: every frame, full size, one step after another."""
    t = dict.fromkeys(["decode", "inference", "protection", "encode"], 0.0)
    n = 0
    c = cfg.protect
    detector.want_masks = c.shape == "mask"
    shape = c.shape if detector.has_masks else "box"
    with (
        video_io.VideoReader(src, max_pixels=cfg.media.max_pixels) as reader,
        video_io.VideoWriter(
            dst, reader.info, source=src, crf=cfg.video.crf, preset=cfg.video.preset, audio=cfg.video.audio
        ) as writer,
    ):
        frames = reader.frames()
        while True:
            t0 = time.perf_counter()
            frame = next(frames, None)
            t1 = time.perf_counter()
            t["decode"] += t1 - t0
            if frame is None:
                break
            det = detector.detect(frame.image)
            t2 = time.perf_counter()
            mask = rasterize(det, frame.image.shape[1], frame.image.shape[0], shape=shape, dilate=c.dilate)
            if observe is not None:
                observe(mask, det)
            hide(frame.image, mask, c)
            t3 = time.perf_counter()
            writer.write(frame, frame.image)
            t4 = time.perf_counter()
            t["inference"] += t2 - t1
            t["protection"] += t3 - t2
            t["encode"] += t4 - t3
            n += 1
    t["idle"] = 0.0
    return n, t


def coverage(ref: Run, run: Run, shape: tuple[int, int]) -> dict[str, float]:
    """How much of what the every-frame loop hid this run hid too."""
    h, w = shape
    total = covered = 0
    worst = 1.0
    half_hidden = 0
    for ref_bits, bits, boxes in zip(ref.masks, run.masks, ref.boxes, strict=True):
        a = np.unpackbits(ref_bits, count=h * w).reshape(h, w).astype(bool)
        b = np.unpackbits(bits, count=h * w).reshape(h, w).astype(bool)
        n = int(a.sum())
        k = int((a & b).sum())
        total += n
        covered += k
        if n:
            worst = min(worst, k / n)
        for x0, y0, x1, y1 in boxes.tolist():
            area = (x1 - x0) * (y1 - y0)
            if area and b[y0:y1, x0:x1].sum() < 0.5 * area:
                half_hidden += 1
    return {"coverage": covered / total if total else 1.0, "worst": worst, "under_half": half_hidden}


# ------------------------------------------------------------------ set-up


def prepare(cache: Path, clips: list[str], frames: int) -> tuple[Path, Path, dict[str, Path]]:
    """Stand-in Mask R-CNN files, yolox_nano provisioned offline, and the clips cut to `frames`."""
    from edgeguard import models
    from tests.support.maskrcnn_standin import ensure_standin

    pbtxt = SHARED / "models" / "mask_rcnn_inception_v2_coco_2018_01_28.pbtxt"
    standin = cache / "maskrcnn"
    standin.mkdir(parents=True, exist_ok=True)
    ensure_standin(pbtxt, standin)
    models_dir = cache / "models"
    models.fetch(
        models.find_manifest("yolox_nano", [models.builtin_manifest_dir()]),
        models_dir,
        source=SHARED / "models" / "candidates",
    )
    cut: dict[str, Path] = {}
    for clip in clips:
        dst = cache / f"{Path(clip).stem}-{frames}.mp4"
        if not dst.exists():
            trim(SHARED / "media" / clip, dst, frames)
        cut[clip] = dst
    return standin, models_dir, cut


def trim(src: Path, dst: Path, frames: int) -> None:
    """The first `frames` frames, re-encoded near-losslessly (crf 12) so every run decodes the same."""
    tmp = dst.with_suffix(".tmp.mp4")
    with (
        video_io.VideoReader(src, max_pixels=1 << 28) as r,
        video_io.VideoWriter(tmp, r.info, source=None, crf=12, preset="veryfast", audio="strip") as w,
    ):
        for f in r.frames():
            if f.index >= frames:
                break
            w.write(f, f.image)
    tmp.rename(dst)


class CostedMaskRCNN(MaskRCNN):
    """The stand-in Mask R-CNN, its rows counted as the real scene would fill them.

    The stand-in "finds" ~50 persons on any frame, so its own count would keep
    the row ladder at its top rung; `scene_rows` (set per call from yolox_nano's
    count at the same score floor) is what a working Mask R-CNN would fill.
    """

    scene_rows = 0

    def _used(self, rows: np.ndarray) -> int:
        return min(self.scene_rows, len(rows))


class SeedMaskRCNN(MaskRCNN):
    """The seed's network: OpenCV's text graph as published (100 rows, every class, floor 0.3)."""

    def _net(self, rows: int) -> cv2.dnn.Net:
        if not self._nets:
            net = cv2.dnn.readNetFromTensorflow(self._weights, np.frombuffer(self._graph.encode(), np.uint8))
            self._nets[rows] = net
        return next(iter(self._nets.values()))


class CostedDetector(Detector):
    """Mask R-CNN's cost with a real detector's detections.

    The stand-in weights cost what the real model costs, but their detections
    are arbitrary, and the motion check (what is protected, what moved outside
    it) would then decide keyframes on fiction. So every call runs the stand-in
    forward pass for its cost, and returns what yolox_nano finds on the frame
    (~30 ms more): the keyframe schedule a working Mask R-CNN would get.
    """

    def __init__(self, cost: MaskRCNN, truth: Detector) -> None:  # no super(): nothing to load
        self.cost, self.truth = cost, truth
        self.cfg, self.model_name, self.target = cost.cfg, cost.model_name, cost.target
        self.score_floor = cost.score_floor
        self.has_masks = False  # yolox gives boxes
        self.mirror_keyframes = cost.mirror_keyframes

    @property  # type: ignore[override]
    def want_masks(self) -> bool:
        return self.cost.want_masks

    @want_masks.setter
    def want_masks(self, value: bool) -> None:
        self.cost.want_masks = value

    def _load(self, files: object) -> None:  # pragma: no cover - never called
        raise NotImplementedError

    def _detect(self, image: np.ndarray, confidence: float) -> Detections:  # pragma: no cover - never called
        raise NotImplementedError

    def detect(self, image: np.ndarray, confidence: float | None = None, *, mirror: bool = False) -> Detections:
        # Everything down to the graph's floor takes a row, as in Mask R-CNN's second stage.
        seen = self.truth.detect(image, self.cost.floor, mirror=mirror)
        if isinstance(self.cost, CostedMaskRCNN):
            self.cost.scene_rows = len(seen)
        self.cost.detect(image, confidence, mirror=mirror)
        conf = max(self.cfg.confidence if confidence is None else confidence, self.score_floor)
        keep = np.flatnonzero(seen.scores >= conf)
        return Detections(
            seen.boxes[keep],
            seen.scores[keep],
            tuple(seen.classes[i] for i in keep),
            None if seen.masks is None else tuple(seen.masks[i] for i in keep),
            seen.frame_size,
        )


def costed(cfg: Config, truth_cfg: Config, kind: type[MaskRCNN] = CostedMaskRCNN) -> CostedDetector:
    manifest, files = model_files(cfg)
    cost = kind(cfg.detector, files, "cpu", manifest.name, manifest.input_size, cfg.temporal.keyframe_confidence)
    return CostedDetector(cost, create_detector(truth_cfg))


def standin_set(root: Path) -> list[str]:
    return [
        f"detector.files.weights={root / 'frozen_inference_graph.pb'}",
        f"detector.files.graph={SHARED / 'models' / 'mask_rcnn_inception_v2_coco_2018_01_28.pbtxt'}",
        f"detector.files.labels={SHARED / 'models' / 'object_detection_classes_coco.txt'}",
    ]


# ------------------------------------------------------------------ running


def run_engine(engine: Engine, name: str, clip: str, src: Path, out: Path, record: bool) -> Run:
    rec = Recorder() if record else None
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        result = engine.protect_file(src, out / f"{name}.mp4", observe=rec)
        seconds = time.perf_counter() - t0
    s = result.stats
    stages = {
        "decode": s.decode,
        "inference": s.inference,
        "planning": s.planning,
        "protection": s.protection,
        "encode": s.encode,
        "idle": s.idle,
    }
    return Run(
        name,
        clip,
        result.frames,
        seconds,
        rss.peak - rss.start,
        stages,
        s.keyframes,
        rec.masks if rec else [],
        rec.boxes if rec else [],
    )


def run_seed(cfg: Config, detector: Detector, name: str, clip: str, src: Path, out: Path, record: bool) -> Run:
    rec = Recorder() if record else None
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        n, stages = seed_loop(cfg, detector, src, out / f"{name}.mp4", rec)
        seconds = time.perf_counter() - t0
    return Run(
        name, clip, n, seconds, rss.peak - rss.start, stages, n, rec.masks if rec else [], rec.boxes if rec else []
    )


def memory_check(models_dir: Path, clip: Path, cache: Path, frames: int) -> tuple[int, int, int, int]:
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


# ------------------------------------------------------------------ report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=96, help="frames of each clip at most (default 96)")
    ap.add_argument("--clips", nargs="+", default=CLIPS)
    ap.add_argument("--skip-maskrcnn", action="store_true", help="yolox_nano only (quick)")
    ap.add_argument("--every-frame", action="store_true", help="also Mask R-CNN on every frame, pipelined (slow)")
    ap.add_argument(
        "--profile",
        action="append",
        default=[],
        metavar="NAME=KEY=VALUE[,KEY=VALUE]",
        help="an extra profile to try, e.g. coarse=temporal.motion_min_area=0.004",
    )
    ap.add_argument("--only", nargs="+", metavar="PROFILE", help="run just these profiles (and the loops)")
    ap.add_argument("--no-extras", action="store_true", help="skip the memory, image and daemon measurements")
    ap.add_argument("--extras-only", action="store_true", help="just the memory, image and daemon measurements")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "edgeguard-bench")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "latest.md")
    args = ap.parse_args(argv)
    for spec in args.profile:
        name, _, sets = spec.partition("=")
        PROFILES[name] = sets.split(",")
    if args.only:
        for table in (PROFILES, YOLOX_ONLY, MASKRCNN_ONLY):
            for name in set(table) - set(args.only):
                del table[name]
    args.cache.mkdir(parents=True, exist_ok=True)
    standin, models_dir, cut = prepare(args.cache, args.clips, args.frames)
    os.environ["EDGEGUARD_MODELS_DIR"] = str(models_dir)
    out = args.cache / "out"
    out.mkdir(exist_ok=True)

    def yolox(o: list[str]) -> Engine:
        return Engine(load_config(None, ["detector.model=yolox_nano", *o]))

    yolox_engines = {name: yolox(o) for name, o in {**PROFILES, **YOLOX_ONLY}.items()}
    twins = {name: yolox([*o, *AS_MASKRCNN]) for name, o in PROFILES.items()}
    yolox_seed_cfg = load_config(None, ["detector.model=yolox_nano"])
    yolox_seed_det = create_detector(yolox_seed_cfg)
    mr_profiles = {**PROFILES, **MASKRCNN_ONLY}
    if args.every_frame:
        mr_profiles["every-frame"] = YOLOX_ONLY["every-frame"]
    mr_engines = {}
    if not args.skip_maskrcnn:
        for n, o in mr_profiles.items():
            cfg = load_config(None, [*standin_set(standin), *o])
            # score_floor must match: keyframes ask yolox for the same lower threshold.
            mr_engines[n] = Engine(cfg, costed(cfg, load_config(None, ["detector.model=yolox_nano", *o])))
    mr_seed_cfg = None if args.skip_maskrcnn else load_config(None, [*standin_set(standin), *SEED])
    mr_seed_det = costed(mr_seed_cfg, yolox_seed_cfg, SeedMaskRCNN) if mr_seed_cfg else None

    rows: list[dict[str, object]] = []
    for clip, src in {} if args.extras_only else cut.items():
        with video_io.VideoReader(src, max_pixels=1 << 28) as r:
            shape = (r.info.height, r.info.width)
        print(f"== {clip} ({shape[1]}x{shape[0]}, {args.frames} frames)", flush=True)
        ref = run_seed(yolox_seed_cfg, yolox_seed_det, "yolox-seed", clip, src, out, True)
        rows.append(_row("yolox_nano", ref, ref, None))
        for name, engine in yolox_engines.items():
            run = run_engine(engine, f"yolox-{name}", clip, src, out, True)
            rows.append(_row("yolox_nano", run, ref, coverage(ref, run, shape)))
            print(f"   yolox {name}: {run.frames / run.seconds:.1f} fps", flush=True)
        twin_cov = {n: coverage(ref, run_engine(e, f"twin-{n}", clip, src, out, True), shape) for n, e in twins.items()}
        if mr_seed_det is not None and mr_seed_cfg is not None:
            seed = run_seed(mr_seed_cfg, mr_seed_det, "seed", clip, src, out, False)
            rows.append(_row("mask_rcnn", seed, seed, None))
            print(f"   mask_rcnn seed: {seed.frames / seed.seconds:.2f} fps", flush=True)
            for name, engine in mr_engines.items():
                run = run_engine(engine, name, clip, src, out, False)
                rows.append(_row("mask_rcnn", run, seed, twin_cov.get(name)))
                ratio = (run.frames / run.seconds) / (seed.frames / seed.seconds)
                print(f"   mask_rcnn {name}: {run.frames / run.seconds:.2f} fps ({ratio:.1f}x)", flush=True)

    extras = None
    if not args.no_extras:
        mem = memory_check(models_dir, cut[args.clips[-1]], args.cache, args.frames)
        images = {"yolox_nano": images_rate(yolox_engines["default"], out)}
        if mr_engines:
            images["mask_rcnn"] = images_rate(mr_engines["default"], out)
        daemons = {
            "yolox_nano": (*daemon_rate(models_dir, args.cache, "{model: yolox_nano}", 4), images["yolox_nano"][1])
        }
        if mr_engines:
            files = ", ".join(s.replace("detector.files.", "").replace("=", ": ") for s in standin_set(standin))
            plain = create_detector(load_config(None, standin_set(standin)))
            daemons["mask_rcnn"] = (
                *daemon_rate(models_dir, args.cache, f"{{files: {{{files}}}}}", 2),
                bare_rate(plain),
            )
        extras = (mem, images, daemons)
    report = render(rows, args, extras)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report, encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1, default=float), encoding="utf-8")
    return 0


def _row(model: str, run: Run, base: Run, cov: dict[str, float] | None) -> dict[str, object]:
    fps = run.frames / run.seconds
    base_fps = base.frames / base.seconds
    name = run.config.removeprefix("yolox-")
    return {
        "model": model,
        "profile": name,
        "clip": run.clip,
        "frames": run.frames,
        "fps": fps,
        "ratio": fps / base_fps,
        "rss_mb": run.rss / 2**20,
        "keyframes": run.keyframes / run.frames,
        **{f"t_{k}": v / run.frames for k, v in run.stages.items()},
        **(cov or {"coverage": None, "worst": None, "under_half": None}),
    }


def render(
    rows: list[dict[str, object]],
    args: argparse.Namespace,
    extras: tuple[tuple[int, int, int, int], dict[str, tuple[float, float]], dict[str, tuple[int, float, float]]]
    | None,
) -> str:
    def pct(v: object) -> str:
        return "—" if v is None else f"{100 * float(v):.2f}%"  # type: ignore[arg-type]

    lines = [
        f"Command: `make bench` (= `python -m bench.run --frames {args.frames}`), {os.cpu_count()} cores, "
        f"OpenCV {cv2.__version__}. Ratio = fps / the same model's every-frame sequential loop on the same clip, "
        "same run. Coverage = share of the every-frame loop's hidden pixels that the profile hides too, "
        "measured with yolox_nano (the stand-in Mask R-CNN has no real accuracy); worst = worst single frame; "
        "<½ = instances the loop hid that the profile hid less than half of. Stage times are ms per frame "
        "(busy time of each thread; they overlap). +RSS = resident memory the run added (all models stay loaded in "
        "this one process; the memory line below uses fresh processes).",
        "",
        "| model | profile | clip | fps | ratio | keyframes | coverage | worst | <½ "
        "| decode | infer | plan | protect | encode | idle | +RSS |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ms = [
            f"{1000 * float(r.get('t_' + k, 0.0) or 0.0):.0f}"
            for k in ("decode", "inference", "planning", "protection", "encode", "idle")
        ]  # type: ignore[arg-type]
        lines.append(
            f"| {r['model']} | {r['profile']} | {r['clip']} | {float(r['fps']):.2f} | {float(r['ratio']):.1f}x | "  # type: ignore[arg-type]
            f"{pct(r['keyframes'])} | {pct(r['coverage'])} | {pct(r['worst'])} | "
            f"{'—' if r['under_half'] is None else r['under_half']} | {' | '.join(ms)} | {float(r['rss_mb']):.0f} MB |"  # type: ignore[arg-type]
        )
    if extras is None:
        return "\n".join(lines) + "\n"
    mem, images, daemons = extras
    n1, rss1, n10, rss10 = mem
    lines += [
        "",
        f"Memory (fresh processes, yolox_nano default): {n1} frames peak {rss1 / 2**20:.0f} MB; "
        f"{n10} frames peak {rss10 / 2**20:.0f} MB ({100 * (rss10 - rss1) / rss1:+.1f}%).",
    ]
    for model, (full, pure) in images.items():
        lines.append(
            f"Images through the engine with the model loaded once ({model}): {full:.2f} images/s; "
            f"bare inference on the same images: {pure:.2f} images/s ({100 * full / pure:.0f}%)."
        )
    for model, (n, ips, pure) in daemons.items():
        lines.append(
            f"The daemon (`edgeguard run`, {model}, {n} images dropped at once, from READY=1 to the last output, "
            f"with claim, sha256, fsyncs, output check and ledger): {ips:.2f} images/s "
            f"({100 * ips / pure:.0f}% of the bare detector's {pure:.2f} images/s)."
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
