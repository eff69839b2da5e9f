"""Per-instance motion between keyframes, from sparse optical flow inside each instance.

Each instance a keyframe found becomes a `Track`: corners inside its mask (or the
middle of its box) followed frame to frame with pyramidal Lucas-Kanade, checked
forward and backward, and the median displacement of the points that survive is
the instance's motion. A track whose points run out keeps its last velocity and is
marked unsure, so its margin grows (`Track.unsure`). Camera motion needs no
special case here: points move with the image, whatever moved it.

Tracks run forward from one keyframe as frames arrive and backward from the next
keyframe over the buffered frames; `match` pairs the two keyframes' instances by
where the forward tracks arrived.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import numpy.typing as npt

from edgeguard.detections import BoolArray, Detections
from edgeguard.frames import Image

Points = npt.NDArray[np.float32]  # n x 2, track scale

TRACK_WIDTH = 640  # frames wider than this are tracked on a copy this wide
WINDOW = (15, 15)
LEVELS = 3  # pyramid levels: follows up to ~100 px a frame
MAX_POINTS = 16  # per instance
MIN_POINTS = 3  # fewer surviving points than this: the track is unsure for that step
FB_ERROR = 1.0  # forward-backward disagreement (track-scale px) beyond which a point is dropped
_LK_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03)


@dataclass
class FlowFrame:
    """One frame as the tracker sees it: grey, at track scale.

    (OpenCV's Python binding cannot take a prebuilt pyramid, so each LK call builds its own.)
    """

    grey: Image
    scale: float  # track-scale px per full-frame px

    @classmethod
    def of(cls, image: Image) -> FlowFrame:
        h, w = image.shape[:2]
        scale = min(1.0, TRACK_WIDTH / w)
        # Grey first: resizing one channel is a third of the work.
        grey = cv2.cvtColor(image[:, :, :3], cv2.COLOR_BGR2GRAY)
        if scale < 1.0:
            grey = cv2.resize(grey, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        return cls(np.asarray(grey, np.uint8), scale)


@dataclass(eq=False)
class Track:
    """One instance followed from its keyframe (`anchor`), forward or backward in time."""

    cls: str
    box: npt.NDArray[np.float64]  # x0, y0, x1, y1 at the anchor, full-frame px
    mask: BoolArray | None  # the instance's mask at the anchor (box-shaped), None for box-only models
    points: Points  # current positions, track scale
    # Displacement from the anchor (full-frame px) after each step: shifts[k] = after k steps.
    shifts: list[npt.NDArray[np.float64]] = field(default_factory=lambda: [np.zeros(2)])
    # Steps taken without enough points (motion extrapolated); grows the track's margin.
    unsure: list[int] = field(default_factory=lambda: [0])
    velocity: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(2))

    def at(self, k: int) -> npt.NDArray[np.float64]:
        """The anchor box moved by the displacement after `k` steps."""
        return self.box + np.tile(self.shifts[k], 2)


def seed(frame: FlowFrame, det: Detections) -> list[Track]:
    """A track for every instance of `det`, with corners inside it to follow."""
    grey, s = frame.grey, frame.scale
    gh, gw = grey.shape
    tracks = []
    for i, box in enumerate(det.boxes.astype(np.float64)):
        mask = det.masks[i] if det.masks is not None else None
        x0, y0, x1, y1 = box
        # The middle of the box: its edges are mostly background, which does not move with the person.
        bw, bh = x1 - x0, y1 - y0
        ix0, ix1 = int((x0 + 0.2 * bw) * s), int(np.ceil((x1 - 0.2 * bw) * s))
        iy0, iy1 = int((y0 + 0.1 * bh) * s), int(np.ceil((y1 - 0.1 * bh) * s))
        ix0, iy0 = max(0, min(ix0, gw - 1)), max(0, min(iy0, gh - 1))
        ix1, iy1 = max(ix0 + 1, min(ix1, gw)), max(iy0 + 1, min(iy1, gh))
        roi_mask = None
        if mask is not None and mask.size:
            full = cv2.resize(mask.astype(np.uint8), (max(1, round(bw * s)), max(1, round(bh * s))))
            canvas = np.zeros((gh, gw), np.uint8)
            ox, oy = int(x0 * s), int(y0 * s)
            canvas[oy : oy + full.shape[0], ox : ox + full.shape[1]] = full[: gh - oy, : gw - ox] * 255
            roi_mask = canvas[iy0:iy1, ix0:ix1]
        points = _corners(grey[iy0:iy1, ix0:ix1], roi_mask) + np.array([ix0, iy0], np.float32)
        tracks.append(Track(det.classes[i], box, mask, points.astype(np.float32)))
    return tracks


def _corners(roi: Image, mask: Image | None) -> Points:
    """Up to MAX_POINTS corners in `roi`, topped up with a grid so even a flat instance has points."""
    h, w = roi.shape
    found = None
    if h >= 3 and w >= 3:
        found = cv2.goodFeaturesToTrack(roi, MAX_POINTS, 0.01, max(2.0, min(h, w) / 6), mask=mask)
    pts = np.zeros((0, 2), np.float32) if found is None else found.reshape(-1, 2)
    if len(pts) < MIN_POINTS + 1:
        gx, gy = np.meshgrid(np.linspace(0.25, 0.75, 3) * (w - 1), np.linspace(0.25, 0.75, 3) * (h - 1))
        pts = np.concatenate([pts, np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)])
    return pts


def step(tracks: list[Track], src: FlowFrame, dst: FlowFrame) -> None:
    """Move every track from `src` to `dst` (the next frame, or the previous one when going backward)."""
    if not tracks:
        return
    # Every track has points: seeding guarantees some, and a step that loses too many keeps the old ones.
    pts = np.concatenate([t.points for t in tracks]).reshape(-1, 1, 2)
    fwd, st1, _ = cv2.calcOpticalFlowPyrLK(
        src.grey, dst.grey, pts, None, winSize=WINDOW, maxLevel=LEVELS, criteria=_LK_CRITERIA
    )
    back, st2, _ = cv2.calcOpticalFlowPyrLK(
        dst.grey, src.grey, fwd, None, winSize=WINDOW, maxLevel=LEVELS, criteria=_LK_CRITERIA
    )
    fb = np.linalg.norm((back - pts).reshape(-1, 2), axis=1)
    good = (st1.reshape(-1) == 1) & (st2.reshape(-1) == 1) & (fb < FB_ERROR)
    moved = fwd.reshape(-1, 2)
    start = 0
    for t in tracks:
        n = len(t.points)
        ok = good[start : start + n]
        new, old = moved[start : start + n][ok], t.points[ok]
        start += n
        if len(new) >= MIN_POINTS:
            t.velocity = np.median(new - old, axis=0).astype(np.float64) / src.scale
            t.points = new
            t.unsure.append(t.unsure[-1])
        else:
            # Too few points to tell: keep the last velocity, carry the points along, and be unsure.
            t.points = t.points + (t.velocity * src.scale).astype(np.float32)
            t.unsure.append(t.unsure[-1] + 1)
        t.shifts.append(t.shifts[-1] + t.velocity)


@dataclass(frozen=True)
class Pair:
    track: int  # index into the forward tracks
    found: int  # index into the second keyframe's instances
    sure: bool  # paired by where the track arrived; else only by being the nearest of its class


def match(forward: list[Track], k: int, det: Detections, min_iou: float = 0.2) -> list[Pair]:
    """Pairs (track, instance of `det`) of the same class.

    First one to one, by the overlap of where each track arrived after `k` steps (sure).
    A track whose flow was lost for some of those steps may have arrived anywhere near, so
    what is left is paired with the nearest instance of its class within reach of its
    uncertainty (unsure: the caller carries both ends on their own too, in case they are
    two people).
    """
    if not forward or len(det) == 0:
        return []
    a = np.stack([t.at(k) for t in forward])
    b = det.boxes.astype(np.float64)
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    iou = inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)
    same = np.array([[t.cls == c for c in det.classes] for t in forward], bool)
    iou = np.where(same, iou, 0.0)
    pairs: list[Pair] = []
    # Greedy by overlap: crowds rarely make it differ from an optimal assignment here.
    while True:
        i, j = np.unravel_index(int(np.argmax(iou)), iou.shape)
        if iou[i, j] < min_iou:
            break
        pairs.append(Pair(int(i), int(j), True))
        iou[i, :] = 0.0
        iou[:, j] = 0.0
    # Then the unsure: nearest of the class within half a box diagonal per frame of lost flow.
    taken_a, taken_b = {p.track for p in pairs}, {p.found for p in pairs}
    ca, cb = (a[:, :2] + a[:, 2:]) / 2, (b[:, :2] + b[:, 2:]) / 2
    dist = np.linalg.norm(ca[:, None, :] - cb[None, :, :], axis=2)
    reach = np.array([0.5 * t.unsure[k] * float(np.hypot(*(t.box[2:] - t.box[:2]))) for t in forward])
    dist = np.where(same & (dist <= reach[:, None]), dist, np.inf)
    dist[list(taken_a), :] = np.inf
    dist[:, list(taken_b)] = np.inf
    while np.isfinite(dist).any():
        i, j = np.unravel_index(int(np.argmin(dist)), dist.shape)
        pairs.append(Pair(int(i), int(j), False))
        dist[i, :] = np.inf
        dist[:, j] = np.inf
    return pairs
