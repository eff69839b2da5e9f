"""A detector written outside the package: one class and its options, registered the public way.

The plugin here is OpenCV's HOG people detector (no model file to download): real
detections through the whole engine, configured under its own key `detector.hog`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated

import cv2
import numpy as np
import pytest
from pydantic import Field

from edgeguard.config import load_config
from edgeguard.detections import Detections, clip_boxes
from edgeguard.detectors import registry
from edgeguard.detectors.base import Detector
from edgeguard.detectors.factory import check
from edgeguard.engine import Engine
from edgeguard.errors import ConfigError, ExitCode
from edgeguard.frames import Image
from edgeguard.settings import PluginOptions
from tests.conftest import media
from tests.support.cli import cli, error_lines


class HogOptions(PluginOptions):
    """`detector.hog`: the keys of this plugin alone."""

    win_stride: Annotated[int, Field(ge=1, le=64)] = 8
    scale: Annotated[float, Field(gt=1, le=2)] = 1.05


class Hog(Detector[HogOptions]):
    def _load(self, files: Mapping[str, Path]) -> None:
        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())

    def _detect(self, image: Image, confidence: float) -> Detections:
        h, w = image.shape[:2]
        stride = (self.options.win_stride, self.options.win_stride)
        rects, weights = self.hog.detectMultiScale(image, winStride=stride, scale=self.options.scale)
        if len(rects) == 0:
            return Detections.empty((w, h))
        xywh = np.asarray(rects, np.float32).reshape(-1, 4)
        scores = np.asarray(weights, np.float32).reshape(-1)
        keep = scores >= confidence
        xyxy = np.concatenate([xywh[keep, :2], xywh[keep, :2] + xywh[keep, 2:]], axis=1)
        return Detections(clip_boxes(xyxy, w, h), scores[keep], ("person",) * int(keep.sum()), None, (w, h))


class Broken(Detector[HogOptions]):
    """A plugin with a bug: what edgeguard does with an error nobody planned for."""

    def _load(self, files: Mapping[str, Path]) -> None:
        raise RuntimeError("the plugin's author forgot something")

    def _detect(self, image: Image, confidence: float) -> Detections:
        raise AssertionError("never loaded")


MANIFEST = """\
name: {name}
description: OpenCV's HOG people detector (a test plugin)
backend: {backend}
labels: labels
files:
  labels:
    filename: labels.txt
"""


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Both plugins registered, a manifest for each, and their labels provisioned."""
    registry.register("hog", HogOptions, Hog)
    registry.register("broken", HogOptions, Broken)
    manifests, store = tmp_path / "manifests", tmp_path / "models"
    manifests.mkdir()
    for name, backend in (("hog_people", "hog"), ("broken_people", "broken")):
        (manifests / f"{name}.yaml").write_text(MANIFEST.format(name=name, backend=backend), encoding="utf-8")
        (store / name).mkdir(parents=True)
        (store / name / "labels.txt").write_text("person\n", encoding="utf-8")
    monkeypatch.setenv("EDGEGUARD_MODELS_DIR", str(store))
    yield manifests
    registry.unregister("hog")
    registry.unregister("broken")


def _sets(manifests: Path, *more: str) -> list[str]:
    return [f"models.manifests=[{manifests}]", "detector.model=hog_people", *more]


def test_a_plugin_from_outside_the_package_protects_a_photo(plugins: Path, tmp_path: Path) -> None:
    cfg = load_config(None, _sets(plugins, "protect.style=fill", "protect.shape=box", "detector.confidence=0"))
    assert cfg.detector.options("hog", HogOptions) == HogOptions()
    engine = Engine(cfg)
    assert engine.model_name == "hog_people"
    src = media("city.jpg")
    result = engine.protect_file(src, tmp_path / "out.jpg")
    assert result.detections > 0, "HOG finds people in city.jpg"
    before, after = cv2.imread(str(src)), cv2.imread(str(tmp_path / "out.jpg"))
    assert (np.abs(before.astype(int) - after.astype(int)).max(axis=2) > 40).mean() > 0.01, "nothing was hidden"


def test_the_plugin_reads_its_own_keys_and_refuses_unknown_ones(plugins: Path) -> None:
    cfg = load_config(None, _sets(plugins, "detector.hog.win_stride=4"))
    assert cfg.detector.options("hog", HogOptions) == HogOptions(win_stride=4)
    with pytest.raises(ConfigError) as err:
        load_config(None, _sets(plugins, "detector.hog.stride=4", "detector.hog.scale=3"))
    assert sorted(err.value.problems) == [
        "--set detector.hog.scale: Input should be less than or equal to 2",
        "--set detector.hog.stride: unknown key",
    ]
    assert check(cfg) == []


def test_a_plugin_key_given_at_the_wrong_level_says_where_it_belongs(plugins: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, _sets(plugins, "detector.win_stride=4"))
    assert err.value.problems == ["--set detector.win_stride: moved to detector.hog.win_stride"]


def test_an_unexpected_error_exits_70_with_one_line_and_the_traceback_in_the_debug_log(
    plugins: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sets = [a for s in _sets(plugins, "detector.model=broken_people") for a in ("--set", s)]
    code, _, err = cli(capsys, "protect", media("city.jpg"), "-o", tmp_path / "out.jpg", *sets)
    assert code == ExitCode.INTERNAL == 70
    assert error_lines(err) == [
        "edgeguard: internal error: RuntimeError: the plugin's author forgot something (run with -v for the traceback)"
    ]
    assert "Traceback" not in err
    code, _, err = cli(capsys, "-v", "protect", media("city.jpg"), "-o", tmp_path / "out.jpg", *sets)
    assert code == 70
    debug = err[err.index("DEBUG edgeguard.cli: unexpected error") :]
    assert "Traceback" in debug and "forgot something" in debug
    assert not (tmp_path / "out.jpg").exists()
