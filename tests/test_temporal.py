"""Keyframe carry-over: never less protection than the neighbouring keyframes, and
a person who walks in between keyframes is hidden from the frame the motion check fires."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeguard.config import Config, TemporalConfig, load_config
from edgeguard.detections import Detections
from edgeguard.detectors import Detector, create_detector
from edgeguard.engine import keyframe_looker
from edgeguard.media.video import VideoReader
from edgeguard.protection import rasterize
from edgeguard.temporal import IDENTITY, Planned, Planner, swept_hulls
from tests.conftest import media


def _planner(det: Detector, cfg: Config) -> Planner[int]:
    look = keyframe_looker(det, cfg)
    return Planner(cfg.temporal, look, lambda d, w, h: rasterize(d, w, h, shape="box", dilate=cfg.protect.dilate))


def _frames(path: Path, n: int) -> list[np.ndarray]:
    with VideoReader(path, max_pixels=1 << 26) as r:
        return [f.image for f in r.frames() if f.index < n]


@pytest.fixture(scope="module")
def yolox(models_dir: Path) -> Iterator[tuple[Detector, Config]]:
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGEGUARD_MODELS_DIR", str(models_dir))
    cfg = load_config(None, ["detector.model=yolox_nano"])
    yield create_detector(cfg), cfg
    mp.undo()


def test_carried_frames_cover_both_neighbouring_keyframes(yolox: tuple[Detector, Config]) -> None:
    det, cfg = yolox
    images = _frames(media("vtest.avi"), 40)  # a still camera, people walking
    planned = list(_planner(det, cfg).run(iter(enumerate(images))))
    assert [p.item for p in planned] == list(range(len(images)))  # every frame once, in order
    keys = [i for i, p in enumerate(planned) if p.keyframe]
    assert keys[0] == 0 and keys[-1] == len(images) - 1
    assert any(not p.keyframe for p in planned), "the test needs carried frames"
    for a, b in itertools.pairwise(keys):
        union = (planned[a].mask > 0) | (planned[b].mask > 0)
        for p in planned[a + 1 : b]:
            assert not (union & (p.mask == 0)).any(), f"frame {p.item} hides less than keyframes {a} and {b}"
            assert p.det is None


def test_carry_follows_camera_motion() -> None:
    """With a panning camera the carried area moves along with both keyframes' areas."""
    cfg = TemporalConfig(grow=0)
    planner: Planner[int] = Planner(
        cfg, lambda img, _: Detections.empty((64, 36)), lambda d, w, h: np.zeros((h, w), np.uint8)
    )
    w, h = 640, 360
    small = np.zeros((90, 160), np.uint8)

    def key(x0: int) -> object:
        from edgeguard.temporal import Key

        mask = np.zeros((h, w), np.uint8)
        mask[100:200, x0 : x0 + 50] = 255
        d = Detections(np.array([[x0, 100, x0 + 50, 200]], np.int32), np.ones(1, np.float32), ("person",), None, (w, h))
        return Key(0, d, mask, small, small, None)

    a, b = key(100), key(160)
    shift = np.array([[1.0, 0.0, -10.0], [0.0, 1.0, 0.0]])  # the camera moved: 10 small px = 40 full px left
    mask = planner.carry(a, b, shift, shift, (w, h))  # type: ignore[arg-type]
    # a's area as seen from the frame (moved 40 px left) and b's area moved into a's frame and back.
    assert (mask[100:200, 60:110] == 255).all()
    assert (mask[100:200, 160:210] == 255).all()
    # the path between them is covered too (swept hull), and nothing far away
    assert (mask[100:200, 110:160] == 255).all()
    assert not mask[:, 220:].any() and not mask[:90].any()


