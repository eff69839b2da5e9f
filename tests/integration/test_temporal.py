"""Keyframes and tracked carry-over: each carried instance is hidden where it is, with a tight margin,
and a person who walks in between keyframes is hidden from the frame the motion check fires.

Most tests move real pixels (a woman cut from a real photo, over a real campus) and detect
them with an oracle that knows where they were pasted, so what is measured is the carrying.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeguard.config import Config, TemporalConfig, load_config
from edgeguard.detections import Detections
from edgeguard.detectors.base import Detector
from edgeguard.detectors.factory import create_detector
from edgeguard.engine import keyframe_looker
from edgeguard.masks import Pads, rasterize
from edgeguard.media.video import VideoReader
from edgeguard.temporal import TAIL, Planned, Planner
from tests.conftest import media

W, H = 640, 360
Box = tuple[int, int, int, int]


def _frames(path: Path, n: int) -> list[np.ndarray]:
    with VideoReader(path, max_pixels=1 << 26) as r:
        return [f.image for f in r.frames() if f.index < n]


def boxes_raster(dilate: int = 0) -> Callable[[Detections, int, int, Pads | None], np.ndarray]:
    return lambda d, w, h, pad: rasterize(d, w, h, shape="box", dilate=dilate, pad=pad)


@pytest.fixture(scope="module")
def campus() -> np.ndarray:
    """A still scene without people: the top band of the campus clip, stretched."""
    return cv2.resize(_frames(media("vtest.avi"), 1)[0][:60], (W, H), interpolation=cv2.INTER_LINEAR)


@pytest.fixture(scope="module")
def woman() -> np.ndarray:
    photo = cv2.imread(str(media("000000465822.jpg")))
    return cv2.resize(photo[40:300, 60:190], (50, 120), interpolation=cv2.INTER_AREA)


def paste(scene: np.ndarray, sprite: np.ndarray, x: float, y: int) -> tuple[np.ndarray, Box]:
    """`sprite` at sub-pixel `x` (clipped at the edges); the box of what is visible."""
    img = scene.copy()
    h, w = sprite.shape[:2]
    ix = int(np.floor(x))
    moved = cv2.warpAffine(sprite, np.float32([[1, 0, x - ix], [0, 1, 0]]), (w, h), borderMode=cv2.BORDER_REPLICATE)
    x0, x1 = max(0, ix), min(scene.shape[1], ix + w)
    if x1 > x0:
        img[y : y + h, x0:x1] = moved[:, x0 - ix : x1 - ix]
    return img, (x0, y, max(x0, x1), y + h)


def walk(
    scene: np.ndarray, sprite: np.ndarray, n: int, x: float, y: int, speed: float
) -> tuple[list[np.ndarray], list[list[Box]]]:
    """`n` frames of `sprite` walking from `x` at `speed` px a frame; each frame's box."""
    pasted = [paste(scene, sprite, x + speed * i, y) for i in range(n)]
    return [img for img, _ in pasted], [[box] for _, box in pasted]


class Oracle:
    """Detects exactly the boxes it was told were pasted into each frame."""

    def __init__(self, frames: list[np.ndarray], boxes: list[list[Box]]) -> None:
        self.by_id = {id(f): b for f, b in zip(frames, boxes, strict=True)}
        self.calls = 0

    def __call__(self, image: np.ndarray, _stands_in: bool) -> Detections:
        self.calls += 1
        found = [b for b in self.by_id[id(image)] if b[2] > b[0]]
        arr = np.array(found, np.int32).reshape(-1, 4)
        return Detections(arr, np.ones(len(found), np.float32), ("person",) * len(found), None, (W, H))


def plan(frames: list[np.ndarray], boxes: list[list[Box]], cfg: TemporalConfig) -> list[Planned[int]]:
    planner: Planner[int] = Planner(cfg, Oracle(frames, boxes), boxes_raster())
    out = list(planner.run(iter(enumerate(frames))))
    assert [p.item for p in out] == list(range(len(frames))), "every frame once, in order"
    return out


