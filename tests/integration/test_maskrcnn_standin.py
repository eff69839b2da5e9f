"""The stand-in Mask R-CNN weights load in OpenCV, run at full cost and find people."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from tests.conftest import MEDIA, PBTXT
from tests.support.maskrcnn_standin import STANDIN_NAME, ensure_standin, infer_constants, write_standin

FRAME = MEDIA / "city.jpg"
PERSON = 0  # row 0 of object_detection_classes_coco.txt

Outputs = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def pbtxt() -> Path:
    if not PBTXT.is_file():
        pytest.skip(f"MASK R-CNN TEXT GRAPH MISSING: {PBTXT} (set EDGEGUARD_SHARED to the shared dir)")
    return PBTXT


@pytest.fixture(scope="module")
def standin(pbtxt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_standin(pbtxt, tmp_path_factory.mktemp("maskrcnn"))


@pytest.fixture(scope="module")
def outputs(standin: Path, pbtxt: Path) -> Outputs:
    frame = cv2.imread(str(FRAME))
    assert frame is not None, f"cannot read {FRAME}"
    cv2.setNumThreads(2)
    net = cv2.dnn.readNetFromTensorflow(str(standin), str(pbtxt))
    net.setInput(cv2.dnn.blobFromImage(frame, swapRB=True, crop=False))
    boxes, masks = net.forward(["detection_out_final", "detection_masks"])
    return np.asarray(boxes, dtype=np.float32), np.asarray(masks, dtype=np.float32)


def test_every_referenced_constant_is_generated(pbtxt: Path) -> None:
    specs = infer_constants(pbtxt)
    shapes = {s.name: s.shape for s in specs}
    assert len(shapes) == len(specs) == 381
    expected = {
        "FirstStageFeatureExtractor/InceptionV2/Conv2d_1a_7x7/depthwise_weights": (7, 7, 3, 8),
        "FirstStageFeatureExtractor/InceptionV2/Mixed_4e/Branch_3/Conv2d_0b_1x1/weights": (1, 1, 576, 96),
        "SecondStageFeatureExtractor/InceptionV2/Mixed_5a/Branch_1/Conv2d_1a_3x3/weights": (3, 3, 256, 256),
        "SecondStageBoxPredictor/ClassPredictor/weights": (1024, 91),
        "SecondStageBoxPredictor/Conv_1/weights": (3, 3, 256, 90),
    }
    assert {name: shapes.get(name) for name in expected} == expected


def test_outputs_have_opencv_shapes(outputs: Outputs) -> None:
    boxes, masks = outputs
    assert boxes.shape == (1, 1, 100, 7)
    assert masks.shape == (100, 90, 15, 15)
    assert np.isfinite(boxes).all()
    assert np.isfinite(masks).all()
    assert masks.min() >= 0.0
    assert masks.max() <= 1.0


def test_people_are_detected_with_masks(outputs: Outputs) -> None:
    boxes, masks = outputs
    rows = boxes[0, 0]
    people = (rows[:, 1] == PERSON) & (rows[:, 2] > 0.5)
    assert people.any()
    x0, y0, x1, y1 = rows[people][:, 3:7].T
    assert ((x0 < x1) & (y0 < y1)).all()
    person_masks = masks[np.flatnonzero(people), PERSON]
    assert (person_masks > 0.5).any()
    assert (person_masks < 0.5).any()


def test_same_seed_writes_same_bytes(pbtxt: Path, standin: Path, tmp_path: Path) -> None:
    first = write_standin(pbtxt, tmp_path / "a.pb")
    second = write_standin(pbtxt, tmp_path / "b.pb")
    other = write_standin(pbtxt, tmp_path / "c.pb", seed=1)
    assert _sha256(first) == _sha256(second) == _sha256(standin)
    assert _sha256(other) != _sha256(first)


def test_ensure_standin_keeps_an_existing_file(pbtxt: Path, standin: Path) -> None:
    before = standin.stat().st_mtime_ns
    assert ensure_standin(pbtxt, standin.parent) == standin
    assert standin.stat().st_mtime_ns == before
    assert [p.name for p in standin.parent.iterdir()] == [STANDIN_NAME]
