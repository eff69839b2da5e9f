"""Masks on synthetic frames: exactly the detected (dilated) pixels are to be hidden, nothing else."""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from edgeguard.detections import Detections
from edgeguard.frames import Image
from edgeguard.masks import grow, rasterize


def noise(h: int, w: int, seed: int = 0) -> Image:
    """Random pixels: any blur or pixelation changes (almost) every one of them."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def box_detections(boxes: list[tuple[int, int, int, int]], w: int, h: int) -> Detections:
    arr = np.array(boxes, np.int32).reshape(-1, 4)
    return Detections(arr, np.full(len(boxes), 0.9, np.float32), ("person",) * len(boxes), None, (w, h))


def changed(a: Image, b: Image) -> npt.NDArray[np.bool_]:
    return np.asarray((a != b).any(axis=2))


def distances(mask: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Euclidean and chessboard distance of every pixel to the nearest set pixel of `mask`."""
    outside = np.where(mask > 0, 0, 255).astype(np.uint8)
    l2 = cv2.distanceTransform(outside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    chess = cv2.distanceTransform(outside, cv2.DIST_C, 3)
    return l2, chess


def check_grown(raw: npt.NDArray[np.uint8], grown: npt.NDArray[np.uint8], d: int) -> None:
    """Everything within d pixels of the area is covered; nothing more than d pixels away in x or y is."""
    l2, chess = distances(raw)
    assert (grown[l2 <= d] == 255).all(), "an edge pixel within the dilation distance is not covered"
    assert not grown[chess > d].any(), "the dilation grew further than configured"
    assert set(np.unique(grown)) <= {0, 255}


def test_dilation_grows_a_box_by_exactly_the_configured_pixels() -> None:
    h, w, d = 100, 120, 6
    det = box_detections([(40, 30, 70, 60)], w, h)
    raw = rasterize(det, w, h, shape="box", dilate=0)
    assert (raw[30:60, 40:70] == 255).all() and raw.sum() // 255 == 30 * 30
    mask = rasterize(det, w, h, shape="box", dilate=d)
    check_grown(raw, mask, d)
    mid_y, mid_x = 45, 55
    # Straight out from each edge: covered up to d pixels, not d + 1.
    assert mask[mid_y, 40 - d] == 255 and mask[mid_y, 40 - d - 1] == 0
    assert mask[mid_y, 69 + d] == 255 and mask[mid_y, 69 + d + 1] == 0
    assert mask[30 - d, mid_x] == 255 and mask[30 - d - 1, mid_x] == 0
    assert mask[59 + d, mid_x] == 255 and mask[59 + d + 1, mid_x] == 0


def test_dilation_of_an_instance_mask_covers_its_edge() -> None:
    h, w, d = 80, 80, 4
    yy, xx = np.mgrid[0:40, 0:40]
    inst = (yy - 20) ** 2 + (xx - 20) ** 2 <= 15**2  # a disc inside its box
    det = Detections(np.array([[20, 20, 60, 60]], np.int32), np.array([0.9], np.float32), ("person",), (inst,), (w, h))
    raw = rasterize(det, w, h, shape="mask", dilate=0)
    assert raw.sum() // 255 == inst.sum()
    assert raw[20, 20] == 0, "shape=mask must follow the silhouette, not the box"
    check_grown(raw, rasterize(det, w, h, shape="mask", dilate=d), d)
    # shape=box ignores the silhouette.
    box = rasterize(det, w, h, shape="box", dilate=0)
    assert (box[20:60, 20:60] == 255).all() and box.sum() // 255 == 1600


def test_dilation_at_the_frame_border_is_clipped_not_wrapped() -> None:
    h, w = 50, 60
    det = box_detections([(0, 0, 10, 10), (55, 45, 60, 50)], w, h)
    mask = rasterize(det, w, h, shape="box", dilate=8)
    assert mask.shape == (h, w)
    assert mask[0, 0] == 255 and mask[49, 59] == 255
    assert mask[0, 17] == 255 and mask[0, 19] == 0
    assert mask[25, 30] == 0


def test_grow_zero_and_empty_are_identity() -> None:
    m = np.zeros((10, 10), np.uint8)
    assert grow(m, 5) is m
    m[3, 3] = 255
    assert grow(m, 0) is m


def test_each_instance_grows_by_its_own_pad() -> None:
    """Carried instances: the global dilation plus each one's margin, boxes and masks alike."""
    w, h = 200, 120
    det = box_detections([(20, 30, 40, 80), (120, 30, 140, 80)], w, h)
    mask = rasterize(det, w, h, shape="box", dilate=2, pad=np.array([0, 5], np.int32))
    assert reach_of(mask[:, :100]) == (18, 28, 42, 82)
    assert reach_of(mask[:, 100:], dx=100) == (113, 23, 147, 87)
    masks = (np.ones((50, 20), np.bool_), np.ones((50, 20), np.bool_))
    det_m = Detections(det.boxes, det.scores, det.classes, masks, (w, h))
    mask_m = rasterize(det_m, w, h, shape="mask", dilate=2, pad=np.array([0, 5], np.int32))
    assert (mask_m == mask).all(), "a full mask grows exactly like its box"


def test_a_pad_can_differ_across_and_up_and_down() -> None:
    """(x, y) pads: a carried walker's margin is wider than it is tall; boxes, masks and the head strip alike."""
    w, h = 200, 160
    det = Detections(
        np.array([[20, 40, 40, 100], [120, 40, 140, 100]], np.int32),
        np.ones(2, np.float32),
        ("person", "car"),
        None,
        (w, h),
    )
    pads = np.array([[6, 2], [3, 9]], np.int32)
    mask = rasterize(det, w, h, shape="box", dilate=1, pad=pads)
    assert reach_of(mask[:, :100]) == (13, 37, 47, 103)
    assert reach_of(mask[:, 100:], dx=100) == (116, 30, 144, 110)
    masks = (np.ones((60, 20), np.bool_), np.ones((60, 20), np.bool_))
    mask_m = rasterize(
        Detections(det.boxes, det.scores, det.classes, masks, (w, h)), w, h, shape="mask", dilate=1, pad=pads
    )
    assert (mask_m == mask).all(), "a full mask grows exactly like its box"
    # The head strip above a person (12 px, its middle 60%) grows by the person's own (x, y) pad.
    headed = rasterize(det, w, h, shape="box", dilate=0, pad=pads, head=0.2)
    assert reach_of(headed[:38, :100]) == (18, 26, 42, 38)
    assert (grow(mask, 2, 0)[37:103] > 0).sum() > (grow(mask, 0, 2)[37:103] > 0).sum()


def test_a_head_strip_above_every_person_only() -> None:
    w, h = 200, 200
    det = Detections(
        np.array([[50, 100, 100, 200], [150, 100, 190, 200]], np.int32),
        np.ones(2, np.float32),
        ("person", "car"),
        None,
        (w, h),
    )
    mask = rasterize(det, w, h, shape="box", dilate=0, head=0.2)
    # 20 px above the person, over the middle 60% of its width; nothing above the car.
    assert (mask[80:100, 60:90] == 255).all()
    assert not mask[80:100, 50:59].any() and not mask[80:100, 91:100].any()
    assert not mask[:80].any()
    assert not mask[:100, 150:].any()


def reach_of(mask: Image, dx: int = 0) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()) + dx, int(ys.min()), int(xs.max()) + 1 + dx, int(ys.max()) + 1


def test_face_mode_hides_only_the_head_of_every_person() -> None:
    w, h = 200, 300
    det = Detections(
        np.array([[40, 100, 120, 300], [150, 20, 190, 60]], np.int32),
        np.ones(2, np.float32),
        ("person", "face"),
        None,
        (w, h),
    )
    mask = rasterize(det, w, h, shape="box", dilate=0, heads_only=True)
    # The person (80 x 200): its middle half, from 10 px above its top to 36 px below.
    assert (mask[90:136, 60:100] == 255).all()
    assert not mask[136:].any() and not mask[:, :60].any() and not mask[:90, :140].any()
    # The face as it is.
    assert (mask[20:60, 150:190] == 255).all()
    masks = (np.ones((200, 80), np.bool_), np.ones((40, 40), np.bool_))
    with_masks = Detections(det.boxes, det.scores, det.classes, masks, (w, h))
    assert (rasterize(with_masks, w, h, shape="mask", dilate=0, heads_only=True) == mask).all()
