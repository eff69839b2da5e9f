"""Mask R-CNN (the default model) through cv2.dnn with the stand-in weights of the real shapes.

The stand-in "finds" many persons at random-ish places with ~2 s per forward, so these tests
use one image and a three-frame clip.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeguard.config import load_config
from edgeguard.detectors import create_detector
from edgeguard.detectors.maskrcnn import tune_graph
from edgeguard.errors import SetupError
from tests.conftest import CANDIDATES, PBTXT, media, need, standin_overrides
from tests.support.probe import ffprobe, frame_times, streams
from tests.test_cli import cli, error_lines, ffmpeg

MODEL = "mask_rcnn_inception_v2_coco"
RGB = (255, 0, 255)
BGR = np.array(RGB[::-1])


def sets(root: Path, *extra: str) -> list[str]:
    out: list[str] = []
    for item in [*standin_overrides(root), *extra]:
        out += ["--set", item]
    return out


@pytest.fixture
def empty_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No models provisioned: the stand-in must be reached through detector.files alone."""
    root = tmp_path / "models"
    root.mkdir()
    monkeypatch.setenv("EDGEGUARD_MODELS_DIR", str(root))
    monkeypatch.delenv("EDGEGUARD_CONFIG", raising=False)
    return root


@pytest.fixture(scope="module")
def city_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("city") / "city.png"
    assert cv2.imwrite(str(path), cv2.imread(str(media("city.jpg"))))
    return path


