"""Keyframe detection with tracked carry-over between keyframes.

The detector runs on keyframes: at least every `keyframe_interval` frames, and on
any frame where a cheap motion check sees change that the tracked instances do not
explain. Frames between two keyframes are held back (at most one interval) until
the next keyframe is known; each of them then hides every instance of both
keyframes where that instance is on that frame, with a margin (`edgeguard.carry`).

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

from edgeguard.carry import Interval, Margins, Placement, placed_detections
from edgeguard.config import TemporalConfig
from edgeguard.detections import Detections
from edgeguard.frames import Image, Mask
from edgeguard.masks import Pads
from edgeguard.tracking import FlowFrame, Track, seed, step

T = TypeVar("T")
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
            yield from self._closed(prev, key, held, item, reason)
            prev, last = key, None
        if held and last is not None and prev is not None:
            index, item, image, small, flow = last
            # Without the motion check nothing would notice a person walking into the tail.
            if len(held) <= TAIL and cfg.motion_check:
                interval = Interval(prev, None, [frame.flow for frame in held], (image.shape[1], image.shape[0]))
                yield from self._carried(interval, held)
                return
            # The stream ended long after the last keyframe: the last frame becomes one.
            held.pop()
            key = self._key(index, image, small, flow)
            yield from self._closed(prev, key, held, item, "last")

    def _closed(self, a: Key, b: Key, held: list[_Held[T]], item: T, reason: str) -> Iterator[Planned[T]]:
        """The frames held between keyframes `a` and `b`, then `b` itself: what it found, and the
        instances of `a` it did not find where their flow put them."""
        h, w = b.mask.shape
        interval = Interval(a, b, [frame.flow for frame in held], (w, h))
        yield from self._carried(interval, held)
        lost = interval.lost()
        yield Planned(item, np.maximum(b.mask, self._placed_mask(lost, w, h)) if lost else b.mask, b.det, reason)

    def _carried(self, interval: Interval, held: list[_Held[T]]) -> Iterator[Planned[T]]:
        if self.on_interval is not None and held:
            self.on_interval(interval, [frame.item for frame in held])
        w, h = interval.size
        for k, frame in enumerate(held, start=1):
            yield Planned(frame.item, self._placed_mask(interval.at(k), w, h), None, "carried")
        held.clear()

    def _placed_mask(self, placed: list[Placement], w: int, h: int) -> Mask:
        return placed_mask(placed, self.margins, self.rasterize, w, h)


def placed_mask(
    placed: list[Placement], margins: Callable[[Placement], tuple[float, float]], rasterize: Rasterize, w: int, h: int
) -> Mask:
    """What hides the instances `placed` on a frame: each grown by its margin, in whole pixels."""
    pad = np.ceil([margins(p) for p in placed]).astype(np.int32)
    det, pad = placed_detections(placed, pad, w, h)
    return rasterize(det, w, h, pad)
