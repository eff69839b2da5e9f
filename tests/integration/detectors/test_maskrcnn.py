"""Mask R-CNN (the default model) through cv2.dnn with the stand-in weights of the real shapes.

The stand-in "finds" many persons at random-ish places with ~2 s per forward, so these tests
use one image and a three-frame clip.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeguard.config import load_config
from edgeguard.detectors.factory import create_detector
from edgeguard.detectors.maskrcnn import CALM, MaskRCNN, RowLadder, gate_classes, tune_graph
from edgeguard.errors import SetupError
from tests.conftest import CANDIDATES, PBTXT, media, need, standin_overrides
from tests.support.cli import cli, error_lines, ffmpeg
from tests.support.probe import ffprobe, frame_times, streams

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
        *sets(standin_dir, "detector.maskrcnn.max_detections=10"),
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
    extra = ["detector.classes=[person, face]", "detector.maskrcnn.max_detections=10"]
    cfg = load_config(None, [*standin_overrides(standin_dir), *extra])
    det = create_detector(cfg).detect(cv2.imread(str(media("city.jpg"))))
    assert "face" in det.classes and "person" in det.classes
    assert det.masks is not None and len(det.masks) == len(det)  # faces get box-shaped masks


def test_input_size_keeps_boxes_in_frame_coordinates(standin_dir: Path, empty_models: Path) -> None:
    cfg = load_config(
        None, [*standin_overrides(standin_dir), "detector.input_size=320", "detector.maskrcnn.max_detections=10"]
    )
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


def test_gate_classes_multiplies_the_second_stage_scores_by_a_gate() -> None:
    text = need(PBTXT).read_text(encoding="utf-8")
    tuned = gate_classes(text, [0, 2])
    assert tuned is not None
    start = tuned.find('name: "detection_out_final"')
    block = tuned[start : tuned.find("\nnode {", start)]
    assert 'input: "edgeguard/gated_scores"' in block
    assert 'input: "SecondStageBoxPredictor/Reshape_1/Reshape"' not in block
    gate_node = tuned[tuned.find('name: "edgeguard/class_gate"') : tuned.find('name: "edgeguard/gated_scores"')]
    gate = [float(v) for v in re.findall(r"float_val: ([0-9.]+)", gate_node)]
    # 100 proposals x 90 classes, person (0) and car (2) open.
    assert len(gate) == 9000 and sum(gate) == 200
    assert gate[:4] == [1, 0, 1, 0] and gate[90:94] == [1, 0, 1, 0]
    assert gate_classes(text.replace('input: "SecondStageBoxPredictor/Reshape_1/Reshape"\n', ""), [0]) is None
    assert gate_classes(text.replace("detection_out_final", "renamed_node"), [0]) is None


def forward_rows(standin_dir: Path, image: np.ndarray, keep: list[int] | None = None) -> np.ndarray:
    """The filled rows of a 100-row, floor-0.3 second stage, gated to `keep` if given."""
    text = need(PBTXT).read_text(encoding="utf-8")
    if keep is not None:
        gated = gate_classes(text, keep)
        assert gated is not None
        text = gated
    net = cv2.dnn.readNetFromTensorflow(
        np.fromfile(standin_dir / "frozen_inference_graph.pb", np.uint8),
        np.frombuffer(tune_graph(text, keep_top_k=100, confidence=0.3).encode(), np.uint8),
    )
    net.setInput(cv2.dnn.blobFromImage(image, 1.0, (image.shape[1], image.shape[0]), swapRB=True))
    rows: np.ndarray = net.forward("detection_out_final").reshape(-1, 7)
    return rows[rows[:, 2] > 0]


def test_class_gate_keeps_wanted_rows_exactly_and_frees_the_others(standin_dir: Path) -> None:
    image = cv2.imread(str(media("city.jpg")))
    plain = forward_rows(standin_dir, image)
    assert len(plain) > 20 and set(plain[:, 1]) == {0}  # the stand-in "finds" persons only
    gated = forward_rows(standin_dir, image, keep=[0])
    np.testing.assert_array_equal(gated, plain)
    # Gated to cars, the persons take no rows at all.
    assert len(forward_rows(standin_dir, image, keep=[2])) == 0


def test_row_ladder_gives_the_answer_of_all_rows(standin_dir: Path) -> None:
    image = cv2.imread(str(media("city.jpg")))
    found = {}
    for adaptive in (True, False):
        cfg = load_config(None, [*standin_overrides(standin_dir), f"detector.maskrcnn.adaptive_rows={adaptive}"])
        detector = create_detector(cfg)
        assert isinstance(detector, MaskRCNN)
        found[adaptive] = detector.detect(image.copy(), 0.25), detector.ladder.rows
    (ladder, rows), (full, full_rows) = found[True], found[False]
    assert full_rows == 100
    # The stand-in fills 16, 32 and 48 rows at the floor: each came back full and was retried a rung up.
    assert len(full) > 32 and rows == 64
    np.testing.assert_array_equal(ladder.boxes, full.boxes)
    np.testing.assert_array_equal(ladder.scores, full.scores)
    assert ladder.masks is not None and full.masks is not None
    assert all((a == b).all() for a, b in zip(ladder.masks, full.masks, strict=True))


def test_row_ladder_climbs_when_full_and_steps_down_when_calm() -> None:
    ladder = RowLadder(100)
    assert ladder.rungs == [16, 32, 48, 64, 100]
    assert not ladder.retry(15)  # a row to spare: exact
    assert ladder.retry(16) and ladder.rows == 32
    assert ladder.retry(32) and ladder.rows == 48
    assert not ladder.retry(40)
    ladder.settle(40)
    # 20 fits 32 with a quarter to spare; only after CALM such answers in a row does it step down.
    for _ in range(CALM - 1):
        ladder.settle(20)
        assert ladder.rows == 48
    ladder.settle(30)  # not calm: 30 would nearly fill 32
    for _ in range(CALM - 1):
        ladder.settle(20)
    assert ladder.rows == 48
    ladder.settle(20)
    assert ladder.rows == 32
    # At the ceiling a full answer is the answer: nothing above to retry with.
    top = RowLadder(100)
    for _ in range(4):
        top.retry(100)
    assert top.rows == 100 and not top.retry(100)


def test_row_ladder_never_exceeds_max_detections() -> None:
    assert RowLadder(10).rungs == [10]
    assert RowLadder(40).rungs == [16, 32, 40]
    assert RowLadder(64).rungs == [16, 32, 48, 64]
    assert RowLadder(100, ()).rungs == [100]


def test_a_graph_wired_differently_runs_without_the_class_gate(
    standin_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = need(PBTXT).read_text(encoding="utf-8")
    renamed = tmp_path / "graph.pbtxt"
    old = '"SecondStageBoxPredictor/Reshape_1/Reshape"'
    assert text.count(old) == 2  # the node and detection_out_final's input
    renamed.write_text(text.replace(old, '"second_stage_scores"'), encoding="utf-8")
    cfg = load_config(None, [*standin_overrides(standin_dir), f"detector.files.graph={renamed}"])
    with caplog.at_level("WARNING", logger="edgeguard.detectors.maskrcnn"):
        detector = create_detector(cfg)
    assert "not wired as expected; every class takes rows" in caplog.text
    assert len(detector.detect(cv2.imread(str(media("city.jpg"))))) > 0
