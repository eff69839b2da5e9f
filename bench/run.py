"""`make bench`: edgeguard's profiles against the seed's every-frame loop, side by side.

One process runs every configuration on every clip, clip by clip, so all of
them share the machine's state. For each clip and profile it reports speed
(fps, and the ratio to the seed's loop with the same model) and privacy in both
directions (bench/privacy.py): overreach and coverage against the same model's
every-frame loop, and recall against independent judges (bench/judges.py), with
a picture of every miss under bench/results/misses/. The photos in
../shared/media get the same privacy figures.

Speed for Mask R-CNN comes from the stand-in weights (the real model's cost) with
yolox_nano's detections (bench/costed.py), so its privacy figures are those of the
same profile run with yolox_nano (its "twin"; the Mask R-CNN-only profiles change
nothing that is hidden).

    python -m bench.run [--frames 96] [--clips dos.mp4 ...] [--only default ...] [--skip-maskrcnn]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from bench import extras
from bench.costed import SeedMaskRCNN, costed, standin_set
from bench.judge_errors import set_aside
from bench.judges import Judged, Judges, judge_frames
from bench.paths import CANDIDATES, CLIPS, IMAGES, REPO, SHARED
from bench.privacy import Privacy, measure, save_misses
from edgeguard import styles
from edgeguard.config import Config, load_config
from edgeguard.detections import Detections
from edgeguard.detectors.base import Detector
from edgeguard.detectors.factory import create_detector
from edgeguard.engine import Engine
from edgeguard.frames import Mask
from edgeguard.masks import rasterize
from edgeguard.media import image as image_io
from edgeguard.media import video as video_io

YOLOX, MASKRCNN = "yolox_nano", "mask_rcnn"


@dataclass(frozen=True)
class Profile:
    sets: tuple[str, ...]
    models: tuple[str, ...] = (YOLOX, MASKRCNN)
    # The every-frame loop its overreach and coverage are measured against: "seed" (the
    # model's own every-frame loop) or the name of another profile.
    ref: str = "seed"


# Named profiles: overrides on top of the shipped defaults. Only `default` is what users get.
PROFILES: dict[str, Profile] = {
    "default": Profile(()),
    # Boxes instead of masks: Mask R-CNN skips its mask branch.
    "boxes": Profile(("protect.shape=box",)),
    # Opt-in, trades coverage for speed: no motion check, a keyframe a second.
    "fast-unsafe": Profile(("temporal.motion_check=false", "temporal.keyframe_interval=25")),
    # Every frame detected, decode/detect/encode overlapped (the pipelining lever alone).
    "every-frame": Profile(("temporal.keyframe_interval=1",), (YOLOX,)),
    "realtime": Profile(("video.preset=superfast",), (YOLOX,)),
    # Without the row ladder: the mask branch runs on all 100 rows on every keyframe.
    "all-rows": Profile(("detector.maskrcnn.adaptive_rows=false",), (MASKRCNN,)),
    # Keyframe levers, each against the default (kept or not by what they measure):
    "input-416": Profile(("detector.input_size=416",), (YOLOX,)),  # yolox_nano's training size
    "mirror": Profile(("temporal.keyframe_mirror=always",), (YOLOX,)),  # and the mirrored frame
    "no-head": Profile(("protect.head_margin=0",), (YOLOX,)),  # nothing above a person's box
    "with-faces": Profile(("detector.classes=[person,face]",), (YOLOX,)),  # YuNet faces on keyframes too
    "kf-0.3": Profile(("temporal.keyframe_confidence=0.3",), (YOLOX,)),  # keyframes at a higher floor
    "margins-x0.5": Profile(("temporal.margin_scale=0.5",), (YOLOX,)),  # half the carried margins
    "margins-x2": Profile(("temporal.margin_scale=2.0",), (YOLOX,)),  # twice the carried margins
    "margins-square": Profile(("temporal.margin_xy=[1.0,1.0]",), (YOLOX,)),  # as much across as up and down
    # Face mode: YuNet faces only, against its own every-frame loop.
    "faces-every-frame": Profile(("detector.classes=[face]", "temporal.keyframe_interval=1"), (YOLOX,), "self"),
    "faces": Profile(("detector.classes=[face]",), (YOLOX,), "faces-every-frame"),
}
# The seed ran OpenCV's published graph on all 100 rows (SeedMaskRCNN builds it as is).
SEED = ["detector.maskrcnn.adaptive_rows=false"]


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
    style = styles.create(c)
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
            mask = rasterize(
                det, frame.image.shape[1], frame.image.shape[0], shape=shape, dilate=c.dilate, head=c.head_margin
            )
            if observe is not None:
                observe(mask, det)
            style.hide(frame.image, mask)
            t3 = time.perf_counter()
            writer.write(frame, frame.image)
            t4 = time.perf_counter()
            t["inference"] += t2 - t1
            t["protection"] += t3 - t2
            t["encode"] += t4 - t3
            n += 1
    t["idle"] = 0.0
    return n, t


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


def judged_privacy(
    run: Run, ref: Run, shape: tuple[int, int], judged: list[Judged], frames: list[np.ndarray], misses: Path
) -> Privacy:
    """`run`'s privacy figures; a picture of each miss goes to `misses`."""
    p = measure(run.masks, shape, judged, ref.masks, ref.boxes)
    save_misses(p.misses, frames, run.masks, misses)
    return p


