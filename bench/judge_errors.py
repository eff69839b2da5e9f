"""What the judges found that is no person or no face present, each looked at by eye in its miss picture.

A judge error is named by one of its boxes (media, judge, frame, box); the judge's boxes
on the other frames that continue it (overlap of 0.3 or more, frame to frame, both ways,
bridging up to GAP frames the judge missed) are the same object. They are set aside
before recall is counted and reported apart, so a reader can check each one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from bench.judges import Boxes, Judged


@dataclass(frozen=True)
class JudgeError:
    media: str  # clip or photo file name
    kind: str  # "person", "centerface" or "yunet"
    frame: int
    box: tuple[float, float, float, float]  # about where the judge put it on that frame
    what: str


_BIN = "a litter bin on the far pavement (the camera pans past it)"
_STREET = "a box over a stretch of street, no face in it"
ERRORS = [
    JudgeError("vtest.avi", "person", 0, (311, 208, 321, 240), "a camera on a tripod"),
    JudgeError("vtest.avi", "person", 12, (181, 114, 191, 129), "a yellow warning sign on the pavement"),
    *(
        JudgeError("ecuador.mp4", "person", f, box, _BIN)
        for f, box in [
            (13, (911, 348, 958, 454)),
            (30, (875, 366, 915, 468)),
            (42, (848, 366, 889, 469)),
            (51, (827, 358, 866, 470)),
            (70, (776, 357, 816, 467)),
            (82, (750, 361, 789, 467)),
        ]
    ),
    *(
        JudgeError("ecuador.mp4", "person", f, box, "a black post on the far pavement (the camera pans past it)")
        for f, box in [
            (15, (1258, 377, 1275, 430)),
            (18, (1247, 378, 1266, 431)),
            (24, (1232, 376, 1244, 431)),
            (27, (1226, 382, 1243, 431)),
            (43, (1183, 380, 1203, 429)),
        ]
    ),
    JudgeError("ecuador.mp4", "person", 43, (1231, 361, 1244, 430), "a white pole leaning on a shop front"),
    JudgeError("ecuador.mp4", "yunet", 78, (1155, 283, 1180, 310), "a no-entry road sign"),
    JudgeError("pedestrians.mp4", "yunet", 0, (169, 141, 200, 180), "a face on a poster in the shop window"),
    *(
        JudgeError("pedestrians.mp4", "person", f, box, "the shop window display (a poster of people)")
        for f, box in [(19, (102, 115, 210, 337)), (29, (102, 106, 218, 327)), (32, (102, 103, 217, 330))]
    ),
    JudgeError("pedestrians.mp4", "yunet", 44, (1456, -11, 1636, 217), _STREET),
    JudgeError("pedestrians.mp4", "yunet", 60, (1259, -8, 1519, 308), _STREET),
    JudgeError("pedestrians.mp4", "yunet", 74, (1346, 8, 1498, 233), _STREET),
]


GAP = 5  # frames the judge may miss an object before its chain ends


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _boxes(j: Judged, kind: str) -> Boxes:
    return j.persons if kind == "person" else j.centerface if kind == "centerface" else j.yunet


def _with(j: Judged, kind: str, boxes: Boxes) -> Judged:
    if kind == "person":
        return replace(j, persons=boxes)
    return replace(j, centerface=boxes) if kind == "centerface" else replace(j, yunet=boxes)


def set_aside(
    media: str, judged: list[Judged], errors: Sequence[JudgeError] = ERRORS
) -> tuple[list[Judged], list[tuple[int, str, str]]]:
    """`judged` without the known judge `errors`, and what was set aside: (frame, kind, what)."""
    found: dict[tuple[int, str], dict[int, str]] = {}  # (frame, kind) -> box index -> what
    for e in (e for e in errors if e.media == media and e.frame < len(judged)):
        for f, i in _chain(judged, e).items():
            found.setdefault((f, e.kind), {})[i] = e.what
    out = list(judged)
    removed: list[tuple[int, str, str]] = []
    for (f, kind), boxes in found.items():
        out[f] = _with(out[f], kind, np.delete(_boxes(out[f], kind), sorted(boxes), axis=0))
        removed += [(f, kind, what) for what in boxes.values()]
    return out, removed


def _chain(judged: list[Judged], e: JudgeError) -> dict[int, int]:
    """The judge's box for `e` on every frame it continues to (frame -> box index)."""
    start = _boxes(judged[e.frame], e.kind)
    if len(start) == 0:
        return {}
    best = int(np.argmax([_iou(b, e.box) for b in start.tolist()]))
    if _iou(start[best].tolist(), e.box) < 0.3:
        return {}
    hits = {e.frame: best}
    for direction in (1, -1):
        f, last, gap = e.frame, start[best].tolist(), 0
        while 0 <= f + direction < len(judged) and gap <= GAP:
            f += direction
            boxes = _boxes(judged[f], e.kind)
            overlaps = [_iou(b, last) for b in boxes.tolist()]
            if not overlaps or max(overlaps) < 0.3:
                gap += 1  # the judge missed it on this frame: look on
                continue
            gap = 0
            hits[f] = int(np.argmax(overlaps))
            last = boxes[hits[f]].tolist()
    return hits
