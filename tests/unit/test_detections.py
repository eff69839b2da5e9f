"""Detections: checked on construction, and the few ways stages combine and turn them."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from edgeguard.detections import BoolArray, Detections, clip_boxes

W, H = 64, 48


def boxes(*rows: tuple[int, int, int, int]) -> npt.NDArray[np.int32]:
    return np.array(rows, np.int32).reshape(-1, 4)


def scores(*values: float) -> npt.NDArray[np.float32]:
    return np.array(values, np.float32)


def mask_for(box: tuple[int, int, int, int], seed: int) -> BoolArray:
    """A box-shaped mask that is not symmetric, so a flip or a swap shows."""
    x0, y0, x1, y1 = box
    return np.random.default_rng(seed).random((y1 - y0, x1 - x0)) > 0.5


BOX_A = (2, 3, 12, 20)
BOX_B = (30, 0, 64, 10)


def two(with_masks: bool = True) -> Detections:
    masks = (mask_for(BOX_A, 1), mask_for(BOX_B, 2)) if with_masks else None
    return Detections(boxes(BOX_A, BOX_B), scores(0.9, 0.4), ("person", "person"), masks, (W, H))


def one_other(with_masks: bool = False) -> Detections:
    box = (5, 5, 9, 15)
    masks = (mask_for(box, 3),) if with_masks else None
    return Detections(boxes(box), scores(0.7), ("face",), masks, (W, H))


# Construction


def test_consistent_detections_are_accepted() -> None:
    det = two()
    assert len(det) == 2
    assert det.frame_size == (W, H)


@pytest.mark.parametrize(
    ("bxs", "scs", "classes"),
    [
        (boxes(BOX_A, BOX_B), scores(0.9), ("person", "person")),  # one score short
        (boxes(BOX_A), scores(0.9, 0.4), ("person", "person")),  # one box short
        (boxes(BOX_A, BOX_B), scores(0.9, 0.4), ("person",)),  # one class short
        (np.array([1, 2, 3, 4], np.int32), scores(0.9), ("person",)),  # a flat box
        (np.zeros((1, 5), np.int32), scores(0.9), ("person",)),  # five coordinates
        (boxes(BOX_A), np.array([[0.9]], np.float32), ("person",)),  # scores not a vector
    ],
)
def test_mismatched_arrays_are_refused(
    bxs: npt.NDArray[np.int32], scs: npt.NDArray[np.float32], classes: tuple[str, ...]
) -> None:
    with pytest.raises(ValueError, match="inconsistent detections"):
        Detections(bxs, scs, classes)


def test_a_mask_per_instance_is_required() -> None:
    with pytest.raises(ValueError, match="1 masks for 2 instances"):
        Detections(boxes(BOX_A, BOX_B), scores(0.9, 0.4), ("person", "person"), (mask_for(BOX_A, 1),), (W, H))


@pytest.mark.parametrize("shape", [(17, 11), (16, 10), (10, 17), (17,)])
def test_a_mask_must_have_its_box_shape(shape: tuple[int, ...]) -> None:
    # BOX_A is 10 wide and 17 high: its mask is 17 rows of 10.
    with pytest.raises(ValueError, match="does not fit box"):
        Detections(boxes(BOX_A), scores(0.9), ("person",), (np.ones(shape, np.bool_),), (W, H))


def test_masks_in_the_wrong_order_are_refused() -> None:
    masks = (mask_for(BOX_B, 2), mask_for(BOX_A, 1))
    with pytest.raises(ValueError, match="does not fit box"):
        Detections(boxes(BOX_A, BOX_B), scores(0.9, 0.4), ("person", "person"), masks, (W, H))


# empty


def test_empty_has_no_instances_and_keeps_the_frame_size() -> None:
    det = Detections.empty((W, H))
    assert len(det) == 0
    assert det.boxes.shape == (0, 4) and det.boxes.dtype == np.int32
    assert det.scores.shape == (0,) and det.scores.dtype == np.float32
    assert det.classes == ()
    assert det.masks is None
    assert det.frame_size == (W, H)


# subset


def test_subset_keeps_the_chosen_instances_in_the_given_order() -> None:
    det = two()
    assert det.masks is not None
    picked = det.subset([1, 0])
    assert picked.boxes.tolist() == [list(BOX_B), list(BOX_A)]
    assert picked.scores.tolist() == pytest.approx([0.4, 0.9])
    assert picked.masks is not None
    assert np.array_equal(picked.masks[0], det.masks[1]) and np.array_equal(picked.masks[1], det.masks[0])
    assert len(det.subset([])) == 0


# mirrored


def test_mirrored_moves_boxes_and_flips_masks() -> None:
    det = two()
    mirrored = det.mirrored()
    # x0' = W - x1, x1' = W - x0; rows unchanged.
    assert mirrored.boxes.tolist() == [[W - 12, 3, W - 2, 20], [0, 0, W - 30, 10]]
    assert mirrored.boxes.dtype == np.int32
    assert mirrored.classes == det.classes
    assert np.array_equal(mirrored.scores, det.scores)
    assert mirrored.frame_size == det.frame_size
    assert mirrored.masks is not None and det.masks is not None
    for flipped, original in zip(mirrored.masks, det.masks, strict=True):
        assert np.array_equal(flipped, original[:, ::-1])
        assert flipped.flags.c_contiguous, "rasterizers index masks as plain C arrays"


def test_mirrored_hides_the_same_pixels_of_the_mirrored_frame() -> None:
    det = two()
    assert det.masks is not None
    mirrored = det.mirrored()
    assert mirrored.masks is not None
    for (x0, y0, x1, y1), mask, (mx0, my0, mx1, my1), mmask in zip(
        det.boxes, det.masks, mirrored.boxes, mirrored.masks, strict=True
    ):
        frame = np.zeros((H, W), np.bool_)
        frame[y0:y1, x0:x1] = mask
        mirrored_frame = np.zeros((H, W), np.bool_)
        mirrored_frame[my0:my1, mx0:mx1] = mmask
        assert np.array_equal(mirrored_frame, frame[:, ::-1])


def test_mirrored_twice_is_the_original_and_leaves_it_untouched() -> None:
    det = two()
    before = det.boxes.copy()
    again = det.mirrored().mirrored()
    assert np.array_equal(det.boxes, before), "mirrored() changed the original's boxes"
    assert np.array_equal(again.boxes, det.boxes)
    assert again.masks is not None and det.masks is not None
    assert all(np.array_equal(a, b) for a, b in zip(again.masks, det.masks, strict=True))


def test_mirrored_without_masks_or_instances() -> None:
    assert two(with_masks=False).mirrored().masks is None
    empty = Detections.empty((W, H)).mirrored()
    assert len(empty) == 0 and empty.frame_size == (W, H)


# merged


def test_merged_without_masks_concatenates() -> None:
    a, b = two(with_masks=False), one_other()
    both = a.merged(b)
    assert both.boxes.tolist() == [list(BOX_A), list(BOX_B), [5, 5, 9, 15]]
    assert both.boxes.dtype == np.int32
    assert both.scores.tolist() == pytest.approx([0.9, 0.4, 0.7])
    assert both.scores.dtype == np.float32
    assert both.classes == ("person", "person", "face")
    assert both.masks is None
    assert both.frame_size == (W, H)


def test_merged_with_masks_on_both_sides_keeps_them() -> None:
    a, b = two(), one_other(with_masks=True)
    both = a.merged(b)
    assert both.masks is not None and a.masks is not None and b.masks is not None
    expected = (*a.masks, *b.masks)
    assert len(both.masks) == 3
    assert all(np.array_equal(m, e) for m, e in zip(both.masks, expected, strict=True))


@pytest.mark.parametrize("masked_first", [True, False])
def test_merged_fills_the_whole_box_of_instances_without_a_mask(masked_first: bool) -> None:
    masked, unmasked = two(), one_other()
    both = masked.merged(unmasked) if masked_first else unmasked.merged(masked)
    assert both.masks is not None and masked.masks is not None
    by_class = list(zip(both.classes, both.masks, strict=True))
    faces = [m for c, m in by_class if c == "face"]
    persons = [m for c, m in by_class if c == "person"]
    # The maskless instance is hidden over its whole box, never less.
    assert len(faces) == 1 and faces[0].shape == (10, 4) and faces[0].all()
    assert all(np.array_equal(m, e) for m, e in zip(persons, masked.masks, strict=True))


def test_merged_with_empty_changes_nothing() -> None:
    det = two()
    for both in (det.merged(Detections.empty((W, H))), Detections.empty((W, H)).merged(det)):
        assert np.array_equal(both.boxes, det.boxes)
        assert np.array_equal(both.scores, det.scores)
        assert both.classes == det.classes
        assert both.masks is not None and det.masks is not None
        assert all(np.array_equal(m, e) for m, e in zip(both.masks, det.masks, strict=True))


# clip_boxes


def test_clip_boxes_rounds_outward() -> None:
    out = clip_boxes(np.array([[1.2, 2.9, 10.1, 20.5], [3.0, 4.0, 5.0, 6.0]]), W, H)
    assert out.dtype == np.int32
    assert out.tolist() == [[1, 2, 11, 21], [3, 4, 5, 6]]


def test_clip_boxes_never_shrinks_a_box_inside_the_frame() -> None:
    rng = np.random.default_rng(7)
    corners = rng.uniform(0, [W, H], size=(200, 2, 2))
    xyxy = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
    out = clip_boxes(xyxy, W, H)
    assert (out[:, :2] <= xyxy[:, :2]).all() and (out[:, 2:] >= xyxy[:, 2:]).all()
    assert (out[:, 2:] - out[:, :2] <= xyxy[:, 2:] - xyxy[:, :2] + 2).all(), "at most a pixel more per side"


def test_clip_boxes_clips_to_the_frame() -> None:
    out = clip_boxes(np.array([[-5.5, -1.0, W + 3.2, H + 0.1], [10.0, 10.0, 200.0, 20.0]]), W, H)
    assert out.tolist() == [[0, 0, W, H], [10, 10, W, 20]]


def test_clip_boxes_outside_the_frame_are_empty_not_inverted() -> None:
    out = clip_boxes(
        np.array([[-20.0, 5.0, -10.0, 9.0], [W + 1.0, H + 1.0, W + 9.0, H + 9.0], [30.0, 9.0, 20.0, 5.0]]), W, H
    )
    widths, heights = out[:, 2] - out[:, 0], out[:, 3] - out[:, 1]
    assert (widths >= 0).all() and (heights >= 0).all()
    assert out[:2].tolist() == [[0, 5, 0, 9], [W, H, W, H]]
    # A usable Detections: an empty box takes an empty mask.
    det = Detections(
        out,
        scores(0.5, 0.5, 0.5),
        ("a", "b", "c"),
        tuple(np.ones((h, w), np.bool_) for w, h in zip(widths, heights, strict=True)),
        (W, H),
    )
    assert len(det) == 3


def test_clip_boxes_of_nothing() -> None:
    out = clip_boxes(np.zeros((0, 4)), W, H)
    assert out.shape == (0, 4) and out.dtype == np.int32