def reach(mask: np.ndarray, box: Box) -> tuple[int, int, int, int]:
    """How far the hidden area around `box` reaches beyond it on each side (left, top, right, bottom)."""
    x0, y0, x1, y1 = box
    _n, labels = cv2.connectedComponents((mask > 0).astype(np.uint8))
    blob = labels == labels[(y0 + y1) // 2, (x0 + x1) // 2]
    ys, xs = np.nonzero(blob)
    return x0 - xs.min(), y0 - ys.min(), xs.max() + 1 - x1, ys.max() + 1 - y1


# ------------------------------------------------------------------ carried instances


def test_an_instance_at_constant_speed_is_hidden_where_it_is_with_a_few_pixels_to_spare(
    campus: np.ndarray, woman: np.ndarray
) -> None:
    frames, boxes = walk(campus, woman, 40, 40, 140, 4.5)
    planned = plan(frames, boxes, TemporalConfig(keyframe_interval=16))
    carried = [p for p in planned if not p.keyframe]
    assert len(carried) >= 30, "the test is about carried frames"
    for p in carried:
        (x0, y0, x1, y1) = boxes[p.item][0]
        assert (p.mask[y0:y1, x0:x1] == 255).all(), f"frame {p.item}: part of the woman is visible"
        spare = reach(p.mask, boxes[p.item][0])
        assert max(spare) <= 6, f"frame {p.item}: hidden {spare} px beyond her (left, top, right, bottom)"


def test_carried_masks_keep_the_instance_shape(campus: np.ndarray, woman: np.ndarray) -> None:
    """Instance masks (Mask R-CNN) travel as masks: the silhouette is hidden, not its whole box."""
    silhouette = np.zeros(woman.shape[:2], np.bool_)
    cv2.ellipse(silhouette.view(np.uint8), (25, 60), (22, 58), 0, 0, 360, 1, -1)
    frames, truth = [], []
    for i in range(17):
        img, box = paste(campus, woman, 60 + 5 * i, 140)
        frames.append(img)
        truth.append(box)

    def detect(image: np.ndarray, _stands_in: bool) -> Detections:
        (x0, y0, x1, y1) = truth[[id(f) for f in frames].index(id(image))]
        return Detections(np.array([[x0, y0, x1, y1]], np.int32), np.ones(1, np.float32), ("person",), (silhouette,))

    raster = lambda d, w, h, pad: rasterize(d, w, h, shape="mask", dilate=0, pad=pad)  # noqa: E731
    planned = list(
        Planner(TemporalConfig(keyframe_interval=16, motion_check=False), detect, raster).run(iter(enumerate(frames)))
    )
    for p in planned[1:-1]:
        x0, y0, x1, y1 = truth[p.item]
        hidden = p.mask[y0:y1, x0:x1] > 0
        assert hidden[silhouette].all(), f"frame {p.item}: part of the silhouette is visible"
        assert hidden.mean() < 0.95, f"frame {p.item}: the whole box was hidden, not the silhouette"


@pytest.mark.parametrize(
    ("name", "path"), [("steady", lambda i: 60 + 5 * i), ("accelerating", lambda i: 60 + 0.4 * i * i)]
)
def test_an_instance_both_keyframes_saw_is_never_dropped_even_when_flow_fails(
    name: str, path: Callable[[int], float]
) -> None:
    """A flat block gives the flow nothing to hold on to: interpolation between the keyframes still places it."""
    flat = np.full((H, W, 3), 90, np.uint8)
    block = np.full((120, 50, 3), 170, np.uint8)
    frames, boxes = [], []
    for i in range(17):
        img, box = paste(flat, block, path(i), 120)
        frames.append(img)
        boxes.append([box])
    planned = plan(frames, boxes, TemporalConfig(keyframe_interval=16, motion_check=False))
    for p in planned:
        x0, y0, x1, y1 = boxes[p.item][0]
        hidden = float((p.mask[y0:y1, x0:x1] > 0).mean())
        if name == "steady":
            assert hidden == 1.0, f"frame {p.item}: {hidden:.0%} of the block hidden"
        else:
            assert hidden >= 0.5, f"frame {p.item}: only {hidden:.0%} of the block hidden"


def test_a_fast_pan_keeps_every_still_person_hidden(campus: np.ndarray, woman: np.ndarray) -> None:
    """The camera pans 12 px a frame over two people standing still: they move across the picture."""
    wide = cv2.resize(campus, (W + 600, H))
    spots = [(420, 150), (700, 170)]
    for x, y in spots:
        wide, _ = paste(wide, woman, x, y)
    frames, boxes = [], []
    for i in range(48):
        left = 12 * i
        frames.append(np.ascontiguousarray(wide[:, left : left + W]))
        boxes.append([paste(np.zeros((H, W, 3), np.uint8), woman, x - left, y)[1] for x, y in spots])
    planned = plan(frames, boxes, TemporalConfig(keyframe_interval=16))
    for p in planned:
        for x0, y0, x1, y1 in boxes[p.item]:
            assert (p.mask[y0:y1, x0:x1] == 255).all(), f"frame {p.item} ({p.reason}): a person is visible"


def test_a_short_tail_is_carried_forward_without_a_closing_keyframe(campus: np.ndarray, woman: np.ndarray) -> None:
    """A clip ending 3 frames after a keyframe: those frames are carried by the woman's own flow."""
    frames, boxes = walk(campus, woman, 20, 60, 140, 5)
    planned = plan(frames, boxes, TemporalConfig(keyframe_interval=16))
    assert [p.item for p in planned if p.keyframe] == [0, 16]
    for p in planned[17:]:
        x0, y0, x1, y1 = boxes[p.item][0]
        assert (p.mask[y0:y1, x0:x1] == 255).all(), f"frame {p.item}: part of the woman is visible"


def test_a_person_the_detector_misses_on_a_keyframe_is_hidden_there(campus: np.ndarray, woman: np.ndarray) -> None:
    """The detector loses her on the second keyframe only: her flow from the first still hides her there."""
    frames, truth = walk(campus, woman, 33, 60, 140, 5)
    seen = [[] if i == 16 else b for i, b in enumerate(truth)]
    planned = plan(frames, seen, TemporalConfig(keyframe_interval=16, motion_check=False))
    assert [p.item for p in planned if p.keyframe] == [0, 16, 32]
    for p in planned:
        x0, y0, x1, y1 = truth[p.item][0]
        assert (p.mask[y0:y1, x0:x1] == 255).all(), f"frame {p.item} ({p.reason}): part of her is visible"


def test_without_the_motion_check_the_last_frame_is_a_keyframe(campus: np.ndarray, woman: np.ndarray) -> None:
    """Nothing would notice a person walking into an unwatched tail: it closes on a keyframe."""
    frames, boxes = walk(campus, woman, 20, 60, 140, 5)
    planned = plan(frames, boxes, TemporalConfig(keyframe_interval=16, motion_check=False))
    assert [p.item for p in planned if p.keyframe] == [0, 16, 19]


def test_a_person_seen_only_at_the_second_keyframe_is_hidden_before_it(campus: np.ndarray, woman: np.ndarray) -> None:
    """She walks in from the right edge without the motion check: the second keyframe's track reaches back."""
    frames, boxes = walk(campus, woman, 17, W, 150, -6)
    planned = plan(frames, boxes, TemporalConfig(keyframe_interval=16, motion_check=False))
    assert [p.item for p in planned if p.keyframe] == [0, 16]
    for p in planned:
        x0, y0, x1, y1 = boxes[p.item][0]
        if x1 - x0 >= 10:
            assert (p.mask[y0:y1, x0:x1] == 255).all(), f"frame {p.item}: {x1 - x0} px of her visible"


# ------------------------------------------------------------------ the motion check


def test_motion_that_a_track_explains_fires_nothing(campus: np.ndarray, woman: np.ndarray) -> None:
    """A person seen at the keyframe walks 200 px: her track explains the change, so no keyframe is forced."""
    frames, boxes = walk(campus, woman, 40, 100, 140, 5)
    planned = plan(frames, boxes, TemporalConfig(keyframe_interval=300))
    assert [p.reason for p in planned if p.keyframe] == ["first", "last"]


def _planner(det: Detector, cfg: Config) -> Planner[int]:
    look = keyframe_looker(det, cfg)
    return Planner(cfg.temporal, look, boxes_raster(cfg.protect.dilate))


@pytest.fixture(scope="module")
def yolox(models_dir: Path) -> Iterator[tuple[Detector, Config]]:
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGEGUARD_MODELS_DIR", str(models_dir))
    cfg = load_config(None, ["detector.model=yolox_nano"])
    yield create_detector(cfg), cfg
    mp.undo()


def test_a_person_walking_in_is_hidden_from_the_frame_the_motion_check_fires(
    yolox: tuple[Detector, Config], campus: np.ndarray
) -> None:
    """The real detector: nobody at the first keyframe, then a person walks in from the left edge."""
    det, _ = yolox
    cfg = load_config(None, ["detector.model=yolox_nano", "temporal.keyframe_interval=300"])
    photo = cv2.imread(str(media("000000465822.jpg")))
    found = det.detect(photo)
    x0, y0, x1, y1 = found.boxes[int(np.argmax(found.scores))].tolist()
    sprite = photo[y0:y1, x0:x1]
    sprite = cv2.resize(sprite, (max(1, round(sprite.shape[1] * 250 / sprite.shape[0])), 250))
    frames = []
    for i in range(40):
        img = campus.copy()
        if i >= 10:  # walks in from the left edge, 12 px a frame
            img, _ = paste(campus, sprite, (i - 9) * 12 - sprite.shape[1], 60)
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
        ref_mask = rasterize(ref, W, H, shape="box", dilate=0) > 0
        seen += bool(ref_mask.any())
        exposed = ref_mask & (p.mask == 0)
        assert not exposed.any(), f"frame {p.item}: {int(exposed.sum())} px the every-frame detector hides are exposed"
    assert seen >= 20, "the every-frame detector must find the person for the check to mean anything"


def test_frames_come_out_once_in_order_with_keyframes_first_and_last(yolox: tuple[Detector, Config]) -> None:
    det, cfg = yolox
    images = _frames(media("vtest.avi"), 40)  # a still camera, people walking
    planned = list(_planner(det, cfg).run(iter(enumerate(images))))
    assert [p.item for p in planned] == list(range(len(images)))
    keys = [p.item for p in planned if p.keyframe]
    assert keys[0] == 0 and keys[-1] >= len(images) - 1 - TAIL, "the stream ends on a keyframe or a short carried tail"
    assert all(p.det is None for p in planned if not p.keyframe)
    assert len(keys) < len(images) // 2


@pytest.mark.parametrize("step", [1, 2])
def test_a_panning_camera_over_a_still_scene_fires_only_for_new_scenery(step: int) -> None:
    """The warp's black border is no reference, not change: a slow pan alone fires nothing until
    the scenery that came into view is wider than NEW_SCENERY (40 px)."""
    scene = cv2.imread(str(media("city.jpg")))  # 800x564, a textured still street
    frames = [np.ascontiguousarray(scene[100:460, step * i : step * i + 640]) for i in range(30)]
    planner: Planner[int] = Planner(
        TemporalConfig(keyframe_interval=300), lambda img, _: Detections.empty((640, 360)), boxes_raster()
    )
    fired = [(p.item, p.reason) for p in planner.run(iter(enumerate(frames))) if p.reason != "carried"]
    if step == 1:  # 29 px of new scenery at most
        assert fired == [(0, "first"), (29, "last")]
    else:  # 42 px of new scenery at frame 21
        assert fired == [(0, "first"), (21, "motion"), (29, "last")]
