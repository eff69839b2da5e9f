"""Per-instance flow between keyframes, on real pixels: a person cut from a real photo over a real street."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from edgeguard.detections import Detections
from edgeguard.media.video import VideoReader
from edgeguard.tracking import FlowFrame, match, seed, step
from tests.conftest import media

W, H = 640, 360


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray]:
    """A still campus without people (vtest's top band, stretched) and a woman cut from a meeting photo."""
    with VideoReader(media("vtest.avi"), max_pixels=1 << 26) as r:
        first = next(r.frames()).image
    street = cv2.resize(first[:60], (W, H), interpolation=cv2.INTER_LINEAR)
    photo = cv2.imread(str(media("000000465822.jpg")))
    person = photo[40:300, 60:190]  # the standing woman: hair, face, blouse, arm
    return street, cv2.resize(person, (50, 120), interpolation=cv2.INTER_AREA)


def frame_with(street: np.ndarray, sprite: np.ndarray, x: float, y: int) -> np.ndarray:
    """`sprite` pasted at sub-pixel `x` (shifted with a warp, so motion is continuous)."""
    img = street.copy()
    h, w = sprite.shape[:2]
    ix = int(np.floor(x))
    shifted = cv2.warpAffine(sprite, np.float32([[1, 0, x - ix], [0, 1, 0]]), (w, h), borderMode=cv2.BORDER_REPLICATE)
    img[y : y + h, ix : ix + w] = shifted
    return img


def person_at(x: float, y: int, w: int = 50, h: int = 120) -> Detections:
    box = np.array([[np.floor(x), y, np.floor(x) + w, y + h]], np.int32)
    return Detections(box, np.ones(1, np.float32), ("person",), None, (W, H))


def test_an_instance_is_followed_by_its_own_motion(scene: tuple[np.ndarray, np.ndarray]) -> None:
    street, person = scene
    frames = [frame_with(street, person, 100 + 4.5 * i, 150) for i in range(12)]
    flows = [FlowFrame.of(f) for f in frames]
    tracks = seed(flows[0], person_at(100, 150))
    for a, b in itertools.pairwise(flows):
        step(tracks, a, b)
    (t,) = tracks
    assert len(t.shifts) == 12
    dx, dy = t.shifts[-1]
    assert dx == pytest.approx(4.5 * 11, abs=1.5), "the person walked 49.5 px"
    assert dy == pytest.approx(0, abs=1.0)
    assert t.unsure[-1] == 0


def test_a_still_instance_on_a_panning_camera_moves_with_the_picture(scene: tuple[np.ndarray, np.ndarray]) -> None:
    """Points move with the image, whatever moved it: no camera model needed per instance."""
    street, person = scene
    wide = cv2.resize(street, (W + 200, H))
    wide = frame_with(wide, person, 300, 150)
    frames = [np.ascontiguousarray(wide[:, 8 * i : 8 * i + W]) for i in range(10)]  # 8 px a frame to the left
    flows = [FlowFrame.of(f) for f in frames]
    tracks = seed(flows[0], person_at(300, 150))
    for a, b in itertools.pairwise(flows):
        step(tracks, a, b)
    assert tracks[0].shifts[-1][0] == pytest.approx(-72, abs=1.5)


def test_a_textureless_instance_is_unsure_and_keeps_its_velocity(scene: tuple[np.ndarray, np.ndarray]) -> None:
    """The woman walks 4 px a frame, then turns into a flat block (say, into shadow): the track
    loses its points, is marked unsure, and keeps going at the speed it had."""
    street, woman = scene
    flat = np.full_like(woman, 90)
    frames = [frame_with(street, woman if i < 4 else flat, 200 + 4 * i, 100) for i in range(10)]
    flows = [FlowFrame.of(f) for f in frames]
    tracks = seed(flows[0], person_at(200, 100))
    for a, b in itertools.pairwise(flows):
        step(tracks, a, b)
    t = tracks[0]
    assert t.unsure[3] == 0 and t.unsure[-1] > 0, "followed while textured, unsure once flat"
    assert t.shifts[-1][0] == pytest.approx(36, abs=3), "kept walking at 4 px a frame"
    assert abs(t.shifts[-1][1]) < 2


def test_keyframes_are_paired_by_where_the_tracks_arrived(scene: tuple[np.ndarray, np.ndarray]) -> None:
    """Two people walking past each other: paired by arrival, not by where they started."""
    street, person = scene
    frames = []
    for i in range(9):
        img = frame_with(street, person, 100 + 12 * i, 150)
        frames.append(frame_with(img, cv2.flip(person, 1), 300 - 12 * i, 160))
    flows = [FlowFrame.of(f) for f in frames]
    first = Detections(
        np.array([[100, 150, 150, 270], [300, 160, 350, 280]], np.int32),
        np.ones(2, np.float32),
        ("person", "person"),
        None,
        (W, H),
    )
    tracks = seed(flows[0], first)
    for a, b in itertools.pairwise(flows):
        step(tracks, a, b)
    # At frame 8 the left walker is at x=196, the right one at x=204: listed the other way round.
    last = Detections(
        np.array([[204, 160, 254, 280], [196, 150, 246, 270]], np.int32),
        np.ones(2, np.float32),
        ("person", "person"),
        None,
        (W, H),
    )
    assert sorted((p.track, p.found, p.sure) for p in match(tracks, 8, last)) == [(0, 1, True), (1, 0, True)]


def test_pairs_keep_to_their_class(scene: tuple[np.ndarray, np.ndarray]) -> None:
    street, person = scene
    flows = [FlowFrame.of(frame_with(street, person, 100, 150))] * 2
    tracks = seed(flows[0], person_at(100, 150))
    step(tracks, flows[0], flows[1])
    car = Detections(np.array([[100, 150, 150, 270]], np.int32), np.ones(1, np.float32), ("car",), None, (W, H))
    assert match(tracks, 1, car) == []
