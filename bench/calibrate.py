"""Tracking error, measured: how far the every-frame detector's boxes lie from where carried instances are placed.

For every carried frame (yolox_nano, the default profile), each box the detector
finds on that frame at detector.confidence is paired with the placed instance it
overlaps most, and the margin that placement would need to contain it is recorded
with what the planner knew about that placement (seen at both keyframes or one,
frames to the keyframe, how far its flow missed the second keyframe, how much its
box changed, frames of lost flow, and how far the detector's own boxes for it moved when
the nearer keyframe was looked at again mirrored or shifted), and per clip the margin
needed across, above and below apart. `temporal.margin*` are sized from these tables.

    python -m bench.calibrate [--clips ...] [--frames 96] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.paths import CLIPS
from bench.run import decode, prepare
from edgeguard.carry import Interval, Placement
from edgeguard.config import load_config
from edgeguard.detectors.base import Detector
from edgeguard.detectors.factory import create_detector
from edgeguard.engine import keyframe_looker
from edgeguard.masks import rasterize
from edgeguard.temporal import Planner

FIELDS = (
    "need",
    "height",
    "both",
    "frames",
    "span",
    "drift",
    "resize",
    "unsure",
    "across",
    "up",
    "down",
    "mirror",
    "shift",
)
SHIFT = 13  # px: off the stride of yolox's grids (8, 16, 32), as a person a few frames on would be


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return np.asarray(inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9))


def disagreement(boxes: np.ndarray, again: np.ndarray) -> np.ndarray:
    """Per box: how far the best-overlapping box of `again` lies from it, edge by edge, in shares
    of its height (1 where none overlaps it by an IoU of 0.3)."""
    if len(again) == 0:
        return np.ones(len(boxes))
    o = iou(boxes, again)
    d = np.abs(boxes - again[o.argmax(axis=1)]).max(axis=1) / np.maximum(1.0, boxes[:, 3] - boxes[:, 1])
    return np.asarray(np.where(o.max(axis=1) < 0.3, 1.0, d))


def looked_again(det: Detector[Any], frame: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A keyframe's boxes, and each one's disagreement with the detector's own look at the frame
    mirrored and at the frame shifted by SHIFT px: a measure of how sure the detector is of it."""
    w = frame.shape[1]
    boxes = det.detect(frame, confidence).boxes.astype(np.float64).reshape(-1, 4)
    m = det.detect(np.ascontiguousarray(frame[:, ::-1]), confidence).boxes.astype(np.float64).reshape(-1, 4)
    mirrored = np.stack([w - m[:, 2], m[:, 1], w - m[:, 0], m[:, 3]], axis=1)
    shifted = det.detect(np.ascontiguousarray(frame[SHIFT:, SHIFT:]), confidence).boxes.astype(np.float64) + SHIFT
    return boxes, disagreement(boxes, mirrored), disagreement(boxes, shifted.reshape(-1, 4))


def measure(clip: Path, sets: list[str]) -> np.ndarray:
    """One row per (every-frame box, carried frame): FIELDS."""
    cfg = load_config(None, ["detector.model=yolox_nano", *sets])
    det = create_detector(cfg)
    frames = decode(clip)
    rows: list[tuple[float, ...]] = []
    again: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def unsureness(p: Placement, near: int) -> tuple[float, float]:
        """The detector's own disagreement, at the nearer keyframe, on the box nearest `p`."""
        if near not in again:
            again[near] = looked_again(det, frames[near], cfg.temporal.keyframe_confidence)
        boxes, mirrored, shifted = again[near]
        if len(boxes) == 0:
            return 1.0, 1.0
        o = iou(p.box[None], boxes)[0]
        if o.max() < 0.3:  # the keyframe's look at it is not among these
            return 1.0, 1.0
        j = int(o.argmax())
        return float(mirrored[j]), float(shifted[j])

    def on_interval(interval: Interval, items: list[int]) -> None:
        first = interval.a.index
        for k, item in enumerate(items, start=1):
            placed = interval.at(k)
            found = det.detect(frames[item]).boxes.astype(np.float64)
            if not placed or len(found) == 0:
                continue
            boxes = np.stack([p.box for p in placed])
            o = iou(found, boxes)
            for f, best in zip(found, o.argmax(axis=1), strict=True):
                p = placed[best]
                if iou(f[None], p.box[None])[0, 0] < 0.3:
                    continue
                across = max(p.box[0] - f[0], f[2] - p.box[2], 0.0)
                up, down = max(p.box[1] - f[1], 0.0), max(f[3] - p.box[3], 0.0)
                need = max(across, up, down)
                near = (
                    first if 2 * k <= interval.span or first + interval.span >= len(frames) else first + interval.span
                )
                mirrored, shifted = unsureness(p, near)
                row = (need, p.height, p.both, p.frames, p.span, p.drift, p.resize, p.unsure, across, up, down)
                rows.append((*row, mirrored, shifted))

    planner: Planner[int] = Planner(
        cfg.temporal,
        keyframe_looker(det, cfg),
        lambda d, w, h, pad: rasterize(d, w, h, shape="box", dilate=0, pad=pad),
    )
    planner.on_interval = on_interval
    for _ in planner.run(iter(enumerate(frames))):
        pass
    return np.array(rows, np.float64).reshape(-1, len(FIELDS))