def photo_mask(engine: Engine, path: Path, out: Path) -> np.ndarray:
    rec = Recorder()
    engine.protect_file(path, out / path.name, observe=rec)
    return rec.masks[0]


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=96, help="frames of each clip at most (default 96)")
    ap.add_argument("--clips", nargs="+", default=CLIPS)
    ap.add_argument("--images", nargs="*", default=IMAGES, help="photos for the recall table")
    ap.add_argument("--skip-maskrcnn", action="store_true", help="yolox_nano only (quick)")
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
    profiles = dict(PROFILES)
    for spec in args.profile:
        name, _, sets = spec.partition("=")
        profiles[name] = Profile(tuple(re.split(r",(?![^\[]*\])", sets)))  # not the commas of a [list]
    if args.only:
        wanted = set(args.only) | {p.ref for n, p in profiles.items() if n in args.only}
        profiles = {n: p for n, p in profiles.items() if n in wanted}
    if args.skip_maskrcnn:
        profiles = {n: p for n, p in profiles.items() if YOLOX in p.models}
    if args.extras_only:
        args.images = []
    args.cache.mkdir(parents=True, exist_ok=True)
    standin, models_dir, cut = prepare(args.cache, args.clips, args.frames)
    os.environ["EDGEGUARD_MODELS_DIR"] = str(models_dir)
    out = args.cache / "out"
    out.mkdir(exist_ok=True)
    misses = args.out.parent / "misses"

    def yolox(sets: tuple[str, ...]) -> Engine:
        return Engine(load_config(None, ["detector.model=yolox_nano", *sets]))

    # Profiles measured against another profile run after it.
    order = sorted(profiles, key=lambda n: profiles[n].ref not in ("self", "seed"))
    yolox_engines = {n: yolox(profiles[n].sets) for n in order if YOLOX in profiles[n].models}
    mr_names = [n for n in order if MASKRCNN in profiles[n].models and not args.skip_maskrcnn]
    # A Mask R-CNN profile without a yolox_nano run of its own hides what yolox_nano's default does.
    twins = {n: yolox(profiles[n].sets) for n in mr_names if n not in yolox_engines and n != "all-rows"}
    mr_engines = {}
    for n in mr_names:
        cfg = load_config(None, [*standin_set(standin), *profiles[n].sets])
        # score_floor must match: keyframes ask yolox for the same lower threshold.
        mr_engines[n] = Engine(cfg, costed(cfg, load_config(None, ["detector.model=yolox_nano", *profiles[n].sets])))
    yolox_seed_cfg = load_config(None, ["detector.model=yolox_nano"])
    yolox_seed_det = create_detector(yolox_seed_cfg)
    mr_seed_cfg = load_config(None, [*standin_set(standin), *SEED]) if mr_names else None
    judges = Judges(CANDIDATES)
    (args.cache / "judges").mkdir(exist_ok=True)

    rows: list[dict[str, object]] = []
    set_aside_lines: list[str] = []
    mr_seed_det = costed(mr_seed_cfg, yolox_seed_cfg, SeedMaskRCNN) if mr_seed_cfg is not None else None
    for clip, src in ({} if args.extras_only else cut).items():
        frames = decode(src)
        shape = frames[0].shape[:2]
        print(f"== {clip} ({shape[1]}x{shape[0]}, {len(frames)} frames)", flush=True)
        judged, aside = set_aside(clip, judge_frames(judges, frames, args.cache / "judges" / f"{src.stem}.npz"))
        set_aside_lines.extend(_aside(clip, aside))
        stem = Path(clip).stem

        def privacy(run: Run, ref: Run, label: str, stem: str = stem) -> Privacy:
            return judged_privacy(run, ref, shape, judged, frames, misses / label / stem)  # noqa: B023

        rows.append(deface_row(clip, judged, shape))
        seed = run_seed(yolox_seed_cfg, yolox_seed_det, "yolox-seed", clip, src, out, True)
        refs = {"seed": seed}
        privacies: dict[str, Privacy] = {}
        rows.append(_row(YOLOX, "seed", seed, seed, privacy(seed, seed, "yolox_nano-seed")))
        for name, engine in yolox_engines.items():
            run = run_engine(engine, f"yolox-{name}", clip, src, out, True)
            ref = refs.get(profiles[name].ref, run)
            refs[name] = run
            privacies[name] = privacy(run, ref, f"yolox_nano-{name}")
            rows.append(_row(YOLOX, name, run, seed, privacies[name]))
            print(f"   yolox {name}: {run.frames / run.seconds:.1f} fps", flush=True)
        twin_privacy = {
            n: privacy(run_engine(e, f"twin-{n}", clip, src, out, True), seed, f"mask_rcnn-{n}")
            for n, e in twins.items()
        }
        for n in mr_names:
            if n not in twin_privacy:
                twin_privacy[n] = privacies[n if n in privacies else "default"]
        if mr_seed_cfg is not None and mr_seed_det is not None:
            mr_seed = run_seed(mr_seed_cfg, mr_seed_det, "seed", clip, src, out, False)
            rows.append(_row(MASKRCNN, "seed", mr_seed, mr_seed, None))
            print(f"   mask_rcnn seed: {mr_seed.frames / mr_seed.seconds:.2f} fps", flush=True)
            for name, engine in mr_engines.items():
                run = run_engine(engine, name, clip, src, out, False)
                rows.append(_row(MASKRCNN, name, run, mr_seed, twin_privacy[name]))
                ratio = (run.frames / run.seconds) / (mr_seed.frames / mr_seed.seconds)
                print(f"   mask_rcnn {name}: {run.frames / run.seconds:.2f} fps ({ratio:.1f}x)", flush=True)

    photo_rows = photos(
        args.images, args.cache, judges, yolox_seed_det, yolox_seed_cfg, yolox_engines, misses, set_aside_lines
    )
    more = None
    if not args.no_extras:
        more = extras.measure_all(
            models_dir, args.cache, cut[args.clips[-1]], yolox_engines["default"], mr_engines.get("default"), standin
        )
    report = render(rows, photo_rows, args, [*set_aside_lines, *(more or [])])
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report, encoding="utf-8")
    args.out.with_suffix(".json").write_text(
        json.dumps({"clips": rows, "photos": photo_rows}, indent=1, default=float), encoding="utf-8"
    )
    return 0


