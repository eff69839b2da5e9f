"""The bench's privacy arithmetic: both directions, the half-hidden rule, judge errors set aside."""

from __future__ import annotations

import numpy as np

from bench.judge_errors import JudgeError, set_aside
from bench.judges import Judged
from bench.privacy import measure

H, W = 40, 60


def judged(persons: list[tuple[int, int, int, int]], faces: list[tuple[int, int, int, int]] = ()) -> Judged:  # type: ignore[assignment]
    def arr(boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
        return np.array([[*b, 0.9] for b in boxes], np.float32).reshape(-1, 5)

    return Judged(arr(persons), arr(faces), arr(faces))


def bits(*boxes: tuple[int, int, int, int]) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1, x0:x1] = True
    return np.packbits(mask)


def test_overreach_coverage_and_recall_in_both_directions() -> None:
    ref = [bits((10, 10, 20, 30)), bits((10, 10, 20, 30))]
    ref_boxes = [np.array([[10, 10, 20, 30]], np.int32)] * 2
    # Frame 0 hides the person and as much again beside it; frame 1 hides only the person's left half.
    run = [bits((10, 10, 30, 30)), bits((10, 10, 15, 30))]
    people = [judged([(10, 10, 20, 30)], [(12, 10, 18, 16)]), judged([(10, 10, 20, 30)], [(16, 10, 20, 16)])]
    p = measure(run, (H, W), people, ref, ref_boxes)
    assert p.overreach == (400 + 100) / 400
    assert p.coverage == (200 + 100) / 400 and p.worst == 0.5
    assert p.under_half == 0, "exactly half hidden is not under half"
    assert p.recall("person") == 1.0
    assert p.recall("centerface") == 0.5 and p.missed("yunet") == 1
    (miss, _) = [m for m in p.misses if m.kind in ("centerface", "yunet")]
    assert miss.frame == 1 and miss.hidden == 0.0


def test_judge_errors_are_followed_through_the_frames_they_continue_to() -> None:
    # A static object the judge calls a person on frames 0-4 except frame 2, and a real person walking.
    frames = []
    for f in range(5):
        boxes = [(40 + 3 * f, 5, 50 + 3 * f, 25)]
        if f != 2:
            boxes.append((5, 10, 12, 30))
        frames.append(judged(boxes))
    errors = [JudgeError("clip.mp4", "person", 0, (5, 10, 12, 30), "a post")]
    cleaned, aside = set_aside("clip.mp4", frames, errors)
    other, none = set_aside("other.mp4", frames, errors)
    assert sorted(f for f, _, _ in aside) == [0, 1, 3, 4], "the gap on frame 2 is bridged"
    assert all(len(j.persons) == 1 and j.persons[0, 0] >= 40 for j in cleaned), "the walking person stays"
    assert none == [] and all(len(a.persons) == len(b.persons) for a, b in zip(other, frames, strict=True))
