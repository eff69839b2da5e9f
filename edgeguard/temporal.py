"""Keyframe detection with tracked carry-over between keyframes.

The detector runs on keyframes: at least every `keyframe_interval` frames, and on
any frame where a cheap motion check sees change that the tracked instances do not
explain. Frames between two keyframes are held back (at most one interval) until
the next keyframe is known; each of them then hides every instance of both
keyframes where that instance is on that frame:

- an instance seen at both keyframes follows its own optical flow from the first,
  and the drift that flow had gathered by the second is spread linearly over the
  interval, so its path ends exactly on the second keyframe's detection; its box
  is the larger of the two and its shape the union of both keyframes' masks;
- an instance seen at one keyframe only is carried by its own flow, forward from
  the first or backward from the second;
- each is grown by a margin that grows with its distance from the nearest keyframe
  that saw it (and faster while its flow is unsure), sized from measured tracking
  error (see `Margins`).

The motion check compares each frame with the last keyframe, warped by the
camera's motion: change where the keyframe's instances were and where their
tracks are now is explained; change elsewhere, or newly revealed scenery, beyond
`motion_min_area` forces a keyframe. Camera motion is estimated from background
corners; when it cannot be, the frame simply becomes a keyframe.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

import cv2
import numpy as np
import numpy.typing as npt

from edgeguard.config import TemporalConfig
from edgeguard.detections import BoolArray, Detections, clip_boxes
from edgeguard.protection import Mask
from edgeguard.tracking import FlowFrame, Track, match, seed, step

Image = npt.NDArray[np.uint8]
T = TypeVar("T")
Pads = npt.NDArray[np.int32]
# (detections, width, height, extra pixels around each instance or None) -> mask
Rasterize = Callable[[Detections, int, int, "Pads | None"], Mask]

MOTION_WIDTH = 320  # the motion check works on a small grey copy of the frame
MIN_TRACKS = 12  # fewer tracked background corners than this: camera motion is unknown
STILL = 0.25  # small-scale pixels: a camera that moved less than this is treated as still
NEW_SCENERY = 40  # full-frame px: a wider strip of newly revealed scenery counts as change
# Frames held when the stream ends: up to this many are carried by their instances' own flow
# (the motion check watched them as usual) instead of making the last one a keyframe.
TAIL = 4
Affine = npt.NDArray[np.float64]  # 2x3, keyframe (small scale) -> frame (small scale)
_OPEN = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
IDENTITY: Affine = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


@dataclass(frozen=True)
class Margins:
    """How far a carried instance may be from where it is placed, in pixels.

    Measured (`python -m bench.calibrate`: where the every-frame detector's boxes lie
    around the placed instances of the bench clips, as a share of their height):
    the 90th percentile needed about 1% + 0.5% per frame to the nearer keyframe for
    instances seen at both keyframes, more for those whose own flow missed the second
    keyframe or whose box changed between the two, and 3.5% + 1.2% per frame for
    instances seen at one keyframe only. What is used, chosen by `make bench`:

    - seen at both: half that (their path is pinned at both ends and their box is the
      larger of the two keyframes'), plus a tenth of the evidence (flow miss and box
      change, in pixels) from 3 frames out;
    - seen at one keyframe only: a quarter of it. Most are low-scoring detections the
      every-frame loop never sees; wider margins there bought no coverage, only area;
    - 1% of the height more per frame the instance's flow was lost.

    `scale` (temporal.margin_scale) multiplies all of it; `px` (temporal.margin) is
    added to every margin.
    """

    px: float
    scale: float = 1.0
    motion_slack: float = 0.25  # share of the height the motion check also allows (shadows, swinging bags)

    BOTH = 0.005
    BOTH_GROWTH = 0.0025
    EVIDENCE = 0.1
    ONE = 0.009
    ONE_GROWTH = 0.003
    UNSURE = 0.01

    @classmethod
    def of(cls, cfg: TemporalConfig) -> Margins:
        return cls(cfg.margin, cfg.margin_scale, cfg.motion_slack)

    def __call__(self, p: Placement) -> float:
        if p.both:
            evidence = (p.drift + p.resize) / max(1.0, p.height)
            share = self.BOTH + self.BOTH_GROWTH * p.frames + self.EVIDENCE * evidence * min(1.0, p.frames / 3)
        else:
            share = self.ONE + self.ONE_GROWTH * p.frames
        return self.px + self.scale * p.height * (share + self.UNSURE * p.unsure)

    def single(self, height: float, frames: int, unsure: int) -> float:
        """An instance followed from one keyframe (the motion check's view of the tracks)."""
        return self.px + self.scale * height * (self.ONE + self.ONE_GROWTH * frames + self.UNSURE * unsure)


@dataclass
class Key:
    index: int
    det: Detections
    mask: Mask  # full size, what the keyframe itself hides
    small: npt.NDArray[np.uint8]  # blurred small grey frame
    ghost: npt.NDArray[np.uint8]  # small scale: where its instances are, with slack (255)
    corners: npt.NDArray[np.float32] | None  # background corners to follow the camera with
    flow: FlowFrame
    tracks: list[Track]  # its instances, followed forward frame by frame


@dataclass(frozen=True)
class Planned(Generic[T]):
    item: T
    mask: Mask
    det: Detections | None  # the keyframe's own detections; None on carried frames
    reason: str  # "first", "interval", "motion", "camera", "last", or "carried"

    @property
    def keyframe(self) -> bool:
        return self.det is not None


@dataclass
class _Held(Generic[T]):
    """A frame waiting for the next keyframe."""

    item: T
    flow: FlowFrame


class Planner(Generic[T]):
    """Turns a stream of frames into (frame, mask) pairs, holding at most one interval of frames."""

    def __init__(
        self,
        cfg: TemporalConfig,
        detect: Callable[[Image, bool], Detections],  # (frame, stands in for carried frames)
        rasterize: Rasterize,
    ) -> None:
        self.cfg = cfg
        self.margins = Margins.of(cfg)
        # Called with each interval and its frames' items before they are placed (the bench measures with it).
        self.on_interval: Callable[[Interval, list[T]], None] | None = None
        self.detect = detect
        self.rasterize = rasterize
        self.keyframes = 0
        self.motion_keyframes = 0
        self.frames = 0
        self.busy = 0.0  # seconds in the motion check, tracking and carry-over (not detection)
        self._detect_time = 0.0
        self.waited = 0.0  # seconds waiting for decoded frames (idle)

    def _small(self, grey: Image) -> npt.NDArray[np.uint8]:
        """The motion check's copy: MOTION_WIDTH wide, blurred (from the tracker's grey frame)."""
        h, w = grey.shape[:2]
        sw = min(MOTION_WIDTH, w)
        sh = max(1, round(h * sw / w))
        return np.asarray(
            cv2.GaussianBlur(cv2.resize(grey, (sw, sh), interpolation=cv2.INTER_AREA), (5, 5), 0), np.uint8
        )

    def _key(self, index: int, image: Image, small: npt.NDArray[np.uint8], flow: FlowFrame) -> Key:
        h, w = image.shape[:2]
        t0 = time.perf_counter()
        # Its instances stand in for the carried frames around it: it looks harder (the detector
        # callback decides how). The every-frame loop does not (`_every_frame`).
        det = self.detect(image, True)
        self._detect_time += time.perf_counter() - t0
        mask = self.rasterize(det, w, h, None)
        self.keyframes += 1
        ghost = np.zeros_like(small)
        self._paint_small(ghost, det.boxes.astype(np.float64), 0, [0] * len(det), w)
        # Follow the camera with corners on the background only: people move on their own. Many
        # weak corners: a plain floor seen from above (example_02) has few strong ones, and too few
        # agreeing corners would make every frame a keyframe ("camera").
        corners = cv2.goodFeaturesToTrack(small, 400, 0.002, 4, mask=cv2.bitwise_not(ghost))
        return Key(index, det, mask, small, ghost, corners, flow, seed(flow, det))

    def _every_frame(self, item: T, image: Image, index: int) -> Planned[T]:
        t0 = time.perf_counter()
        det = self.detect(image, False)
        self._detect_time += time.perf_counter() - t0
        self.keyframes += 1
        return Planned(
            item, self.rasterize(det, image.shape[1], image.shape[0], None), det, "interval" if index else "first"
        )

    def _paint_small(
        self, canvas: npt.NDArray[np.uint8], boxes: npt.NDArray[np.float64], frames: int, unsure: list[int], width: int
    ) -> None:
        """Boxes (full-frame px) onto a small-scale canvas, each grown by its margin and the motion slack."""
        s = canvas.shape[1] / width
        for box, u in zip(boxes, unsure, strict=True):
            h = box[3] - box[1]
            pad = self.margins.single(h, frames, u) + self.margins.motion_slack * h
            x0, y0 = int((box[0] - pad) * s), int((box[1] - pad) * s)
            x1, y1 = int(np.ceil((box[2] + pad) * s)), int(np.ceil((box[3] + pad) * s))
            cv2.rectangle(canvas, (x0, y0), (x1, y1), 255, -1)

    def camera(self, key: Key, small: npt.NDArray[np.uint8]) -> Affine | None:
        """Camera motion from `key` to this frame (small scale), or None if it cannot be told."""
        if key.corners is None or len(key.corners) < MIN_TRACKS:
            return IDENTITY  # a bare scene: nothing to follow, compare as if still
        moved, status, _ = cv2.calcOpticalFlowPyrLK(key.small, small, key.corners, None, winSize=(15, 15), maxLevel=2)
        ok = status.reshape(-1) == 1
        if ok.sum() < MIN_TRACKS:
            return None
        src, dst = key.corners[ok].reshape(-1, 2), moved[ok].reshape(-1, 2)
        if np.median(np.abs(dst - src)) < STILL:
            return IDENTITY
        affine, inliers = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=1.0)
        if affine is None or inliers is None or int(inliers.sum()) < MIN_TRACKS:
            return None
        return np.asarray(affine, np.float64)

    def moved_outside(self, key: Key, small: npt.NDArray[np.uint8], affine: Affine, k: int, width: int) -> bool:
        """Did change since `key` that its tracked instances do not explain grow past motion_min_area?

        Explained: where the keyframe's instances were (what they uncovered by moving)
        and where their tracks are now, `k` frames on, each with its margin and slack.
        """
        size = (small.shape[1], small.shape[0])
        if affine is IDENTITY:
            ref, trusted = key.small, key.ghost.copy()
            unseen = None
        else:
            ref = cv2.warpAffine(key.small, affine, size, flags=cv2.INTER_LINEAR, borderValue=0)
            trusted = cv2.warpAffine(key.ghost, affine, size, flags=cv2.INTER_NEAREST, borderValue=0)
            unseen = cv2.warpAffine(np.full_like(key.small, 255), affine, size, flags=cv2.INTER_NEAREST) == 0
        if key.tracks:
            boxes = np.stack([t.at(k) for t in key.tracks])
            self._paint_small(trusted, boxes, k, [t.unsure[k] for t in key.tracks], width)
        changed = (cv2.absdiff(small, ref) > self.cfg.motion_threshold) & (trusted == 0)
        if unseen is not None:
            # No reference there (the warp's black border, blended a pixel in): only width counts, below.
            changed &= cv2.dilate(unseen.astype(np.uint8), np.ones((3, 3), np.uint8)) == 0
        # Opening drops one-pixel seams (misregistration, compression); a person is a solid blob.
        blobs = cv2.morphologyEx(changed.astype(np.uint8), cv2.MORPH_OPEN, _OPEN)
        if unseen is not None:
            # Scenery that came into view counts as change once the strip is wider than NEW_SCENERY:
            # anything narrower is at the frame's edge, where the next keyframe's tracks reach back.
            kk = max(3, 2 * round(NEW_SCENERY * small.shape[1] / width) + 1)
            wide = cv2.morphologyEx(unseen.astype(np.uint8), cv2.MORPH_OPEN, np.ones((kk, kk), np.uint8))
            blobs |= wide
        n, _, stats, _ = cv2.connectedComponentsWithStats(blobs, connectivity=8)
        largest = int(stats[1:, cv2.CC_STAT_AREA].max()) if n > 1 else 0
        return bool(largest > self.cfg.motion_min_area * blobs.size)

    def run(self, frames: Iterator[tuple[T, Image]]) -> Iterator[Planned[T]]:
        """Every frame once, in order, with the mask it must hide."""
        inner = self._run(self._timed(frames))
        while True:
            t0 = time.perf_counter()
            other = self._detect_time + self.waited
            try:
                planned = next(inner)
            except StopIteration:
                return
            finally:
                self.busy += time.perf_counter() - t0 - (self._detect_time + self.waited - other)
            yield planned

    def _timed(self, frames: Iterator[tuple[T, Image]]) -> Iterator[tuple[T, Image]]:
        """`frames`, counting the time spent waiting for them in `waited`."""
        while True:
            t0 = time.perf_counter()
            try:
                item = next(frames)
            except StopIteration:
                return
            finally:
                self.waited += time.perf_counter() - t0
            yield item

    def _run(self, frames: Iterator[tuple[T, Image]]) -> Iterator[Planned[T]]:
        cfg = self.cfg
        prev: Key | None = None
        held: list[_Held[T]] = []
        last: tuple[int, T, Image, npt.NDArray[np.uint8], FlowFrame] | None = None
        flow_before: FlowFrame | None = None
        for index, (item, image) in enumerate(frames):
            self.frames += 1
            if cfg.keyframe_interval == 1:
                yield self._every_frame(item, image, index)
                continue
            flow = FlowFrame.of(image)
            small = self._small(flow.grey)
            if prev is None:
                prev = self._key(index, image, small, flow)
                yield Planned(item, prev.mask, prev.det, "first")
                flow_before = flow
                continue
            assert flow_before is not None
            step(prev.tracks, flow_before, flow)
            flow_before = flow
            k = index - prev.index
            reason = ""
            if k >= cfg.keyframe_interval:
                reason = "interval"
            elif cfg.motion_check:
                affine = self.camera(prev, small)
                if affine is None:
                    reason = "camera"
                elif self.moved_outside(prev, small, affine, k, image.shape[1]):
                    reason = "motion"
            if not reason:
                held.append(_Held(item, flow))
                last = (index, item, image, small, flow)
                continue
            if reason in ("motion", "camera"):
                self.motion_keyframes += 1
            key = self._key(index, image, small, flow)
            yield from self._flush(prev, key, held, image.shape[1], image.shape[0])
            yield Planned(item, key.mask, key.det, reason)
            prev, last = key, None
        if held and last is not None and prev is not None:
            index, item, image, small, flow = last
            if len(held) <= TAIL:
                yield from self._flush(prev, None, held, image.shape[1], image.shape[0])
                return
            # The stream ended long after the last keyframe: the last frame becomes one.
            held.pop()
            key = self._key(index, image, small, flow)
            yield from self._flush(prev, key, held, image.shape[1], image.shape[0])
            yield Planned(item, key.mask, key.det, "last")

    def _flush(self, a: Key, b: Key | None, held: list[_Held[T]], w: int, h: int) -> Iterator[Planned[T]]:
        if not held:
            return
        interval = Interval(a, b, [frame.flow for frame in held])
        if self.on_interval is not None:
            self.on_interval(interval, [frame.item for frame in held])
        for k, frame in enumerate(held, start=1):
            placed = interval.at(k)
            det = _placed(placed, w, h)
            pad = np.ceil([self.margins(p) for p in placed]).astype(np.int32)
            yield Planned(frame.item, self.rasterize(det, w, h, pad), None, "carried")
        held.clear()