def deface_row(clip: str, judged: list[Judged], shape: tuple[int, int]) -> dict[str, object]:
    """What deface hides with its defaults (CenterFace at 0.2, ellipses 1.3x the box): the share of the frame."""
    h, w = shape
    share = 0.0
    for j in judged:
        mask = np.zeros((h, w), np.uint8)
        for x0, y0, x1, y1, _ in j.centerface.tolist():
            centre = (round((x0 + x1) / 2), round((y0 + y1) / 2))
            axes = (round(1.3 * (x1 - x0) / 2), round(1.3 * (y1 - y0) / 2))
            cv2.ellipse(mask, centre, axes, 0, 0, 360, 255, -1)
        share += float((mask > 0).mean())
    return {"model": "deface", "profile": "deface 1.5 defaults", "clip": clip, "share": share / max(1, len(judged))}


def decode(src: Path) -> list[np.ndarray]:
    with video_io.VideoReader(src, max_pixels=1 << 28) as r:
        return [f.image for f in r.frames()]


def photos(
    names: list[str],
    cache: Path,
    judges: Judges,
    seed_det: Detector,
    seed_cfg: Config,
    yolox_engines: dict[str, Engine],
    misses: Path,
    set_aside_lines: list[str],
) -> list[dict[str, object]]:
    """Each profile on each photo: recall against the judges, overreach against one plain detection."""
    rows: list[dict[str, object]] = []
    out = cache / "out"
    for name in names:
        path = SHARED / "media" / name
        image = image_io.read_image(path, max_pixels=1 << 28)
        shape = image.shape[:2]
        judged, aside = set_aside(name, judge_frames(judges, [image], cache / "judges" / f"photo-{path.stem}.npz"))
        set_aside_lines.extend(_aside(name, aside))
        h, w = shape
        c = seed_cfg.protect
        plain = rasterize(seed_det.detect(image), w, h, shape="box", dilate=c.dilate, head=c.head_margin)
        ref = Run("seed", name, 1, 0.0, 0, {}, 1, [np.packbits(plain > 0)], [seed_det.detect(image).boxes])
        runs = [(YOLOX, "seed", ref)]
        runs += [(YOLOX, n, e) for n, e in yolox_engines.items()]  # type: ignore[misc]
        for model, profile, what in runs:
            bits = what.masks[0] if isinstance(what, Run) else photo_mask(what, path, out)
            run = Run(profile, name, 1, 0.0, 0, {}, 1, [bits], [])
            p = measure(run.masks, shape, judged, ref.masks, ref.boxes)
            save_misses(p.misses, [image], run.masks, misses / f"{model}-{profile}" / path.stem)
            rows.append({"model": model, "profile": profile, "photo": name, **_privacy(p)})
    return rows


