"""Margin rules replayed: is there one that meets both aims on every clip?

The default planner (yolox_nano, boxes) runs once per clip, and every carried frame's placed
instances are kept, with the every-frame loop's hidden area and each keyframe's own.
Any margin rule (`carry.Margins` with other constants) is then rasterized onto those
placements in seconds instead of a bench run, and scored as `make bench` scores a
profile: overreach against the every-frame loop and its worst-covered frame.

What a rule changes is only where carried frames are hidden: keyframes, the motion
check's keyframe choice and the instances a keyframe keeps from the one before are
those of the default's run. The default rule reproduces `make bench`'s figures.

    python -m bench.replay [--clips dos.mp4 ...] [--frames 96]
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.paths import CLIPS
from bench.privacy import Bits, BoolMask, unpack
from bench.run import decode, prepare
from edgeguard.carry import Interval, Margins, Placement
from edgeguard.config import Config, load_config
from edgeguard.detections import Detections
from edgeguard.detectors.factory import create_detector
from edgeguard.engine import keyframe_looker
from edgeguard.frames import Mask
from edgeguard.masks import Pads, rasterize
from edgeguard.temporal import Planner, Rasterize, placed_mask

AIMS = (1.5, 0.98)  # issue 8: overreach at most, worst-covered frame at least


@dataclass
class Recorded:
    shape: tuple[int, int]
    refs: list[Bits]  # the every-frame loop's hidden area, per frame
    keyframes: dict[int, Bits]  # what each keyframe hid
    carried: dict[int, list[Placement]]  # each carried frame's placed instances


def hider(cfg: Config) -> Rasterize:
    """How the bench's profiles hide what they found: boxes, as protect.* grows them."""
    c = cfg.protect

    def hide(det: Detections, width: int, height: int, pad: Pads | None) -> Mask:
        return rasterize(det, width, height, shape="box", dilate=c.dilate, pad=pad, head=c.head_margin)

    return hide


def record(cfg: Config, clip: Path) -> Recorded:
    detector = create_detector(cfg)
    frames = decode(clip)
    h, w = frames[0].shape[:2]
    hide = hider(cfg)
    refs = [np.packbits(hide(detector.detect(f), w, h, None) > 0) for f in frames]
    carried: dict[int, list[Placement]] = {}

    def on_interval(interval: Interval, items: list[int]) -> None:
        for k, item in enumerate(items, start=1):
            carried[item] = interval.at(k)

    planner: Planner[int] = Planner(cfg.temporal, keyframe_looker(detector, cfg), hide)
    planner.on_interval = on_interval
    keyframes = {p.item: np.packbits(p.mask > 0) for p in planner.run(iter(enumerate(frames))) if p.keyframe}
    return Recorded((h, w), refs, keyframes, carried)


def hidden_at(rec: Recorded, i: int, margins: Margins, cfg: Config) -> BoolMask:
    """What frame `i` hides: a keyframe's own mask, or its carried instances grown by `margins`."""
    h, w = rec.shape
    if i in rec.keyframes:
        return unpack(rec.keyframes[i], (h, w))
    return np.asarray(placed_mask(rec.carried.get(i, []), margins, hider(cfg), w, h) > 0)


def score(rec: Recorded, margins: Margins, cfg: Config) -> tuple[float, float]:
    """Overreach and the worst-covered frame, had carried frames been hidden with `margins`."""
    ref_px = hidden_px = 0
    worst = 1.0
    for i, bits in enumerate(rec.refs):
        ref = unpack(bits, rec.shape)
        mask = hidden_at(rec, i, margins, cfg)
        r = int(ref.sum())
        ref_px += r
        hidden_px += int(mask.sum())
        if r:
            worst = min(worst, int((ref & mask).sum()) / r)
    return hidden_px / max(1, ref_px), worst