@dataclass(frozen=True)
class Placement:
    """Where a carried instance is on one frame, and what is known about the error of that."""

    box: npt.NDArray[np.float64]  # x0, y0, x1, y1, full-frame px, before any margin
    mask: BoolArray | None  # box-shaped; None: the whole box
    cls: str
    height: float  # of the instance at its keyframe(s)
    both: bool  # seen at both keyframes: its path is pinned at both ends
    frames: int  # to the nearest keyframe that saw it
    span: int  # frames between the keyframes
    drift: float  # both: how far its own flow missed the second keyframe's detection (px)
    resize: float  # both: how much its box changed between the keyframes (px, largest side)
    unsure: int  # frames its flow was extrapolated


class Interval:
    """The instances of two neighbouring keyframes, placed on each frame between them.

    Instances of the first are followed forward by their flow (`Key.tracks`, stepped
    as frames arrived) and paired with the second keyframe's by where they arrived;
    those only the second keyframe saw are followed backward over the held frames.
    Without a second keyframe (the end of a stream) the first's are followed forward.
    """

    def __init__(self, a: Key, b: Key | None, held: list[FlowFrame]) -> None:
        self.a = a
        if b is None:
            self.span, self.pairs, self.a_only, self.back = len(held) + 1, [], list(a.tracks), []
            self.found = Detections.empty(a.det.frame_size)
            return
        self.span = b.index - a.index
        self.found = b.det
        self.pairs = match(a.tracks, self.span, b.det)
        # An unsure pair may be two people: each end is also carried on its own.
        paired_b = {p.found for p in self.pairs if p.sure}
        paired_a = {p.track for p in self.pairs if p.sure}
        self.a_only = [a.tracks[i] for i in range(len(a.tracks)) if i not in paired_a]
        self.back = seed(b.flow, b.det.subset([j for j in range(len(b.det)) if j not in paired_b]))
        later = b.flow
        for flow in reversed(held):
            step(self.back, later, flow)
            later = flow

    def at(self, k: int) -> list[Placement]:
        """Every instance `k` frames after the first keyframe."""
        span, det = self.span, self.found
        out = []
        for pair in self.pairs:
            t, j = self.a.tracks[pair.track], pair.found
            box, mask, drift = _between(t, k, span, det, j)
            b = det.boxes[j].astype(np.float64)
            resize = float(np.abs((b[2:] - b[:2]) - (t.box[2:] - t.box[:2])).max())
            frames = min(k, span - k)
            out.append(Placement(box, mask, t.cls, box[3] - box[1], True, frames, span, drift, resize, t.unsure[k]))
        for t, steps in [(t, k) for t in self.a_only] + [(t, span - k) for t in self.back]:
            h = t.box[3] - t.box[1]
            out.append(Placement(t.at(steps), t.mask, t.cls, h, False, steps, span, 0.0, 0.0, t.unsure[steps]))
        return out


