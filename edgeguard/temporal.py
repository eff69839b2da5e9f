"""Keyframe detection with conservative carry-over between keyframes.

The detector runs on keyframes: at least every `keyframe_interval` frames, and
on any frame where a cheap motion check sees change outside the area the last
keyframe protects (grown by `grow`). Every frame between two keyframes hides
the union of both keyframes' areas, the regions swept by instances matched
between them, all grown by `grow`. So no carried frame is less protected than
either neighbouring keyframe, and anything that moved out of the protected
area since the last keyframe forces a fresh detection on the frame it does.

Camera motion (handheld clips, pan/tilt gateways) is estimated from tracked
background corners and compensated: the keyframe is warped onto each frame
before comparing, carried areas are warped along, and scenery that comes
into view counts as change. When the camera motion cannot be estimated the
frame simply becomes a keyframe.
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
from edgeguard.detections import Detections
from edgeguard.protection import Mask, grow

Image = npt.NDArray[np.uint8]
T = TypeVar("T")

MOTION_WIDTH = 320  # the motion check works on a small grey copy of the frame
MIN_TRACKS = 12  # fewer tracked background corners than this: camera motion is unknown
STILL = 0.25  # small-scale pixels: a camera that moved less than this is treated as still
Affine = npt.NDArray[np.float64]  # 2x3, keyframe (small scale) -> frame (small scale)
_OPEN = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
IDENTITY: Affine = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


@dataclass
class Key:
    index: int
    det: Detections
    mask: Mask  # full size, what the keyframe itself hides
    small: npt.NDArray[np.uint8]  # blurred small grey frame
    trusted: npt.NDArray[np.uint8]  # small-scale: protected area grown by `grow` (255 = trusted)
    corners: npt.NDArray[np.float32] | None  # background corners to follow the camera with


@dataclass(frozen=True)
class Planned(Generic[T]):
    item: T
    mask: Mask
    det: Detections | None  # the keyframe's own detections; None on carried frames
    reason: str  # "first", "interval", "motion", "camera", "last", or "carried"

    @property
    def keyframe(self) -> bool:
        return self.det is not None


class Planner(Generic[T]):
    """Turns a stream of frames into (frame, mask) pairs, holding at most one interval of frames."""

    def __init__(
        self,
        cfg: TemporalConfig,
        detect: Callable[[Image, bool], Detections],  # (frame, stands in for carried frames)
        rasterize: Callable[[Detections, int, int], Mask],
    ) -> None:
        self.cfg = cfg
        self.detect = detect
        self.rasterize = rasterize
        self.keyframes = 0
        self.motion_keyframes = 0
        self.frames = 0
        self.busy = 0.0  # seconds in the motion check and carry-over (not detection)
        self._detect_time = 0.0
        self.waited = 0.0  # seconds waiting for decoded frames (idle)

    def _small(self, image: Image) -> npt.NDArray[np.uint8]:
        h, w = image.shape[:2]
        sw = min(MOTION_WIDTH, w)
        sh = max(1, round(h * sw / w))
        grey = cv2.cvtColor(cv2.resize(image[:, :, :3], (sw, sh), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
        return np.asarray(cv2.GaussianBlur(grey, (5, 5), 0), np.uint8)

    def _key(self, index: int, image: Image, small: npt.NDArray[np.uint8]) -> Key:
        h, w = image.shape[:2]
        t0 = time.perf_counter()
        # A keyframe whose areas stand in for carried frames looks harder (the detector callback
        # decides how); every frame its own keyframe (interval 1) need not.
        det = self.detect(image, self.cfg.keyframe_interval > 1)
        self._detect_time += time.perf_counter() - t0
        mask = self.rasterize(det, w, h)
        self.keyframes += 1
        size = (small.shape[1], small.shape[0])
        trusted = cv2.resize(grow(mask, self.cfg.grow), size, interpolation=cv2.INTER_NEAREST)
        # Shrink by a small-scale pixel so resizing never widens what the check ignores.
        trusted = cv2.erode(trusted, np.ones((3, 3), np.uint8))
        # Follow the camera with corners on the background only: people move on their own.
        corners = cv2.goodFeaturesToTrack(small, 160, 0.01, 8, mask=cv2.bitwise_not(trusted))
        return Key(index, det, mask, small, trusted, corners)

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

    def moved_outside(self, key: Key, small: npt.NDArray[np.uint8], affine: Affine) -> bool:
        """Did a region of change since `key`, outside the area it protects, grow past motion_min_area?"""
        size = (small.shape[1], small.shape[0])
        if affine is IDENTITY:
            ref, trusted = key.small, key.trusted
            unseen = None
        else:
            ref = cv2.warpAffine(key.small, affine, size, flags=cv2.INTER_LINEAR, borderValue=0)
            trusted = cv2.warpAffine(key.trusted, affine, size, flags=cv2.INTER_NEAREST, borderValue=0)
            unseen = cv2.warpAffine(np.full_like(key.small, 255), affine, size, flags=cv2.INTER_NEAREST) == 0
        changed = (cv2.absdiff(small, ref) > self.cfg.motion_threshold) & (trusted == 0)
        if unseen is not None:
            # No reference there (the warp's black border, blended a pixel in): only width counts, below.
            changed &= cv2.dilate(unseen.astype(np.uint8), np.ones((3, 3), np.uint8)) == 0
        # Opening drops one-pixel seams (misregistration, compression); a person is a solid blob.
        blobs = cv2.morphologyEx(changed.astype(np.uint8), cv2.MORPH_OPEN, _OPEN)
        if unseen is not None:
            # Scenery that came into view counts as change once the strip is wider than the
            # margin carried areas get: anything narrower lies within the next keyframe's
            # (edge-clipped) boxes grown by that margin.
            k = max(3, 2 * round(self.cfg.grow * small.shape[1] / key.mask.shape[1]) + 1)
            wide = cv2.morphologyEx(unseen.astype(np.uint8), cv2.MORPH_OPEN, np.ones((k, k), np.uint8))
            blobs |= wide
        n, _, stats, _ = cv2.connectedComponentsWithStats(blobs, connectivity=8)
        largest = int(stats[1:, cv2.CC_STAT_AREA].max()) if n > 1 else 0
        return bool(largest > self.cfg.motion_min_area * blobs.size)

    def carry(self, a: Key, b: Key, a_to_b: Affine, a_to_t: Affine, full: tuple[int, int]) -> Mask:
        """What a frame between keyframes `a` and `b` hides, in that frame's coordinates."""
        return self._segment(a, b, a_to_b, full).at(a_to_t)

    def _segment(self, a: Key, b: Key, a_to_b: Affine, full: tuple[int, int]) -> _Segment:
        w, h = full
        scale = (w / a.small.shape[1], h / a.small.shape[0])
        if a_to_b is IDENTITY:
            mask = cv2.bitwise_or(a.mask, b.mask)
            for hull in swept_hulls(a.det, b.det, IDENTITY):
                cv2.fillConvexPoly(mask, hull, 255)
            return _Segment(grow(mask, self.cfg.grow), None, IDENTITY, scale)
        # Join in a's coordinates (b moved back by the camera motion, plus the swept path);
        # b's own area also travels separately so none of it is lost past a's borders.
        b_to_a = cv2.invertAffineTransform(a_to_b)
        mask = cv2.bitwise_or(a.mask, _warp(b.mask, b_to_a, scale))
        for hull in swept_hulls(a.det, b.det, _scaled(b_to_a, scale)):
            cv2.fillConvexPoly(mask, hull, 255)
        return _Segment(grow(mask, self.cfg.grow), grow(b.mask, self.cfg.grow), b_to_a, scale)

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
        pending: list[tuple[T, Affine]] = []
        last: tuple[int, T, Image, npt.NDArray[np.uint8]] | None = None
        full = (0, 0)
        for index, (item, image) in enumerate(frames):
            self.frames += 1
            small = self._small(image)
            full = (image.shape[1], image.shape[0])
            if prev is None:
                prev = self._key(index, image, small)
                yield Planned(item, prev.mask, prev.det, "first")
                continue
            reason = ""
            affine: Affine | None = IDENTITY
            if index - prev.index >= cfg.keyframe_interval:
                reason = "interval"
            elif cfg.motion_check:
                affine = self.camera(prev, small)
                if affine is None:
                    reason = "camera"
                elif self.moved_outside(prev, small, affine):
                    reason = "motion"
            if not reason:
                assert affine is not None
                pending.append((item, affine))
                last = (index, item, image, small)
                continue
            if reason in ("motion", "camera"):
                self.motion_keyframes += 1
            key = self._key(index, image, small)
            yield from self._flush(prev, key, pending, small, full)
            yield Planned(item, key.mask, key.det, reason)
            prev, last = key, None
        if pending and last is not None and prev is not None:
            # The stream ended between keyframes: the last frame becomes one.
            index, item, image, small = last
            pending.pop()
            key = self._key(index, image, small)
            yield from self._flush(prev, key, pending, small, full)
            yield Planned(item, key.mask, key.det, "last")

    def _flush(
        self, a: Key, b: Key, pending: list[tuple[T, Affine]], b_small: npt.NDArray[np.uint8], full: tuple[int, int]
    ) -> Iterator[Planned[T]]:
        if not pending:
            return
        a_to_b = self.camera(a, b_small)
        if a_to_b is None:
            # Too far to track from a; b directly follows the last carried frame, whose motion is known.
            a_to_b = pending[-1][1]
        segment = self._segment(a, b, a_to_b, full)
        for item, a_to_t in pending:
            yield Planned(item, segment.at(a_to_t), None, "carried")
        pending.clear()


