"""Turn detections into the mask of pixels to hide (the styles in `styles` hide them)."""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from edgeguard.detections import Detections, clip_boxes
from edgeguard.frames import Mask

Pads = npt.NDArray[np.int32]  # pixels to grow each instance by, beside `dilate`: one per instance, or (x, y) each


def hidden_share(mask: Mask) -> float:
    """The share of a frame's pixels that `mask` hides (0..1)."""
    return float(np.count_nonzero(mask)) / mask.size if mask.size else 0.0


def rasterize(
    det: Detections,
    width: int,
    height: int,
    *,
    shape: str,
    dilate: int,
    pad: Pads | None = None,
    head: float = 0.0,
    heads_only: bool = False,
) -> Mask:
    """The pixels to hide: instance masks (or boxes), grown by `dilate` pixels, and each
    instance by its own `pad` too (carried instances: how far they may be from where they are placed).

    A pad is either one number per instance or an (x, y) pair: across and up-down.
    `head` extends every person upward by that share of its height: detectors often cut
    a person's box at the forehead, or lose the head against a busy background.
    `heads_only` (face mode) hides just the head of every person.
    """
    mask = np.zeros((height, width), np.uint8)
    pads = as_xy(np.zeros(len(det), np.int32) if pad is None else pad)
    if heads_only:
        det = as_heads(det)
    use_masks = shape == "mask" and det.masks is not None
    if head > 0 and not heads_only:
        det, pads = _with_heads(det, head, pads)
    if not use_masks:
        # A box grown by a square dilation is the box made larger: no dilation needed.
        for (x0, y0, x1, y1), (px, py) in zip(det.boxes.tolist(), (pads + max(0, dilate)).tolist(), strict=True):
            if x1 > x0 and y1 > y0:
                mask[max(0, y0 - py) : y1 + py, max(0, x0 - px) : x1 + px] = 255
        return mask
    assert det.masks is not None
    for (x0, y0, x1, y1), m, (px, py) in zip(det.boxes.tolist(), det.masks, pads.tolist(), strict=True):
        if x1 <= x0 or y1 <= y0:
            continue
        if px <= 0 and py <= 0:
            mask[y0:y1, x0:x1][m] = 255
            continue
        # Grow this instance alone, in a canvas just large enough for it.
        canvas = np.zeros((y1 - y0 + 2 * py, x1 - x0 + 2 * px), np.uint8)
        canvas[py : py + y1 - y0, px : px + x1 - x0][m] = 255
        canvas = grow(canvas, px, py)
        ys, xs = slice(max(0, y0 - py), min(height, y1 + py)), slice(max(0, x0 - px), min(width, x1 + px))
        mask[ys, xs] |= canvas[ys.start - (y0 - py) : ys.stop - (y0 - py), xs.start - (x0 - px) : xs.stop - (x0 - px)]
    return grow(mask, dilate)


def as_xy(pads: Pads) -> Pads:
    """Pads as (x, y) pairs, one row per instance."""
    return np.stack([pads, pads], axis=1) if pads.ndim == 1 else pads


HEAD_WIDTH = 0.6  # of the person's box, centred: where a head above it can be
# Face mode: a person's head, as shares of its box: the middle FACE_WIDTH of its width, from
# FACE_ABOVE of its height above the top (a box cut at the forehead) to FACE_BELOW below it.
FACE_WIDTH, FACE_ABOVE, FACE_BELOW = 0.5, 0.05, 0.18


def as_heads(det: Detections) -> Detections:
    """Every person replaced by its head's box (face mode); other instances as they are."""
    persons = [i for i, c in enumerate(det.classes) if c == "person"]
    if not persons:
        return det
    w, h = det.frame_size
    b = det.boxes[persons].astype(np.float64)
    bw, bh, cx = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1], (b[:, 0] + b[:, 2]) / 2
    heads = np.stack(
        [cx - FACE_WIDTH * bw / 2, b[:, 1] - FACE_ABOVE * bh, cx + FACE_WIDTH * bw / 2, b[:, 1] + FACE_BELOW * bh], 1
    )
    boxes = det.boxes.copy()
    boxes[persons] = clip_boxes(heads, w, h)
    masks = None
    if det.masks is not None:
        full = {
            i: np.ones((y1 - y0, x1 - x0), np.bool_)
            for i, (x0, y0, x1, y1) in zip(persons, boxes[persons].tolist(), strict=True)
        }
        masks = tuple(full.get(i, m) for i, m in enumerate(det.masks))
    return Detections(boxes, det.scores, det.classes, masks, det.frame_size)


def _with_heads(det: Detections, head: float, pads: Pads) -> tuple[Detections, Pads]:
    """A box `head` x its height tall above every person (its middle HEAD_WIDTH), with the person's pad."""
    extra, extra_pads = [], []
    for i, cls in enumerate(det.classes):
        if cls != "person":
            continue
        x0, y0, x1, y1 = det.boxes[i].tolist()
        top = max(0, y0 - int(np.ceil(head * (y1 - y0))))
        half = HEAD_WIDTH * (x1 - x0) / 2
        cx = (x0 + x1) / 2
        if top < y0:
            extra.append([int(np.floor(cx - half)), top, int(np.ceil(cx + half)), y0])
            extra_pads.append(pads[i])
    if not extra:
        return det, pads
    boxes = np.array(extra, np.int32)
    masks = None
    if det.masks is not None:
        masks = det.masks + tuple(np.ones((b[3] - b[1], b[2] - b[0]), np.bool_) for b in boxes)
    heads = Detections(
        np.concatenate([det.boxes, boxes]),
        np.concatenate([det.scores, np.ones(len(boxes), np.float32)]),
        det.classes + ("head",) * len(boxes),
        masks,
        det.frame_size,
    )
    return heads, np.concatenate([pads, np.array(extra_pads, np.int32).reshape(-1, 2)])


def grow(mask: Mask, pixels: int, up_down: int | None = None) -> Mask:
    """Dilate by `pixels` across and `up_down` (default: the same) up and down, working only
    around the set area.

    A rectangular kernel covers everything an elliptical one would (and the corners)
    and is separable, so it costs the same at any radius: ~1 ms at 720p.
    """
    px = max(0, pixels)
    py = px if up_down is None else max(0, up_down)
    if px == 0 and py == 0:
        return mask
    x, y, w, h = cv2.boundingRect(mask)
    if w == 0:
        return mask
    H, W = mask.shape
    x0, y0 = max(0, x - px), max(0, y - py)
    x1, y1 = min(W, x + w + px), min(H, y + h + py)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * px + 1, 2 * py + 1))
    out = mask.copy()
    out[y0:y1, x0:x1] = cv2.dilate(mask[y0:y1, x0:x1], kernel)
    return out