def _between(
    track: Track, k: int, span: int, det: Detections, j: int
) -> tuple[npt.NDArray[np.float64], BoolArray | None, float]:
    """Where an instance seen at both keyframes is `k` frames after the first (of `span`).

    Its own flow, corrected linearly for how far that flow missed the second keyframe's
    detection (the miss is returned too); the larger of the two keyframes' sizes (a walking
    person's box swings between such extremes with each stride, which interpolating would
    cut through); the union of both keyframes' masks. A box cut by a frame edge is followed
    by its other edge, the one that moves with the instance.
    """
    a, b = track.box, det.boxes[j].astype(np.float64)
    alpha = k / span
    here, arrived = track.at(k), track.at(span)
    size = np.maximum(a[2:] - a[:2], b[2:] - b[:2])
    limit = np.array(det.frame_size, np.float64)
    low_cut = (np.minimum(a[:2], b[:2]) <= 0) & (np.maximum(a[2:], b[2:]) < limit)
    high_cut = (np.maximum(a[2:], b[2:]) >= limit) & (np.minimum(a[:2], b[:2]) > 0)
    anchor = np.where(low_cut, 1.0, np.where(high_cut, 0.0, 0.5))  # 0 = low edge, 1 = high edge, 0.5 = centre
    point = here[:2] + anchor * (here[2:] - here[:2])
    miss = (b[:2] + anchor * (b[2:] - b[:2])) - (arrived[:2] + anchor * (arrived[2:] - arrived[:2]))
    low = point + alpha * miss - anchor * size
    if track.mask is None or det.masks is None:
        return np.concatenate([low, low + size]), None, float(np.hypot(*miss))
    out = np.zeros((round(size[1]), round(size[0])), np.bool_)
    for m in (track.mask, det.masks[j]):
        ox, oy = (anchor * (np.array(out.shape[::-1]) - np.array(m.shape[::-1]))).round().astype(int)
        out[oy : oy + m.shape[0], ox : ox + m.shape[1]] |= m
    return np.concatenate([low, low + out.shape[::-1]]), out, float(np.hypot(*miss))


