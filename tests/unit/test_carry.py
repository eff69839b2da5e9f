"""Placing carried instances on a frame, and the margins they get."""

from __future__ import annotations

import numpy as np

from edgeguard.carry import Margins, Placement, placed_detections
from edgeguard.masks import rasterize

W, H = 640, 360


def placement(x0: float, *, both: bool = False, frames: int = 3, unsure: int = 0) -> Placement:
    return Placement(np.array([x0, 100.0, x0 + 40, 200.0]), None, "person", 100.0, both, frames, 16, 0.0, 0.0, unsure)


def test_an_instance_carried_just_past_an_edge_keeps_the_margin_that_reaches_in() -> None:
    """Placed 5 px left of the frame with a 13 px margin: the 8 px that margin reaches in stay hidden."""
    placements = [placement(-45.0), placement(-60.0)]  # 5 px and 20 px outside
    det, pad = placed_detections(placements, np.array([13, 13], np.int32), W, H)
    hidden = rasterize(det, W, H, shape="box", dilate=0, pad=pad) > 0
    assert hidden[87:213, :8].all(), "what the grown box covers inside the frame"
    assert not hidden[:, 8:].any() and not hidden[:87].any() and not hidden[213:].any()


def test_margins_grow_with_distance_from_the_keyframes_and_lost_flow() -> None:
    m = Margins(px=0.0).measured
    assert m(placement(0, both=True, frames=1)) < m(placement(0, both=True, frames=6))
    assert m(placement(0, both=True, frames=3)) < m(placement(0, frames=3)), "pinned at both ends: tighter"
    assert m(placement(0, frames=3)) < m(placement(0, frames=3, unsure=2))
    assert m(placement(0, both=True, frames=8)) <= 0.05 * 100, "a few pixels on a 100 px person, not 40"
    assert Margins(px=2.0, scale=0.0)(placement(0, frames=8)) == (2.0, 2.0)


def test_margins_across_and_up_and_down_follow_margin_xy() -> None:
    p = placement(0, frames=5)
    measured = Margins(px=0.0).measured(p)
    x, y = Margins(px=1.0, xy=(1.5, 0.5))(p)
    assert (x, y) == (1.0 + 1.5 * measured, 1.0 + 0.5 * measured)


def test_an_instance_just_past_an_edge_keeps_what_its_x_and_y_margins_reach() -> None:
    """(x, y) pads: 5 px left of the frame, an x margin of 13 reaches in; 20 px above it, a y margin of 13 does not."""
    left = placement(-45.0)  # x -45..-5, y 100..200
    above = Placement(np.array([300.0, -120.0, 340.0, -20.0]), None, "person", 100.0, False, 3, 16, 0.0, 0.0, 0)
    det, pad = placed_detections([left, above], np.array([[13, 4], [30, 13]], np.int32), W, H)
    hidden = rasterize(det, W, H, shape="box", dilate=0, pad=pad) > 0
    assert hidden[96:204, :8].all(), "what the grown box covers inside the frame"
    assert not hidden[:, 8:].any() and not hidden[:96].any() and not hidden[204:].any()
