"""Where each instance of two neighbouring keyframes is on the frames between them.

An instance seen at both keyframes follows its own optical flow from the first, and
the drift that flow had gathered by the second is spread linearly over the interval,
so its path ends exactly on the second keyframe's detection; its box is the larger of
the two and its shape the union of both keyframes' masks. An instance seen at one
keyframe only is carried by its own flow, forward from the first or backward from the
second. Each is grown by a margin sized from measured tracking error (`Margins`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from edgeguard.config import TemporalConfig
from edgeguard.detections import BoolArray, Detections, clip_boxes
from edgeguard.masks import Pads, as_xy
from edgeguard.tracking import FlowFrame, Track, match, seed, step


class Keyframe(Protocol):
    """What carrying needs of a keyframe."""

    @property
    def index(self) -> int: ...
    @property
    def det(self) -> Detections: ...
    @property
    def flow(self) -> FlowFrame: ...
    @property
    def tracks(self) -> list[Track]: ...  # its instances, followed forward frame by frame


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

    `scale` (temporal.margin_scale) multiplies all of it, and `xy` (temporal.margin_xy)
    the margin across and up and down (the motion check's `single` is the same all round:
    there `motion_slack` dominates). At the 90th percentile the margin needed across is
    1.3-2.5x that needed up or down on vtest, dos and ecuador, where a walker's box swings
    wider with each stride; on pedestrians and example_02 it is the other way round
    (`bench.calibrate` prints both). (1.3, 0.8) lifted the worst-covered frame of vtest,
    dos and ecuador by about a point and moved the others' by 0.1, for 0.01-0.02 more
    overreach on every clip (`make bench`).
    `px` (temporal.margin) is added to every margin.
    """

    px: float
    scale: float = 1.0
    xy: tuple[float, float] = (1.0, 1.0)  # the shipped shape is temporal.margin_xy's default
    motion_slack: float = 0.25  # share of the height the motion check also allows (shadows, swinging bags)

    BOTH = 0.005
    BOTH_GROWTH = 0.0025
    EVIDENCE = 0.1
    ONE = 0.009
    ONE_GROWTH = 0.003
    UNSURE = 0.01

    @classmethod
    def of(cls, cfg: TemporalConfig) -> Margins:
        return cls(cfg.margin, cfg.margin_scale, cfg.margin_xy, cfg.motion_slack)

    def __call__(self, p: Placement) -> tuple[float, float]:
        """The margin across and up and down, in pixels."""
        m = self.measured(p)
        return self.px + m * self.xy[0], self.px + m * self.xy[1]

    def measured(self, p: Placement) -> float:
        if p.both:
            evidence = (p.drift + p.resize) / max(1.0, p.height)
            share = self.BOTH + self.BOTH_GROWTH * p.frames + self.EVIDENCE * evidence * min(1.0, p.frames / 3)
        else:
            share = self.ONE + self.ONE_GROWTH * p.frames
        return self.scale * p.height * (share + self.UNSURE * p.unsure)

    def single(self, height: float, frames: int, unsure: int) -> float:
        """An instance followed from one keyframe (the motion check's view of the tracks)."""
        return self.px + self.scale * height * (self.ONE + self.ONE_GROWTH * frames + self.UNSURE * unsure)


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

    Instances of the first are followed forward by their flow (`Keyframe.tracks`, stepped
    as frames arrived) and paired with the second keyframe's by where they arrived;
    those only the second keyframe saw are followed backward over the held frames.
    Without a second keyframe (the end of a stream) the first's are followed forward.
    """

    def __init__(self, a: Keyframe, b: Keyframe | None, held: list[FlowFrame], size: tuple[int, int]) -> None:
        self.a, self.size = a, size
        if b is None:
            self.span, self.pairs, self.a_only, self.back = len(held) + 1, [], list(a.tracks), []
            self.found = Detections.empty(size)
            return
        self.span = b.index - a.index
        self.found = b.det
        self.pairs = match(a.tracks, self.span, b.det)
        # An unsure pair may be two people: each end is also carried on its own.
        paired_b = {p.found for p in self.pairs if p.sure}
        paired_a = {p.track for p in self.pairs if p.sure}
        self.a_only = [a.tracks[i] for i in range(len(a.tracks)) if i not in paired_a]
        # Followed backward only over held frames: none held (back-to-back keyframes), none seeded.
        unpaired = [j for j in range(len(b.det)) if j not in paired_b] if held else []
        self.back = seed(b.flow, b.det.subset(unpaired))
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
            box, mask, drift = _between(t, k, span, det, j, self.size)
            b = det.boxes[j].astype(np.float64)
            resize = float(np.abs((b[2:] - b[:2]) - (t.box[2:] - t.box[:2])).max())
            frames = min(k, span - k)
            out.append(Placement(box, mask, t.cls, box[3] - box[1], True, frames, span, drift, resize, t.unsure[k]))
        out += [self._single(t, k) for t in self.a_only]
        out += [self._single(t, span - k) for t in self.back]
        return out

    def lost(self) -> list[Placement]:
        """The first keyframe's instances that the second did not find, where their flow put
        them on it (a detector that loses a person for one frame must not unveil them there)."""
        return [self._single(t, self.span) for t in self.a_only]

    def _single(self, t: Track, steps: int) -> Placement:
        h = t.box[3] - t.box[1]
        return Placement(t.at(steps), t.mask, t.cls, h, False, steps, self.span, 0.0, 0.0, t.unsure[steps])


def _between(
    track: Track, k: int, span: int, det: Detections, j: int, frame_size: tuple[int, int]
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
    limit = np.array(frame_size, np.float64)
    size = np.maximum(a[2:] - a[:2], b[2:] - b[:2])
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


def placed_detections(placed: list[Placement], pad: Pads, w: int, h: int) -> tuple[Detections, Pads]:
    """Instances at float positions, as whole-pixel Detections clipped to the frame (masks cropped
    to match), and their pads. An instance carried just past an edge whose margin still reaches
    the frame becomes what its grown box covers there.
    """
    n = len(placed)
    if n == 0:
        return Detections.empty((w, h)), as_xy(pad)
    pad = as_xy(pad).copy()
    xyxy = np.stack([p.box for p in placed])
    # How far outside the frame across and up and down (> 0 on either: wholly outside).
    gx, gy = np.maximum(-xyxy[:, 2], xyxy[:, 0] - w), np.maximum(-xyxy[:, 3], xyxy[:, 1] - h)
    outside = (gx > 0) | (gy > 0)
    keep = outside & (gx < pad[:, 0]) & (gy < pad[:, 1])
    xyxy[keep] += pad[keep][:, [0, 1, 0, 1]] * np.array([-1, -1, 1, 1])
    pad[keep] = 0
    gone = outside & ~keep
    masks = [None if keep[i] else p.mask for i, p in enumerate(placed)]
    classes = tuple(p.cls for p in placed)
    if all(m is None for m in masks):
        return Detections(clip_boxes(xyxy, w, h), np.ones(n, np.float32), classes, None, (w, h)), pad
    out_boxes = np.zeros((n, 4), np.int32)
    out_masks = []
    for i, (box, m) in enumerate(zip(xyxy, masks, strict=True)):
        x0, y0 = round(box[0]), round(box[1])
        mm = m if m is not None else np.ones((max(1, round(box[3] - box[1])), max(1, round(box[2] - box[0]))), np.bool_)
        cx0, cy0 = max(0, x0), max(0, y0)
        cx1, cy1 = min(w, x0 + mm.shape[1]), min(h, y0 + mm.shape[0])
        if gone[i] or cx1 <= cx0 or cy1 <= cy0:  # carried out of the frame
            out_masks.append(np.zeros((0, 0), np.bool_))
            continue
        out_boxes[i] = (cx0, cy0, cx1, cy1)
        out_masks.append(np.ascontiguousarray(mm[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]))
    return Detections(out_boxes, np.ones(n, np.float32), classes, tuple(out_masks), (w, h)), pad