@dataclass(frozen=True)
class _Segment:
    """The carried area of one keyframe interval, placed on each frame by its camera motion."""

    in_a: Mask  # a's and b's areas and the swept paths, grown, in a's coordinates
    b_only: Mask | None  # b's area grown, in b's coordinates (None: camera still)
    b_to_a: Affine
    scale: tuple[float, float]

    def at(self, a_to_t: Affine) -> Mask:
        if a_to_t is IDENTITY and self.b_only is None:
            return self.in_a
        mask = self.in_a if a_to_t is IDENTITY else _warp(self.in_a, a_to_t, self.scale)
        if self.b_only is not None:
            mask = cv2.bitwise_or(mask, _warp(self.b_only, _compose(a_to_t, self.b_to_a), self.scale))
        return mask


def _compose(outer: Affine, inner: Affine) -> Affine:
    """outer(inner(x)) for 2x3 affine transforms."""
    m: Affine = np.vstack([outer, [0.0, 0.0, 1.0]]) @ np.vstack([inner, [0.0, 0.0, 1.0]])
    return m[:2]


def _scaled(affine: Affine, s: tuple[float, float]) -> Affine:
    """A small-scale affine transform in full-frame pixels."""
    sx, sy = s
    out = affine.copy()
    out[0, 1] *= sx / sy
    out[1, 0] *= sy / sx
    out[0, 2] *= sx
    out[1, 2] *= sy
    return out