def rules(cfg: Config) -> dict[str, Margins]:
    """The default, and a grid around it: for persons seen at both keyframes, the margin's floor
    and its growth per frame from a keyframe (shares of the height) and the weight of how far
    their flow missed the second keyframe; the margin of those seen at one keyframe (x1 or x2);
    and the shape across / up and down. 95 rules besides the default."""
    t = cfg.temporal
    out = {"default": Margins.of(t)}
    grid = itertools.product(
        (0.005, 0.015, 0.025), (0.0, 0.0025), (0.0, 0.1), (1.0, 2.0), ((1.3, 0.5), (1.3, 0.8), (2.0, 0.5), (2.0, 0.8))
    )
    for both, growth, evidence, one, xy in grid:
        if (both, growth, evidence, one, xy) == (Margins.BOTH, Margins.BOTH_GROWTH, Margins.EVIDENCE, 1.0, t.margin_xy):
            continue  # the default itself
        constants = {
            "BOTH": both,
            "BOTH_GROWTH": growth,
            "EVIDENCE": evidence,
            "ONE": one * Margins.ONE,
            "ONE_GROWTH": one * Margins.ONE_GROWTH,
        }
        kind = type("Rule", (Margins,), constants)
        name = f"both {both:g}+{growth:g}/frame, evidence {evidence:g}, singles x{one:g}, xy {xy[0]:g},{xy[1]:g}"
        out[name] = kind(t.margin, t.margin_scale, xy, t.motion_slack)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", nargs="+", default=CLIPS)
    ap.add_argument("--frames", type=int, default=96)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "edgeguard-bench")
    args = ap.parse_args(argv)
    _, models_dir, cut = prepare(args.cache, args.clips, args.frames)
    os.environ["EDGEGUARD_MODELS_DIR"] = str(models_dir)
    cfg = load_config(None, ["detector.model=yolox_nano"])
    recorded = {Path(name).stem: record(cfg, src) for name, src in cut.items()}
    print("rule | " + " | ".join(f"{n}: overreach, worst" for n in recorded))
    scored: dict[str, list[tuple[float, float]]] = {}
    for name, margins in rules(cfg).items():
        scored[name] = [score(rec, margins, cfg) for rec in recorded.values()]
        print(f"{name} | " + " | ".join(f"{o:.2f}, {100 * wf:.1f}%" for o, wf in scored[name]), flush=True)
    summarize(scored, list(recorded))
    return 0


def summarize(scored: dict[str, list[tuple[float, float]]], clips: list[str]) -> None:
    """The two aims, each held while the other is looked for. Overreach is held only on the
    clips where the default meets it (no margin rule moves the others under it), at the
    bench's precision (two decimals)."""
    most, least = AIMS
    held = [i for i, (o, _) in enumerate(scored["default"]) if round(o, 2) <= most]
    if not held:
        print(f"the default's overreach is over {most} on every clip given: nothing to hold")
        per_clip(scored, clips)
        return

    def top_overreach(name: str) -> float:
        return round(max(scored[name][i][0] for i in held), 2)

    def low_worst(name: str) -> float:
        return min(wf for _, wf in scored[name])

    skipped = [clips[i] for i in range(len(clips)) if i not in held]
    but = f" but {', '.join(skipped)}" if skipped else ""
    full = [n for n in scored if low_worst(n) >= least]
    print(f"rules whose worst frame is at least {least:.0%} on every clip: {len(full)} of {len(scored)}")
    if full:
        best = min(full, key=top_overreach)
        print(f"  the least highest overreach among them, on every clip{but}: {top_overreach(best):.2f} ({best})")
    within = [n for n in scored if top_overreach(n) <= most]
    print(f"rules within overreach {most} on every clip{but}: {len(within)} of {len(scored)}")
    if within:
        best = max(within, key=low_worst)
        print(f"  the best worst frame among them: {100 * low_worst(best):.1f}% ({best})")
    per_clip(scored, clips)


def per_clip(scored: dict[str, list[tuple[float, float]]], clips: list[str]) -> None:
    """Each clip with the rule chosen for it alone, in hindsight: were margins to adapt to the
    scene, this is the most they could do with the grid's rules."""
    most, least = AIMS
    print("each clip with the grid's best rule for it alone:")
    for i, clip in enumerate(clips):
        scores = [s[i] for s in scored.values()]
        reach = [o for o, wf in scores if wf >= least]
        within = [wf for o, wf in scores if round(o, 2) <= most]
        both = sum(round(o, 2) <= most and wf >= least for o, wf in scores)
        at_least = f"{min(reach):.2f}" if reach else "none does"
        best = f"{100 * max(within):.1f}%" if within else "none is"
        print(
            f"  {clip}: least overreach with the worst frame at {least:.0%} or more {at_least}; "
            f"best worst frame within {most}: {best}; rules meeting both: {both}"
        )


if __name__ == "__main__":
    sys.exit(main())
