"""YOLOX-nano (COCO boxes, ONNX) with optional per-person silhouettes.

Decode recipe: ../shared/models/candidates/SOURCES.md. Silhouettes come from
MediaPipe selfie segmentation run on each person crop, which is accurate on
crops but not on whole street frames.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from edgeguard import dnn_target
from edgeguard.detections import Detections, clip_boxes
from edgeguard.detectors.base import Detector
from edgeguard.detectors.registry import register
from edgeguard.errors import ConfigError, SetupError
from edgeguard.frames import Image
from edgeguard.settings import DetectorSettings, PluginOptions

STRIDES = (8, 16, 32)
NATIVE_SIZE = 416
SEG_SIZE = 256


def _grid(size: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Cell offsets and strides for every output row, strides 8, 16, 32 in order."""
    offs, strides = [], []
    for s in STRIDES:
        n = size // s
        gy, gx = np.mgrid[0:n, 0:n]
        offs.append(np.stack([gx.ravel(), gy.ravel()], axis=1))
        strides.append(np.full(n * n, s))
    return np.concatenate(offs).astype(np.float32), np.concatenate(strides).astype(np.float32)[:, None]


class YoloxOptions(PluginOptions):
    """`detector.yolox`: keys of the YOLOX plugin."""

    # Person silhouettes from selfie segmentation on each person crop (else boxes); needs the
    # manifest's optional `segmenter` file.
    silhouettes: bool = False


class YoloX(Detector[YoloxOptions]):
    @classmethod
    def optional_roles(cls, cfg: DetectorSettings, options: YoloxOptions) -> set[str]:
        return super().optional_roles(cfg, options) | ({"segmenter"} if options.silhouettes else set())

    def _load(self, files: Mapping[str, Path]) -> None:
        cfg, name, target = self.cfg, self.model_name, self.target
        self.size = cfg.input_size or (self.native_size[0] if self.native_size else NATIVE_SIZE)
        if self.size % 32:
            raise ConfigError([f"detector.input_size: {name} needs a multiple of 32, not {self.size}"])
        try:
            self.net = cv2.dnn.readNetFromONNX(str(files["weights"]))
            self.seg = cv2.dnn.readNetFromTFLite(str(files["segmenter"])) if self.options.silhouettes else None
        except cv2.error as exc:
            raise SetupError(f"cannot load {name}: {str(exc).strip().splitlines()[-1]}") from exc
        dnn_target.apply(self.net, target)
        if self.seg is not None:
            dnn_target.apply(self.seg, target)
        self.has_masks = self.seg is not None
        self._grids: dict[int, tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]] = {}

    def _input(self, w: int, h: int) -> int:
        """The square the frame is fitted into: the configured size, but a smaller frame is not
        scaled up (that invents no detail, only false positives), to a multiple of 32."""
        return min(self.size, max(32, -(-max(w, h) // 32) * 32))

    def _detect(self, image: Image, confidence: float) -> Detections:
        h, w = image.shape[:2]
        size = self._input(w, h)
        if size not in self._grids:
            self._grids[size] = _grid(size)
        offsets, strides = self._grids[size]
        r = min(size / w, size / h, 1.0)
        nw, nh = max(1, round(w * r)), max(1, round(h * r))
        canvas = np.full((size, size, 3), 114, np.uint8)
        canvas[:nh, :nw] = image[:, :, :3] if r == 1.0 else cv2.resize(image[:, :, :3], (nw, nh))
        self.net.setInput(cv2.dnn.blobFromImage(canvas))
        out = self.net.forward()[0]
        scores_all = out[:, 4:5] * out[:, 5:]
        scores_all = scores_all[:, self.class_ids]
        best = scores_all.argmax(axis=1)
        score = scores_all[np.arange(len(best)), best]
        keep = np.flatnonzero(score >= confidence)
        if len(keep) == 0:
            return Detections.empty((w, h))
        o = out[keep]
        centre = (o[:, :2] + offsets[keep]) * strides[keep]
        half = np.exp(np.clip(o[:, 2:4], -10, 10)) * strides[keep] / 2
        xyxy = np.concatenate([centre - half, centre + half], axis=1) / r
        cls = self.class_ids[best[keep]]
        xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)
        picked = cv2.dnn.NMSBoxesBatched(xywh.tolist(), score[keep].tolist(), cls.tolist(), confidence, self.cfg.nms)
        idx = np.asarray(picked, np.int64).reshape(-1)
        boxes = clip_boxes(xyxy[idx], w, h)
        names = tuple(self.labels[c] for c in cls[idx])
        masks = None
        if self.seg is not None:
            masks = tuple(
                self._silhouette(image, b) if n == "person" else _full(b) for b, n in zip(boxes, names, strict=True)
            )
        return Detections(boxes, score[keep][idx].astype(np.float32), names, masks, (w, h))

    def _silhouette(self, image: Image, box: npt.NDArray[np.int32]) -> npt.NDArray[np.bool_]:
        """Person pixels inside `box`, from selfie segmentation on a square crop around it."""
        assert self.seg is not None
        h, w = image.shape[:2]
        x0, y0, x1, y1 = (int(v) for v in box)
        if x1 <= x0 or y1 <= y0:
            return np.zeros((y1 - y0, x1 - x0), np.bool_)
        side = max(1.2 * (x1 - x0), 1.1 * (y1 - y0))
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        cx0, cy0 = max(0, int(cx - side / 2)), max(0, int(cy - side / 2))
        cx1, cy1 = min(w, int(cx + side / 2) + 1), min(h, int(cy + side / 2) + 1)
        crop = image[cy0:cy1, cx0:cx1, :3]
        self.seg.setInput(cv2.dnn.blobFromImage(crop, 1 / 255.0, (SEG_SIZE, SEG_SIZE), swapRB=True))
        prob = self.seg.forward().reshape(SEG_SIZE, SEG_SIZE)
        full = cv2.resize(prob, (cx1 - cx0, cy1 - cy0), interpolation=cv2.INTER_LINEAR) > 0.5
        return np.ascontiguousarray(full[y0 - cy0 : y1 - cy0, x0 - cx0 : x1 - cx0])


def _full(box: npt.NDArray[np.int32]) -> npt.NDArray[np.bool_]:
    return np.ones((int(box[3] - box[1]), int(box[2] - box[0])), np.bool_)


PLUGIN = register("yolox", YoloxOptions, YoloX)
