"""Mask R-CNN's cost with a real detector's detections.

The stand-in weights (tests/support/maskrcnn_standin.py) have the real graph and
tensor shapes, so they cost what the real model costs; their detections are
arbitrary, though. Here every Mask R-CNN call runs the stand-in forward pass for
its cost and returns what yolox_nano finds on the frame (its "twin"), so the
keyframe schedule and the row ladder follow the real scene.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from bench.paths import SHARED
from edgeguard.config import Config
from edgeguard.detections import Detections
from edgeguard.detectors.base import Detector, DetectorSpec
from edgeguard.detectors.factory import create_detector, model_files
from edgeguard.detectors.maskrcnn import MaskRCNN, MaskRcnnOptions


class CostedMaskRCNN(MaskRCNN):
    """The stand-in Mask R-CNN, its rows counted as the real scene would fill them.

    The stand-in "finds" ~50 persons on any frame, so its own count would keep
    the row ladder at its top rung; `scene_rows` (set per call from yolox_nano's
    count at the same score floor) is what a working Mask R-CNN would fill.
    """

    scene_rows = 0

    def _used(self, rows: np.ndarray) -> int:
        return min(self.scene_rows, len(rows))


class SeedMaskRCNN(MaskRCNN):
    """The seed's network: OpenCV's text graph as published (100 rows, every class, floor 0.3)."""

    def _net(self, rows: int) -> cv2.dnn.Net:
        if not self._nets:
            net = cv2.dnn.readNetFromTensorflow(self._weights, np.frombuffer(self._graph.encode(), np.uint8))
            self._nets[rows] = net
        return next(iter(self._nets.values()))


class CostedDetector(Detector):
    """Mask R-CNN's cost with a real detector's detections.

    The stand-in weights cost what the real model costs, but their detections
    are arbitrary, and the motion check (what is protected, what moved outside
    it) would then decide keyframes on fiction. So every call runs the stand-in
    forward pass for its cost, and returns what yolox_nano finds on the frame
    (~30 ms more): the keyframe schedule a working Mask R-CNN would get.
    """

    def __init__(self, cost: MaskRCNN, truth: Detector) -> None:  # no super(): nothing to load
        self.cost, self.truth = cost, truth
        self.cfg, self.model_name, self.target = cost.cfg, cost.model_name, cost.target
        self.score_floor = cost.score_floor
        self.has_masks = False  # yolox gives boxes
        self.mirror_keyframes = cost.mirror_keyframes
        self.heads = cost.heads

    @property  # type: ignore[override]
    def want_masks(self) -> bool:
        return self.cost.want_masks

    @want_masks.setter
    def want_masks(self, value: bool) -> None:
        self.cost.want_masks = value

    def _load(self, files: object) -> None:  # pragma: no cover - never called
        raise NotImplementedError

    def _detect(self, image: np.ndarray, confidence: float) -> Detections:  # pragma: no cover - never called
        raise NotImplementedError

    def detect(self, image: np.ndarray, confidence: float | None = None, *, mirror: bool = False) -> Detections:
        # Everything down to the graph's floor takes a row, as in Mask R-CNN's second stage.
        seen = self.truth.detect(image, self.cost.floor, mirror=mirror)
        if isinstance(self.cost, CostedMaskRCNN):
            self.cost.scene_rows = len(seen)
        self.cost.detect(image, confidence, mirror=mirror)
        conf = max(self.cfg.confidence if confidence is None else confidence, self.score_floor)
        keep = np.flatnonzero(seen.scores >= conf)
        return Detections(
            seen.boxes[keep],
            seen.scores[keep],
            tuple(seen.classes[i] for i in keep),
            None if seen.masks is None else tuple(seen.masks[i] for i in keep),
            seen.frame_size,
        )


def costed(cfg: Config, truth_cfg: Config, kind: type[MaskRCNN] = CostedMaskRCNN) -> CostedDetector:
    manifest, files = model_files(cfg)
    spec = DetectorSpec(
        cfg.detector, files, "cpu", manifest.name, manifest.input_size, cfg.temporal.keyframe_confidence
    )
    cost = kind(spec, cfg.detector.options("maskrcnn", MaskRcnnOptions))
    return CostedDetector(cost, create_detector(truth_cfg))


def standin_set(root: Path) -> list[str]:
    return [
        f"detector.files.weights={root / 'frozen_inference_graph.pb'}",
        f"detector.files.graph={SHARED / 'models' / 'mask_rcnn_inception_v2_coco_2018_01_28.pbtxt'}",
        f"detector.files.labels={SHARED / 'models' / 'object_detection_classes_coco.txt'}",
    ]