def _aside(media: str, aside: list[tuple[int, str, str]]) -> list[str]:
    """One line per judge error set aside in `media`."""
    counts: dict[tuple[str, str], list[int]] = {}
    for frame, kind, what in aside:
        counts.setdefault((kind, what), []).append(frame)
    return [
        f"Judge error set aside in {media}: {kind} judge, {what}, on {len(fr)} frames ({min(fr)}-{max(fr)})."
        for (kind, what), fr in counts.items()
    ]


def _privacy(p: Privacy | None) -> dict[str, object]:
    if p is None:
        return {}
    out: dict[str, object] = {
        "overreach": p.overreach,
        "share": p.share,
        "coverage": p.coverage,
        "worst": p.worst,
        "under_half": p.under_half,
    }
    for kind in ("person", "centerface", "yunet"):
        out[f"{kind}_judged"] = p.judged[kind]
        out[f"{kind}_missed"] = p.missed(kind)
        out[f"{kind}_recall"] = p.recall(kind)
    return out


def _row(model: str, profile: str, run: Run, base: Run, p: Privacy | None) -> dict[str, object]:
    fps = run.frames / run.seconds
    base_fps = base.frames / base.seconds
    return {
        "model": model,
        "profile": profile,
        "clip": run.clip,
        "frames": run.frames,
        "fps": fps,
        "ratio": fps / base_fps,
        "rss_mb": run.rss / 2**20,
        "keyframes": run.keyframes / run.frames,
        **{f"t_{k}": v / run.frames for k, v in run.stages.items()},
        **_privacy(p),
    }