def sides(rows: np.ndarray, clip: str) -> None:
    """The margin needed across (left or right) and up or down, apart (temporal.margin_xy)."""
    if len(rows) < 5:
        print(f"  {clip}: n={len(rows)}")
        return
    across = rows[:, FIELDS.index("across")] / rows[:, 1]
    up_down = np.maximum(rows[:, FIELDS.index("up")], rows[:, FIELDS.index("down")]) / rows[:, 1]
    q = [np.quantile(v, [0.9, 0.95]) for v in (across, up_down)]
    print(f"  {clip}: across {q[0][0]:.3f} {q[0][1]:.3f}, up or down {q[1][0]:.3f} {q[1][1]:.3f}  n={len(rows)}")


def predictors(rows: np.ndarray) -> None:
    """How well what the planner knows of an instance seen at both keyframes predicts the margin it needs.

    Were any of these strongly correlated, margins could follow it and be small elsewhere.
    """
    both = rows[rows[:, 2] == 1]
    if len(both) < 5:
        return
    h = both[:, 1]
    need = both[:, 0] / h
    print("both: correlation of margin needed / height with what is known of the instance:")
    for name, v in (
        ("frames to a keyframe", both[:, 3]),
        ("drift / height", both[:, 5] / h),
        ("resize / height", both[:, 6] / h),
        ("(drift + resize) / height", (both[:, 5] + both[:, 6]) / h),
        ("unsure frames", both[:, 7]),
        ("height", h),
        ("the detector's own disagreement at the nearer keyframe, mirrored", both[:, 11]),
        ("the same, shifted", both[:, 12]),
        ("the larger of the two", np.maximum(both[:, 11], both[:, 12])),
    ):
        r = np.corrcoef(v, need)[0, 1] if np.ptp(v) > 0 else 0.0
        print(f"  {name}: {r:.2f}")


def table(title: str, rows: np.ndarray, by: np.ndarray, edges: list[float]) -> None:
    print(f"{title}: margin needed / height (p50 p90 p95 p99), n")
    for lo, hi in itertools.pairwise(edges):
        sel = (by >= lo) & (by < hi)
        if sel.sum() < 5:
            continue
        q = np.quantile(rows[sel, 0] / rows[sel, 1], [0.5, 0.9, 0.95, 0.99])
        print(f"  [{lo:g}, {hi:g}): {q[0]:.3f} {q[1]:.3f} {q[2]:.3f} {q[3]:.3f}  n={int(sel.sum())}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", nargs="+", default=CLIPS)
    ap.add_argument("--frames", type=int, default=96)
    ap.add_argument("--set", action="append", default=[], dest="sets")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "edgeguard-bench")
    args = ap.parse_args(argv)
    _, models_dir, cut = prepare(args.cache, args.clips, args.frames)
    os.environ["EDGEGUARD_MODELS_DIR"] = str(models_dir)
    zero = ["temporal.margin=0", "temporal.margin_scale=0"]
    per_clip = {name: measure(src, [*zero, *args.sets]) for name, src in cut.items()}
    print("margin needed / height, across and up or down (p90 p95; both keyframes and one):")
    for name, clip_rows in per_clip.items():
        sides(clip_rows, name)
    rows = np.concatenate(list(per_clip.values()))
    both, single = rows[rows[:, 2] == 1], rows[rows[:, 2] == 0]
    print(f"{len(rows)} boxes on carried frames: {len(both)} on instances seen at both keyframes, {len(single)} at one")
    predictors(rows)
    table("both, by drift / height", both, both[:, 5] / both[:, 1], [0, 0.02, 0.05, 0.1, 0.2, 0.5, 10])
    table("both, by resize / height", both, both[:, 6] / both[:, 1], [0, 0.02, 0.05, 0.1, 0.2, 0.5, 10])
    table("both, by frames to a keyframe", both, both[:, 3], [1, 2, 3, 5, 9, 100])
    table("both, by unsure frames", both, both[:, 7], [0, 1, 3, 100])
    unsure_of_it = np.maximum(both[:, 11], both[:, 12])
    table("both, by the detector's own disagreement (the larger)", both, unsure_of_it, [0, 0.02, 0.05, 0.1, 0.2, 10])
    table("one keyframe, by frames from it", single, single[:, 3], [1, 2, 3, 5, 9, 17, 100])
    table("one keyframe, by unsure frames", single, single[:, 7], [0, 1, 3, 100])
    return 0


if __name__ == "__main__":
    sys.exit(main())