def test_swept_hull_joins_matched_instances_only() -> None:
    a = Detections(
        np.array([[0, 0, 10, 10], [100, 100, 110, 110]], np.int32),
        np.ones(2, np.float32),
        ("person", "car"),
        None,
        (200, 200),
    )
    b = Detections(np.array([[12, 0, 22, 10]], np.int32), np.ones(1, np.float32), ("person",), None, (200, 200))
    hulls = swept_hulls(a, b, IDENTITY)
    assert len(hulls) == 1
    x, y, w, h = cv2.boundingRect(hulls[0])
    assert (x, y, x + w, y + h) == (0, 0, 23, 11)


def _person_sprite(det: Detector) -> np.ndarray:
    """A real person cut from a real photo (the detector's most confident box)."""
    img = cv2.imread(str(media("000000465822.jpg")))
    d = det.detect(img)
    assert len(d) > 0
    best = int(np.argmax(d.scores))
    x0, y0, x1, y1 = d.boxes[best].tolist()
    return img[y0:y1, x0:x1].copy()


def test_person_walking_in_between_keyframes_is_hidden_from_the_motion_frame(yolox: tuple[Detector, Config]) -> None:
    det, _ = yolox
    cfg = load_config(None, ["detector.model=yolox_nano", "temporal.keyframe_interval=300"])
    background = _frames(media("vtest.avi"), 1)[0]
    # A still scene without people: the top band of the campus clip, stretched.
    background = cv2.resize(background[:60], (640, 360), interpolation=cv2.INTER_LINEAR)
    sprite = _person_sprite(det)
    sh, sw = sprite.shape[:2]
    scale = 250 / sh
    sprite = cv2.resize(sprite, (max(1, int(sw * scale)), 250))
    sh, sw = sprite.shape[:2]
    frames = []
    for i in range(40):
        img = background.copy()
        if i >= 10:  # walks in from the left edge, 12 px a frame
            x1 = (i - 9) * 12
            x0 = x1 - sw
            vis0 = max(0, x0)
            img[60 : 60 + sh, vis0:x1] = sprite[:, vis0 - x0 :]
        frames.append(img)
    planned: list[Planned[int]] = list(_planner(det, cfg).run(iter(enumerate(frames))))
    assert [p.reason for p in planned[:10]] == ["first"] + ["carried"] * 9, "nothing moved before frame 10"
    fired = [p.item for p in planned if p.reason == "motion"]
    assert fired and fired[0] >= 10, "the motion check fires once the person walks in"
    seen = 0
    for p in planned:
        if p.item < fired[0]:
            continue
        ref = det.detect(frames[p.item])
        ref_mask = rasterize(ref, 640, 360, shape="box", dilate=0) > 0
        seen += bool(ref_mask.any())
        exposed = ref_mask & (p.mask == 0)
        assert not exposed.any(), f"frame {p.item}: {int(exposed.sum())} px the every-frame detector hides are exposed"
    assert seen >= 20, "the every-frame detector must find the person for the check to mean anything"
    assert any(p.det is not None and len(p.det) for p in planned if p.reason == "motion"), (
        "motion keyframes catch the person as they come in"
    )


@pytest.mark.parametrize("step", [1, 2])
def test_a_panning_camera_over_a_still_scene_fires_only_for_new_scenery(step: int) -> None:
    """The warp's black border is no reference, not change: a slow pan alone fires nothing until
    the scenery that came into view is wider than the margin carried areas get (`grow`)."""
    scene = cv2.imread(str(media("city.jpg")))  # 800x564, a textured still street
    frames = [np.ascontiguousarray(scene[100:460, step * i : step * i + 640]) for i in range(30)]
    cfg = TemporalConfig(keyframe_interval=300, grow=40)
    planner: Planner[int] = Planner(
        cfg, lambda img, _: Detections.empty((640, 360)), lambda d, w, h: np.zeros((h, w), np.uint8)
    )
    fired = [(p.item, p.reason) for p in planner.run(iter(enumerate(frames))) if p.reason != "carried"]
    if step == 1:  # 29 px of new scenery at most
        assert fired == [(0, "first"), (29, "last")]
    else:  # 42 px of new scenery at frame 21
        assert fired == [(0, "first"), (21, "motion"), (29, "last")]
