"""Mask R-CNN (TF Object Detection API export) through cv2.dnn's TensorFlow importer."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

from edgeguard import dnn_target
from edgeguard.detections import Detections, clip_boxes
from edgeguard.detectors.base import Detector, Image
from edgeguard.errors import SetupError

OUTPUTS = ["detection_out_final", "detection_masks"]


def tune_graph(text: str, *, keep_top_k: int, confidence: float) -> str:
    """Set the second stage's detection cap and score floor in OpenCV's text graph.

    OpenCV runs the mask branch on every one of `keep_top_k` rows, padding
    included, so the cap is the main lever on mask cost.
    """
    start = text.find('name: "detection_out_final"')
    end = text.find("\nnode {", start)
    if start < 0 or end < 0:
        raise SetupError("the Mask R-CNN text graph has no detection_out_final node")
    block = text[start:end]
    block, n_top = re.subn(r'(key: "keep_top_k"\s*value \{\s*i: )\d+', rf"\g<1>{keep_top_k}", block)
    block, n_conf = re.subn(
        r'(key: "confidence_threshold"\s*value \{\s*f: )[0-9.e-]+', rf"\g<1>{confidence:.6f}", block
    )
    if n_top != 1 or n_conf != 1:
        raise SetupError("the Mask R-CNN text graph's detection_out_final lacks keep_top_k/confidence_threshold")
    return text[:start] + block + text[end:]


class MaskRCNN(Detector):
    type_key = "maskrcnn"

    def _load(self, files: Mapping[str, Path]) -> None:
        cfg, name = self.cfg, self.model_name
        try:
            graph = tune_graph(
                files["graph"].read_text(encoding="utf-8"),
                keep_top_k=cfg.max_detections,
                # The graph's own floor (0.3) would hide detections a lower configured threshold wants.
                confidence=min(self.score_floor, 0.3),
            )
            # Buffers must be uint8 arrays: OpenCV's binding crashes on `bytes` here.
            self.net = cv2.dnn.readNetFromTensorflow(
                np.fromfile(files["weights"], np.uint8), np.frombuffer(graph.encode(), np.uint8)
            )
        except (OSError, cv2.error) as exc:
            raise SetupError(f"cannot load {name} from {files['weights']}: {_first_line(exc)}") from exc
        dnn_target.apply(self.net, self.target)
        self.has_masks = True
        self.wanted = np.zeros(max(len(self.labels), 91), np.bool_)
        self.wanted[self.class_ids] = True

    def _detect(self, image: Image, confidence: float) -> Detections:
        h, w = image.shape[:2]
        size = (w, h)
        if self.cfg.input_size and max(w, h) > self.cfg.input_size:
            s = self.cfg.input_size / max(w, h)
            size = (max(32, round(w * s)), max(32, round(h * s)))
        blob = cv2.dnn.blobFromImage(image[:, :, :3], 1.0, size, swapRB=True, crop=False)
        self.net.setInput(blob)
        if self.want_masks:
            rows, masks = self.net.forward(OUTPUTS)
        else:
            # OpenCV computes only what the requested outputs need: no mask branch at all.
            rows, masks = self.net.forward(OUTPUTS[:1])[0], None
        rows = rows.reshape(-1, 7)
        cls = rows[:, 1].astype(np.int64)
        valid = (rows[:, 2] >= confidence) & (cls >= 0) & (cls < len(self.wanted))
        keep = np.flatnonzero(valid & self.wanted[np.where(valid, cls, 0)])
        if len(keep) == 0:
            return Detections.empty((w, h))
        boxes = clip_boxes(rows[keep, 3:7] * np.array([w, h, w, h], np.float32), w, h)
        names = tuple(self.labels[c] for c in cls[keep])
        if masks is None:
            return Detections(boxes, rows[keep, 2].astype(np.float32), names, None, (w, h))
        inst: list[np.ndarray] = []
        for i, (x0, y0, x1, y1) in zip(keep, boxes, strict=True):
            bw, bh = int(x1 - x0), int(y1 - y0)
            if bw == 0 or bh == 0:
                inst.append(np.zeros((bh, bw), np.bool_))
                continue
            prob = cv2.resize(masks[i, cls[i]], (bw, bh), interpolation=cv2.INTER_LINEAR)
            inst.append(prob > self.cfg.mask_threshold)
        return Detections(boxes, rows[keep, 2].astype(np.float32), names, tuple(inst), (w, h))


def _first_line(exc: BaseException) -> str:
    lines = [s for s in str(exc).strip().splitlines() if s.strip()]
    return lines[-1] if lines else type(exc).__name__


DETECTOR = MaskRCNN
