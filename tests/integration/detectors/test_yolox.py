"""YOLOX-nano through cv2.dnn on real photos: boxes, silhouettes, classes, faces, settings."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from edgeguard.config import load_config
from edgeguard.detections import Detections
from edgeguard.detectors.base import Detector
from edgeguard.detectors.factory import create_detector
from edgeguard.errors import ConfigError
from edgeguard.frames import Image
from tests.conftest import media
from tests.support.cli import cli, error_lines


@pytest.fixture
def make(yolox_env: Path) -> Callable[..., Detector]:
    def build(*overrides: str) -> Detector:
        return create_detector(load_config(None, ["detector.model=yolox_nano", *overrides]))

    return build


def photo(name: str) -> Image:
    image = cv2.imread(str(media(name)))
    assert image is not None
    return image


def iou(a: npt.NDArray[np.int32], b: npt.NDArray[np.int32]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union else 0.0


def check_valid(det: Detections, image: Image) -> None:
    h, w = image.shape[:2]
    assert det.frame_size == (w, h)
    b = det.boxes
    assert ((b[:, 0] >= 0) & (b[:, 1] >= 0) & (b[:, 2] <= w) & (b[:, 3] <= h)).all()
    assert ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all(), "empty boxes"


def test_finds_the_pedestrians_of_a_street(make: Callable[..., Detector]) -> None:
    detector = make()
    image = photo("city.jpg")
    det = detector.detect(image)
    check_valid(det, image)
    assert len(det) >= 5
    assert set(det.classes) == {"person"}
    assert (det.scores >= 0.45).all() and (det.scores <= 1).all()
    assert det.masks is None and not detector.has_masks
    assert detector.model_name == "yolox_nano" and detector.target == "cpu"
    # Non-maximum suppression: no two people are reported as one heavily overlapping pair.
    for i in range(len(det)):
        for j in range(i + 1, len(det)):
            assert iou(det.boxes[i], det.boxes[j]) <= 0.45 + 0.02
    # Deterministic: the same frame gives the same answer.
    again = detector.detect(image)
    assert (again.boxes == det.boxes).all()


def test_silhouettes_are_person_shaped_masks_inside_the_boxes(make: Callable[..., Detector]) -> None:
    detector = make("detector.yolox.silhouettes=true")
    assert detector.has_masks
    image = photo("city.jpg")
    det = detector.detect(image)
    assert det.masks is not None and len(det.masks) == len(det) >= 5
    shares = []
    for (x0, y0, x1, y1), mask in zip(det.boxes.tolist(), det.masks, strict=True):
        assert mask.shape == (y1 - y0, x1 - x0) and mask.dtype == np.bool_
        shares.append(mask.mean())
    # A silhouette covers a good part of its box, but not all of it.
    assert 0.3 < float(np.median(shares)) < 0.95, shares
    boxes_only = make().detect(image)
    assert (boxes_only.boxes == det.boxes).all(), "silhouettes must not change which people are found"


def test_silhouettes_need_the_segmenter_file(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    partial = tmp_path / "models"
    shutil.copytree(models_dir / "yolox_nano", partial / "yolox_nano")
    (partial / "yolox_nano" / "selfie_segmentation.tflite").unlink()
    monkeypatch.setenv("EDGEGUARD_MODELS_DIR", str(partial))
    monkeypatch.delenv("EDGEGUARD_CONFIG", raising=False)
    code, _, err = cli(capsys, "protect", media("city.jpg"), "-o", tmp_path / "x.jpg",
                       "--set", "detector.model=yolox_nano", "--set", "detector.yolox.silhouettes=true")  # fmt: skip
    assert code == 3
    (line,) = error_lines(err)
    assert "selfie_segmentation.tflite not found" in line and "edgeguard models fetch yolox_nano" in line
    # Without silhouettes the same folder is enough.
    code, _, err = cli(capsys, "protect", media("city.jpg"), "-o", tmp_path / "x.jpg",
                       "--set", "detector.model=yolox_nano")  # fmt: skip
    assert code == 0, err


def test_higher_confidence_finds_fewer(make: Callable[..., Detector]) -> None:
    image = photo("000000005001.jpg")
    low = make("detector.confidence=0.3").detect(image)
    high = make("detector.confidence=0.75").detect(image)
    assert len(high) < len(low)
    assert (high.scores >= 0.75).all()
    assert (low.scores >= 0.3).all()


def test_faces_come_from_yunet_as_the_class_face(make: Callable[..., Detector]) -> None:
    image = photo("000000005001.jpg")  # a crowd facing the camera
    faces = make("detector.classes=[face]", "detector.heads=false").detect(image)
    people = make().detect(image)
    both = make("detector.classes=[person, face]").detect(image)
    check_valid(faces, image)
    assert len(faces) >= 3 and set(faces.classes) == {"face"}
    assert len(both) == len(faces) + len(people)
    assert sorted(both.classes) == sorted(faces.classes + people.classes)
    # Most faces lie inside a detected person (the rest belong to people YOLOX missed: why faces help).
    inside = 0
    for fx0, fy0, fx1, fy1 in faces.boxes.tolist():
        area = (fx1 - fx0) * (fy1 - fy0)
        best = max(
            max(0, min(fx1, p[2]) - max(fx0, p[0])) * max(0, min(fy1, p[3]) - max(fy0, p[1]))
            for p in people.boxes.tolist()
        )
        inside += best / area > 0.5
    assert inside >= len(faces) / 2


def test_face_mode_also_finds_the_persons_whose_heads_it_hides(make: Callable[..., Detector]) -> None:
    """Faces turned away or too small for YuNet: face mode finds persons too (their heads are hidden)."""
    image = photo("000000005001.jpg")
    faces_only = make("detector.classes=[face]", "detector.heads=false")
    with_heads = make("detector.classes=[face]")
    assert not faces_only.heads and with_heads.heads
    found = with_heads.detect(image)
    persons = [c for c in found.classes if c == "person"]
    assert len(persons) == len(make().detect(image)) and len(persons) >= 5
    assert found.classes.count("face") == len(faces_only.detect(image))
    # Asking for persons as well hides them whole: no heads-only rendering then.
    assert not make("detector.classes=[person, face]").heads


def test_unknown_class_is_named(make: Callable[..., Detector]) -> None:
    with pytest.raises(ConfigError) as info:
        make("detector.classes=[person, unicorn]")
    assert info.value.problems == ["detector.classes: 'unicorn' not a class of yolox_nano"]


def test_coco_names_are_accepted_for_darknet_labels(make: Callable[..., Detector]) -> None:
    # coco.names spells it "motorbike"; configs use COCO's "motorcycle" everywhere.
    detector = make("detector.classes=[person, motorcycle, tv, couch]")
    image = photo("000000038829.jpg")  # people on bicycles and motorbikes
    det = detector.detect(image)
    assert "person" in det.classes
    assert set(det.classes) <= {"person", "motorcycle", "tv", "couch"}


@pytest.mark.parametrize(("size", "ok"), [(600, False), (320, True), (640, True)])
def test_input_size_must_be_a_multiple_of_32(
    size: int, ok: bool, make: Callable[..., Detector], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    if not ok:
        code, _, err = cli(capsys, "protect", media("city.jpg"), "-o", tmp_path / "x.jpg",
                           "--set", "detector.model=yolox_nano", "--set", f"detector.input_size={size}")  # fmt: skip
        assert code == 2
        assert error_lines(err) == [f"edgeguard: detector.input_size: yolox_nano needs a multiple of 32, not {size}"]
        return
    image = photo("city.jpg")
    det = make(f"detector.input_size={size}").detect(image)
    check_valid(det, image)
    assert len(det) >= 3


def test_frames_without_people_and_odd_frames(make: Callable[..., Detector]) -> None:
    detector = make()
    grey = np.full((480, 640, 3), 128, np.uint8)
    empty = detector.detect(grey)
    assert len(empty) == 0 and empty.boxes.shape == (0, 4) and empty.frame_size == (640, 480)
    tiny = detector.detect(np.zeros((23, 37, 3), np.uint8))
    assert tiny.frame_size == (37, 23)
    # A tall odd-sized crop of a real street: boxes stay inside it.
    crop = np.ascontiguousarray(photo("city.jpg")[:501, 99:432])
    det = detector.detect(crop)
    check_valid(det, crop)
    assert len(det) >= 1


def test_alpha_channel_is_ignored(make: Callable[..., Detector]) -> None:
    detector = make()
    bgr = photo("city.jpg")
    bgra = np.dstack([bgr, np.full(bgr.shape[:2], 9, np.uint8)])
    a, b = detector.detect(bgr), detector.detect(bgra)
    assert (a.boxes == b.boxes).all() and a.classes == b.classes