def _warp(mask: Mask, affine: Affine, s: tuple[float, float]) -> Mask:
    h, w = mask.shape
    return np.asarray(
        cv2.warpAffine(mask, _scaled(affine, s), (w, h), flags=cv2.INTER_NEAREST, borderValue=0), np.uint8
    )


def swept_hulls(a: Detections, b: Detections, b_to_a: Affine) -> list[npt.NDArray[np.int32]]:
    """For each instance of `a` matched in `b`, the convex hull of both boxes (the path between them).

    `b_to_a` maps b's full-frame pixels to a's (camera motion); boxes of b are
    replaced by the axis-aligned box around their mapped corners.
    """
    hulls: list[npt.NDArray[np.int32]] = []
    if len(a) == 0 or len(b) == 0:
        return hulls
    ab, bb = a.boxes.astype(np.float64), b.boxes.astype(np.float64)
    if b_to_a is not IDENTITY:
        corners = np.stack([bb[:, [0, 1]], bb[:, [2, 1]], bb[:, [2, 3]], bb[:, [0, 3]]], axis=1)  # n,4,2
        mapped = corners @ b_to_a[:, :2].T + b_to_a[:, 2]
        bb = np.concatenate([mapped.min(axis=1), mapped.max(axis=1)], axis=1)
    ix0 = np.maximum(ab[:, None, 0], bb[None, :, 0])
    iy0 = np.maximum(ab[:, None, 1], bb[None, :, 1])
    ix1 = np.minimum(ab[:, None, 2], bb[None, :, 2])
    iy1 = np.minimum(ab[:, None, 3], bb[None, :, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area_a = (ab[:, 2] - ab[:, 0]) * (ab[:, 3] - ab[:, 1])
    area_b = (bb[:, 2] - bb[:, 0]) * (bb[:, 3] - bb[:, 1])
    iou = inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)
    ca = (ab[:, :2] + ab[:, 2:]) / 2
    cb = (bb[:, :2] + bb[:, 2:]) / 2
    dist = np.linalg.norm(ca[:, None, :] - cb[None, :, :], axis=2)
    diag = np.hypot(ab[:, 2] - ab[:, 0], ab[:, 3] - ab[:, 1])
    same = np.array([[ca_ == cb_ for cb_ in b.classes] for ca_ in a.classes], dtype=bool)
    for i in range(len(a)):
        # Overlap first; else the nearest box of the class within one box diagonal.
        score = np.where(same[i], iou[i], -1.0)
        j = int(score.argmax())
        if score[j] <= 0:
            near = np.where(same[i], dist[i], np.inf)
            j = int(near.argmin())
            if not near[j] <= diag[i]:
                continue
        x0, y0, x1, y1 = ab[i]
        u0, v0, u1, v1 = bb[j]
        pts = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [u0, v0], [u1, v0], [u1, v1], [u0, v1]], np.int32)
        hulls.append(cv2.convexHull(pts))
    return hulls