def test_default_model_protects_an_image(
    standin_dir: Path, empty_models: Path, city_png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dst = tmp_path / "out.png"
    fill = ("protect.style=fill", f"protect.color=[{RGB[0]}, {RGB[1]}, {RGB[2]}]")
    code, out, err = cli(capsys, "protect", city_png, "-o", dst, "--json", *sets(standin_dir, *fill))
    assert code == 0, err
    summary = json.loads(out)
    assert summary["model"] == MODEL
    assert summary["target"] == "cpu"
    assert summary["frames"] == 1
    assert summary["detections"] > 0

    before = cv2.imread(str(city_png))
    after = cv2.imread(str(dst))
    detector = create_detector(load_config(None, [*standin_overrides(standin_dir), *fill]))
    assert detector.has_masks
    det = detector.detect(before.copy())
    assert len(det) == summary["detections"]
    assert set(det.classes) == {"person"}
    assert det.masks is not None
    for i, (x0, y0, x1, y1) in enumerate(det.boxes.tolist()):
        inside_before, inside_after = before[y0:y1, x0:x1], after[y0:y1, x0:x1]
        assert (inside_after != inside_before).any(), f"box {i} is unchanged"
        assert (inside_after[det.masks[i]] == BGR).all(), f"instance {i}: its mask is not completely filled"
    changed = (after != before).any(axis=2)
    assert (after[changed] == BGR).all()


def test_default_model_on_a_short_clip_keeps_every_frame(
    standin_dir: Path, empty_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clip = tmp_path / "three.mp4"
    ffmpeg("-i", media("dos.mp4"), "-frames:v", "3", "-c", "copy", clip)
    dst = tmp_path / "three-protected.mp4"
    code, out, err = cli(capsys, "protect", clip, "-o", dst, "--json", *sets(standin_dir))
    assert code == 0, err
    summary = json.loads(out)
    assert summary["frames"] == 3
    assert summary["detections"] > 0
    (video,) = streams(ffprobe(dst), "video")
    assert (video["codec_name"], int(video["nb_frames"])) == ("h264", 3)
    assert frame_times(dst) == frame_times(clip)


def test_max_detections_caps_the_instances(
    standin_dir: Path, empty_models: Path, city_png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(
        capsys, "protect", city_png, "-o", tmp_path / "out.png", "--json",
        *sets(standin_dir, "detector.max_detections=10"),
    )  # fmt: skip
    assert code == 0, err
    assert 0 < json.loads(out)["detections"] <= 10


def test_face_class_needs_a_face_model(
    standin_dir: Path, empty_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(
        capsys, "protect", media("city.jpg"), "-o", tmp_path / "out.jpg",
        *sets(standin_dir, "detector.classes=[person, face]"),
    )  # fmt: skip
    assert code == 3
    assert out == ""
    (line,) = error_lines(err)
    assert "face_detection_yunet_2026may.onnx not found" in line
    assert f"`edgeguard models fetch {MODEL}`" in line
    assert not (tmp_path / "out.jpg").exists()


def test_face_class_with_the_face_model_adds_faces(standin_dir: Path, empty_models: Path) -> None:
    yunet = need(CANDIDATES / "face_detection_yunet_2026may.onnx")
    (empty_models / MODEL).mkdir()
    shutil.copy(yunet, empty_models / MODEL / yunet.name)
    extra = ["detector.classes=[person, face]", "detector.max_detections=10"]
    cfg = load_config(None, [*standin_overrides(standin_dir), *extra])
    det = create_detector(cfg).detect(cv2.imread(str(media("city.jpg"))))
    assert "face" in det.classes and "person" in det.classes
    assert det.masks is not None and len(det.masks) == len(det)  # faces get box-shaped masks


def test_input_size_keeps_boxes_in_frame_coordinates(standin_dir: Path, empty_models: Path) -> None:
    cfg = load_config(None, [*standin_overrides(standin_dir), "detector.input_size=320", "detector.max_detections=10"])
    image = cv2.imread(str(media("city.jpg")))
    det = create_detector(cfg).detect(image)
    assert 0 < len(det) <= 10
    h, w = image.shape[:2]
    assert det.frame_size == (w, h)
    assert (det.boxes[:, [0, 2]] <= w).all() and (det.boxes[:, [1, 3]] <= h).all()
    assert det.boxes[:, 2].max() > w // 2, "boxes look like they stayed in the 320-px input's coordinates"


def test_corrupt_weights_fail_setup_in_one_line(
    standin_dir: Path, empty_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "frozen_inference_graph.pb"
    junk.write_bytes(bytes(range(256)) * 400)
    overrides = [*sets(standin_dir), "--set", f"detector.files.weights={junk}"]
    code, _, err = cli(capsys, "protect", media("city.jpg"), "-o", tmp_path / "out.jpg", *overrides)
    assert code == 3
    (line,) = error_lines(err)
    assert f"cannot load {MODEL} from {junk}" in line
    assert len(err.strip().splitlines()) == 1, err


def test_missing_explicit_file_is_a_config_error(
    standin_dir: Path, empty_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides = [*sets(standin_dir), "--set", f"detector.files.weights={tmp_path / 'nope.pb'}"]
    code, _, err = cli(capsys, "protect", media("city.jpg"), "-o", tmp_path / "out.jpg", *overrides)
    assert code == 2
    assert error_lines(err) == [f"edgeguard: detector.files.weights: {tmp_path / 'nope.pb'} is not a file"]


def test_doctor_accepts_the_explicit_files(
    standin_dir: Path, empty_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, "doctor", *sets(standin_dir))
    assert code == 0, out
    assert f"ok   model {MODEL}" in out


def test_tune_graph_sets_the_cap_and_floor_of_the_second_stage_only() -> None:
    text = need(PBTXT).read_text(encoding="utf-8")
    tuned = tune_graph(text, keep_top_k=7, confidence=0.25)
    start = tuned.find('name: "detection_out_final"')
    block = tuned[start : tuned.find("\nnode {", start)]
    assert "i: 7" in block and "f: 0.250000" in block
    # The first stage (proposals) keeps its own settings.
    assert tuned[:start] == text[:start]
    assert len(tuned.splitlines()) == len(text.splitlines())
    with pytest.raises(SetupError, match="no detection_out_final"):
        tune_graph(text.replace("detection_out_final", "renamed_node"), keep_top_k=7, confidence=0.3)
