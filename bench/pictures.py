"""Before and after, to look at: one frame of a clip as it came in, as the every-frame loop hides it,
and as a profile hides it (fill style, so what is hidden is plain to see).

    python -m bench.pictures [--clip pedestrians.mp4] [--frames 40 ...] [--set KEY=VALUE ...]
                             [--before OTHER.mp4] [--out FILE]
    python -m bench.pictures --worst vtest.avi dos.mp4 ... [--out FILE]

`--worst` shows, per clip, the frame where the default covers least of what the every-frame
loop hides: the every-frame loop's boxes (green), the default's hidden area (red) and what only
the every-frame loop hides (yellow).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from bench.privacy import unpack
from bench.run import decode, prepare, run_engine, run_seed
from edgeguard.config import load_config
from edgeguard.detectors.factory import create_detector
from edgeguard.engine import Engine

FILL = ["protect.style=fill", "protect.color=[255,0,255]"]


def protected(clip: Path, sets: list[str], out: Path) -> list[np.ndarray]:
    engine = Engine(load_config(None, ["detector.model=yolox_nano", *FILL, *sets]))
    engine.protect_file(clip, out)
    return decode(out)


def label(image: np.ndarray, text: str) -> np.ndarray:
    out = image.copy()
    cv2.rectangle(out, (0, 0), (out.shape[1], 34), (255, 255, 255), -1)
    cv2.putText(out, text, (8, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 0, 0), 2, cv2.LINE_AA)
    return out


def worst_frames(cut: dict[str, Path], work: Path, width: int = 360) -> np.ndarray:
    cfg = load_config(None, ["detector.model=yolox_nano"])
    detector, engine = create_detector(cfg), Engine(cfg)
    pics = []
    for clip, src in cut.items():
        frames = decode(src)
        shape = frames[0].shape[:2]
        every = run_seed(cfg, detector, "every", clip, src, work, True)
        default = run_engine(engine, "default", clip, src, work, True)
        refs = [unpack(m, shape) for m in every.masks]
        hidden = [unpack(m, shape) for m in default.masks]
        i = int(np.argmin([(r & d).sum() / max(1, r.sum()) for r, d in zip(refs, hidden, strict=True)]))
        img, gap = frames[i].copy(), refs[i] & ~hidden[i]
        img[hidden[i]] = (0.5 * img[hidden[i]] + [0, 0, 127]).astype(np.uint8)
        img[gap] = (0, 255, 255)
        for b in every.boxes[i]:
            cv2.rectangle(img, (int(b[0]), int(b[1])), (int(b[2]), int(b[3])), (0, 200, 0), 2)
        ys, xs = np.nonzero(gap if gap.any() else refs[i])
        cx, cy = int(xs.mean()), int(ys.mean())
        half = max(120, int(1.2 * max(np.ptp(xs), np.ptp(ys))))
        crop = img[max(0, cy - half) : cy + half, max(0, cx - half) : cx + half]
        crop = cv2.resize(crop, (width, round(width * crop.shape[0] / crop.shape[1])))
        share = (refs[i] & hidden[i]).sum() / max(1, refs[i].sum())
        pics.append(label(crop, f"{Path(clip).stem} f{i}: {share:.1%}"))
    h = max(p.shape[0] for p in pics)
    return np.concatenate([np.pad(p, ((0, h - p.shape[0]), (0, 4), (0, 0)), constant_values=255) for p in pics], 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip", default="pedestrians.mp4")
    ap.add_argument("--frames", type=int, nargs="+", default=[40], help="frame indices to show, one row each")
    ap.add_argument("--set", action="append", default=[], dest="sets", help="the profile (default: the defaults)")
    ap.add_argument(
        "--before", type=Path, help="also show this output of the same cut clip (e.g. made by an earlier version)"
    )
    ap.add_argument("--width", type=int, default=640, help="width of each picture")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "edgeguard-bench")
    ap.add_argument("--out", type=Path, default=Path("bench/results/pictures.jpg"))
    ap.add_argument("--worst", nargs="+", metavar="CLIP", help="the worst-covered frame of each clip instead")
    args = ap.parse_args(argv)
    _, models_dir, cut = prepare(args.cache, args.worst or [args.clip], 96)
    os.environ["EDGEGUARD_MODELS_DIR"] = str(models_dir)
    work = args.cache / "pictures"
    work.mkdir(exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.worst:
        cv2.imwrite(str(args.out), worst_frames(cut, work), [cv2.IMWRITE_JPEG_QUALITY, 85])
        print(args.out)
        return 0
    src = cut[args.clip]
    original = decode(src)
    every = protected(src, ["temporal.keyframe_interval=1"], work / "every.mp4")
    profile = protected(src, args.sets, work / "profile.mp4")
    columns = [("original", original), ("every frame detected", every), ("now: the default", profile)]
    if args.before is not None:
        columns.insert(2, ("before: the previous default", decode(args.before)))
    rows = []
    for i in args.frames:
        pics = [label(frames[i], f"{name}, frame {i}") for name, frames in columns]
        h = round(original[i].shape[0] * args.width / original[i].shape[1])
        rows.append(np.concatenate([cv2.resize(p, (args.width, h), interpolation=cv2.INTER_AREA) for p in pics], 1))
    cv2.imwrite(str(args.out), np.concatenate(rows), [cv2.IMWRITE_JPEG_QUALITY, 82])
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
