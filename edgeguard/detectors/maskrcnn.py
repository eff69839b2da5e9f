"""Mask R-CNN (TF Object Detection API export) through cv2.dnn's TensorFlow importer."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated

import cv2
import numpy as np
from pydantic import Field

from edgeguard import dnn_target
from edgeguard.detections import Detections, clip_boxes
from edgeguard.detectors.base import Detector
from edgeguard.detectors.registry import register
from edgeguard.errors import SetupError
from edgeguard.frames import Image
from edgeguard.settings import PluginOptions

log = logging.getLogger(__name__)

OUTPUTS = ["detection_out_final", "detection_masks"]
# Second-stage row counts tried before detector.maskrcnn.max_detections (see RowLadder).
RUNGS = (16, 32, 48, 64)
# Keyframes in a row that would fit the lower rung with room before stepping down to it.
CALM = 3


def _node(text: str, name: str) -> tuple[int, int]:
    start = text.find(f'name: "{name}"')
    end = text.find("\nnode {", start)
    if start < 0 or end < 0:
        raise SetupError(f"the Mask R-CNN text graph has no {name} node")
    return start, end


def tune_graph(text: str, *, keep_top_k: int, confidence: float) -> str:
    """Set the second stage's detection cap and score floor in OpenCV's text graph.

    OpenCV runs the mask branch on every one of `keep_top_k` rows, padding
    included, so the cap is the main lever on mask cost.
    """
    start, end = _node(text, "detection_out_final")
    block = text[start:end]
    block, n_top = re.subn(r'(key: "keep_top_k"\s*value \{\s*i: )\d+', rf"\g<1>{keep_top_k}", block)
    block, n_conf = re.subn(
        r'(key: "confidence_threshold"\s*value \{\s*f: )[0-9.e-]+', rf"\g<1>{confidence:.6f}", block
    )
    if n_top != 1 or n_conf != 1:
        raise SetupError("the Mask R-CNN text graph's detection_out_final lacks keep_top_k/confidence_threshold")
    return text[:start] + block + text[end:]


SCORES = "SecondStageBoxPredictor/Reshape_1/Reshape"  # flattened per-proposal class scores


def gate_classes(text: str, keep: Iterable[int]) -> str | None:
    """Zero the second stage's scores of classes not in `keep` before detection_out_final.

    `keep` holds label-file line numbers, as the output rows count classes. The
    other classes then take no row and no mask work. None when the graph is not
    wired as OpenCV's Mask R-CNN text graphs are (the gate is only a saving).
    """
    try:
        start, end = _node(text, "detection_out")  # the first stage: how many proposals reach the second
        final, final_end = _node(text, "detection_out_final")
    except SetupError:
        return None
    proposals = re.search(r'key: "keep_top_k"\s*value \{\s*i: (\d+)', text[start:end])
    classes = re.search(r'key: "num_classes"\s*value \{\s*i: (\d+)', text[final:final_end])
    wired = f'  input: "{SCORES}"\n'
    if proposals is None or classes is None or text[final:final_end].count(wired) != 1:
        return None
    num_classes = int(classes.group(1))
    keep = [c for c in keep if 0 <= c < num_classes]
    gate = np.zeros(num_classes, np.float32)
    gate[keep] = 1
    # The scores are already flat (proposal-major), so the gate is tiled: a 90-wide gate
    # before the reshape makes OpenCV's importer insert a layout permute that breaks.
    values = "".join(f"        float_val: {v:g}\n" for v in np.tile(gate, int(proposals.group(1))))
    nodes = (
        'node {\n  name: "edgeguard/class_gate"\n  op: "Const"\n  attr {\n    key: "value"\n    value {\n'
        f"      tensor {{\n        dtype: DT_FLOAT\n        tensor_shape {{\n          dim {{\n"
        f"            size: {num_classes * int(proposals.group(1))}\n          }}\n        }}\n"
        f"{values}      }}\n    }}\n  }}\n}}\n"
        'node {\n  name: "edgeguard/gated_scores"\n  op: "Mul"\n'
        f'  input: "{SCORES}"\n  input: "edgeguard/class_gate"\n}}\n'
    )
    final_block = text[final:final_end].replace(wired, '  input: "edgeguard/gated_scores"\n')
    head = text.rfind("node {", 0, final)
    return text[:head] + nodes + text[head:final] + final_block + text[final_end:]


class RowLadder:
    """How many second-stage rows to run: enough for the scene, never a clipped answer.

    The layer keeps the top `rows` of everything above its floor, so an answer
    with a row to spare is exactly what `ceiling` rows would give; a full one is
    retried a rung up. It steps down after CALM calls that fit the lower rung
    with a quarter to spare, so a crowd hovering at a rung does not thrash.
    """

    def __init__(self, ceiling: int, rungs: Iterable[int] = RUNGS) -> None:
        self.rungs = sorted({r for r in rungs if r < ceiling} | {ceiling})
        self.index = 0
        self.calm = 0

    @property
    def rows(self) -> int:
        return self.rungs[self.index]

    def retry(self, used: int) -> bool:
        """After a call that filled `used` rows: climb and return True if it may be clipped."""
        if used < self.rows or self.index == len(self.rungs) - 1:
            return False
        self.index += 1
        self.calm = 0
        return True

    def settle(self, used: int) -> None:
        """After an exact answer: step down once the lower rung has held it with room CALM times."""
        if self.index and 4 * used <= 3 * self.rungs[self.index - 1]:
            self.calm += 1
            if self.calm >= CALM:
                self.index -= 1
                self.calm = 0
        else:
            self.calm = 0


class MaskRcnnOptions(PluginOptions):
    """`detector.maskrcnn`: keys of the Mask R-CNN plugin."""

    # Mask probability above which a pixel belongs to the instance.
    mask_threshold: Annotated[float, Field(ge=0, le=1)] = 0.35
    # Second-stage detections kept (OpenCV pads to this many); fewer = faster masks.
    max_detections: Annotated[int, Field(ge=1, le=100)] = 100
    # Run the second stage with as few rows as the scene fills (16, 32, 48, 64, then
    # max_detections), retrying a rung up whenever all rows are used: same answer, less mask work.
    adaptive_rows: bool = True


class MaskRCNN(Detector[MaskRcnnOptions]):
    def _load(self, files: Mapping[str, Path]) -> None:
        opts = self.options
        try:
            self._graph = files["graph"].read_text(encoding="utf-8")
            # Kept to build the net at other row counts. Buffers must be uint8 arrays:
            # OpenCV's binding crashes on `bytes` here.
            self._weights = np.fromfile(files["weights"], np.uint8)
        except OSError as exc:
            raise SetupError(f"cannot load {self.model_name} from {files['weights']}: {_first_line(exc)}") from exc
        self._weights_path = files["weights"]
        # The graph's own floor (0.3) would hide detections a lower configured threshold wants.
        self.floor = min(self.score_floor, 0.3)
        self.ladder = RowLadder(opts.max_detections, RUNGS if opts.adaptive_rows else ())
        gated = gate_classes(self._graph, self.class_ids.tolist())
        if gated is None:
            log.warning(
                "%s: the text graph's second stage is not wired as expected; every class takes rows", self.model_name
            )
        else:
            self._graph = gated
        self._nets: dict[int, cv2.dnn.Net] = {}
        self._net(self.ladder.rows)
        self.has_masks = True
        self.wanted = np.zeros(max(len(self.labels), 91), np.bool_)
        self.wanted[self.class_ids] = True

    def _net(self, rows: int) -> cv2.dnn.Net:
        """The network cut at `rows` second-stage rows; only one is kept (each holds ~0.5 GB of buffers)."""
        if rows not in self._nets:
            self._nets.clear()
            try:
                graph = tune_graph(self._graph, keep_top_k=rows, confidence=self.floor)
                net = cv2.dnn.readNetFromTensorflow(self._weights, np.frombuffer(graph.encode(), np.uint8))
            except cv2.error as exc:
                raise SetupError(
                    f"cannot load {self.model_name} from {self._weights_path}: {_first_line(exc)}"
                ) from exc
            dnn_target.apply(net, self.target)
            self._nets[rows] = net
        return self._nets[rows]

    def _forward(self, blob: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        while True:
            net = self._net(self.ladder.rows)
            net.setInput(blob)
            if self.want_masks:
                rows, masks = net.forward(OUTPUTS)
            else:
                # OpenCV computes only what the requested outputs need: no mask branch at all.
                rows, masks = net.forward(OUTPUTS[:1])[0], None
            rows = rows.reshape(-1, 7)
            used = self._used(rows)
            if not self.ladder.retry(used):
                self.ladder.settle(used)
                return rows, masks

    def _used(self, rows: np.ndarray) -> int:
        """Rows the layer filled (the rest are zero padding)."""
        return int(np.count_nonzero(rows[:, 2] > 0))

    def _detect(self, image: Image, confidence: float) -> Detections:
        h, w = image.shape[:2]
        size = (w, h)
        if self.cfg.input_size and max(w, h) > self.cfg.input_size:
            s = self.cfg.input_size / max(w, h)
            size = (max(32, round(w * s)), max(32, round(h * s)))
        rows, masks = self._forward(cv2.dnn.blobFromImage(image[:, :, :3], 1.0, size, swapRB=True, crop=False))
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
            inst.append(prob > self.options.mask_threshold)
        return Detections(boxes, rows[keep, 2].astype(np.float32), names, tuple(inst), (w, h))


def _first_line(exc: BaseException) -> str:
    lines = [s for s in str(exc).strip().splitlines() if s.strip()]
    return lines[-1] if lines else type(exc).__name__


PLUGIN = register("maskrcnn", MaskRcnnOptions, MaskRCNN)