# ------------------------------------------------------------------ report


def _pct(v: object, digits: int = 1) -> str:
    return "—" if v is None else f"{100 * float(v):.{digits}f}%"  # type: ignore[arg-type]


def _recall(r: dict[str, object], kind: str) -> str:
    n = r.get(f"{kind}_judged")
    if n is None:
        return "—"
    missed = int(r[f"{kind}_missed"])  # type: ignore[call-overload]
    rec = r[f"{kind}_recall"]
    return f"{float(rec):.3f} ({missed}/{n})" if rec is not None else f"— (0/{n})"  # type: ignore[arg-type]


def _over(r: dict[str, object]) -> str:
    v = r.get("overreach")
    return "—" if v is None else f"{float(v):.2f}"  # type: ignore[arg-type]


def render(
    rows: list[dict[str, object]],
    photo_rows: list[dict[str, object]],
    args: argparse.Namespace,
    more: list[str] | None,
) -> str:
    lines = [
        f"Command: `python -m bench.run --frames {args.frames}` (part of `make bench`), {os.cpu_count()} cores, "
        f"OpenCV {cv2.__version__}. Ratio = fps / the same model's every-frame sequential loop (the seed's) on "
        "the same clip, same run. Privacy (yolox_nano; Mask R-CNN rows are their yolox_nano twin's): overreach = "
        "hidden pixels / hidden pixels of the every-frame loop; hidden = mean share of the frame hidden; "
        "coverage = share of the every-frame loop's hidden pixels hidden too, worst single frame, instances it hid "
        "that the profile hid less than half of (<½); recall = judged persons (nanodet_m, tiled) / faces "
        "(CenterFace, YuNet) at least half hidden, (misses/judged). Stage times are ms per frame (busy time of each "
        "thread; they overlap). +RSS = resident memory the run added.",
        "",
        "| model | profile | clip | fps | ratio | keyframes | overreach | hidden | coverage | worst | <½ "
        "| persons | faces (CenterFace) | faces (YuNet) | decode | infer | plan | protect | encode | +RSS |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["model"] == "deface":
            lines.append(
                f"| deface | {r['profile']} | {r['clip']} | | | | | {_pct(r['share'])} | | | | | | | | | | | | |"
            )
            continue
        ms = [
            f"{1000 * float(r.get('t_' + k, 0.0) or 0.0):.0f}"  # type: ignore[arg-type]
            for k in ("decode", "inference", "planning", "protection", "encode")
        ]
        lines.append(
            f"| {r['model']} | {r['profile']} | {r['clip']} | {float(r['fps']):.2f} | "  # type: ignore[arg-type]
            f"{float(r['ratio']):.1f}x | {_pct(r['keyframes'])} | {_over(r)} | {_pct(r.get('share'))} | "  # type: ignore[arg-type]
            f"{_pct(r.get('coverage'), 2)} | {_pct(r.get('worst'))} | {r.get('under_half', '—')} | "
            f"{_recall(r, 'person')} | {_recall(r, 'centerface')} | {_recall(r, 'yunet')} | "
            f"{' | '.join(ms)} | {float(r['rss_mb']):.0f} MB |"  # type: ignore[arg-type]
        )
    if photo_rows:
        lines += [
            "",
            "Photos (one detection each; overreach against one plain detection at detector.confidence; Mask R-CNN's "
            "twin is yolox_nano's default):",
            "",
            "| model | profile | photo | overreach | hidden | persons | faces (CenterFace) | faces (YuNet) |",
            "|---|---|---|---:|---:|---:|---:|---:|",
        ]
        for r in photo_rows:
            lines.append(
                f"| {r['model']} | {r['profile']} | {r['photo']} | {_over(r)} | {_pct(r['share'])} | "
                f"{_recall(r, 'person')} | {_recall(r, 'centerface')} | {_recall(r, 'yunet')} |"
            )
    if more:
        lines += [""] + [f"- {m}" if m.startswith("Judge error") else m for m in more]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