def _placed(placed: list[Placement], w: int, h: int) -> Detections:
    """Instances at float positions, as whole-pixel Detections clipped to the frame (masks cropped to match)."""
    n = len(placed)
    if n == 0:
        return Detections.empty((w, h))
    xyxy = np.stack([p.box for p in placed])
    masks = [p.mask for p in placed]
    classes = tuple(p.cls for p in placed)
    has_masks = any(m is not None for m in masks)
    if not has_masks:
        return Detections(clip_boxes(xyxy, w, h), np.ones(n, np.float32), classes, None, (w, h))
    out_boxes = np.zeros((n, 4), np.int32)
    out_masks = []
    for i, (box, m) in enumerate(zip(xyxy, masks, strict=True)):
        x0, y0 = round(box[0]), round(box[1])
        mm = m if m is not None else np.ones((round(box[3] - box[1]), round(box[2] - box[0])), np.bool_)
        cx0, cy0 = max(0, x0), max(0, y0)
        cx1, cy1 = min(w, x0 + mm.shape[1]), min(h, y0 + mm.shape[0])
        if cx1 <= cx0 or cy1 <= cy0:  # carried out of the frame
            out_masks.append(np.zeros((0, 0), np.bool_))
            continue
        out_boxes[i] = (cx0, cy0, cx1, cy1)
        out_masks.append(np.ascontiguousarray(mm[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]))
    return Detections(out_boxes, np.ones(n, np.float32), classes, tuple(out_masks), (w, h))
