"""Privacy figures in both directions: what a profile left visible, and what it hid needlessly.

- **overreach**: pixels the profile hid / pixels the same model's every-frame loop hid
  (1.0 = hides no more than detecting every frame);
- **share**: mean share of the frame hidden;
- **coverage** of the every-frame loop: share of its hidden pixels hidden too, the worst
  single frame, and instances it hid that the profile hid less than half of;
- **recall** against the independent judges (bench/judges.py), on the original frames:
  a judged person or face counts as hidden when at least half of its box is hidden.
  Every miss is kept (frame, kind, box) so a crop of it can be saved and looked at.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from bench.judges import Judged

Bits = npt.NDArray[np.uint8]  # a frame's mask, np.packbits(mask > 0)
BoolMask = npt.NDArray[np.bool_]
FACE_JUDGES = ("centerface", "yunet")


def unpack(bits: Bits, shape: tuple[int, int]) -> BoolMask:
    h, w = shape
    return np.unpackbits(bits, count=h * w).reshape(h, w).astype(bool)


def hidden_share(mask: BoolMask, box: Sequence[float]) -> float:
    """Share of `box` (float pixels, clipped to the frame) that `mask` hides."""
    h, w = mask.shape
    x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x1, y1 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
    if x1 <= x0 or y1 <= y0:
        return 1.0
    return float(mask[y0:y1, x0:x1].mean())


@dataclass(frozen=True)
class Miss:
    frame: int
    kind: str  # "person", "centerface" or "yunet"
    box: tuple[float, float, float, float]
    score: float  # the judge's
    hidden: float  # share of the box that was hidden


@dataclass
class Privacy:
    frames: int = 0
    hidden_px: int = 0
    ref_px: int = 0
    share_sum: float = 0.0
    covered_px: int = 0
    worst: float = 1.0
    under_half: int = 0
    judged: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("person", *FACE_JUDGES), 0))
    misses: list[Miss] = field(default_factory=list)

    @property
    def overreach(self) -> float | None:
        return self.hidden_px / self.ref_px if self.ref_px else None

    @property
    def share(self) -> float:
        return self.share_sum / self.frames if self.frames else 0.0

    @property
    def coverage(self) -> float:
        return self.covered_px / self.ref_px if self.ref_px else 1.0

    def missed(self, kind: str) -> int:
        return sum(m.kind == kind for m in self.misses)

    def recall(self, kind: str) -> float | None:
        n = self.judged[kind]
        return (n - self.missed(kind)) / n if n else None


def measure(
    masks: Sequence[Bits],
    shape: tuple[int, int],
    judged: Sequence[Judged],
    ref_masks: Sequence[Bits] | None = None,
    ref_boxes: Sequence[npt.NDArray[np.int32]] | None = None,
) -> Privacy:
    """Both directions for one run: `masks` per frame, against the every-frame loop's (`ref_*`) and the judges."""
    p = Privacy()
    for i, bits in enumerate(masks):
        mask = unpack(bits, shape)
        n = int(mask.sum())
        p.frames += 1
        p.hidden_px += n
        p.share_sum += n / mask.size
        if ref_masks is not None:
            ref = unpack(ref_masks[i], shape)
            r = int(ref.sum())
            k = int((ref & mask).sum())
            p.ref_px += r
            p.covered_px += k
            if r:
                p.worst = min(p.worst, k / r)
            if ref_boxes is not None:
                p.under_half += sum(hidden_share(mask, b) < 0.5 for b in ref_boxes[i].tolist())
        j = judged[i]
        for kind, boxes in (("person", j.persons), *((f, j.faces(f)) for f in FACE_JUDGES)):
            p.judged[kind] += len(boxes)
            for b in boxes.tolist():
                s = hidden_share(mask, b)
                if s < 0.5:
                    p.misses.append(Miss(i, kind, (b[0], b[1], b[2], b[3]), b[4], s))
    return p


COLOURS = {"person": (0, 200, 0), "centerface": (0, 200, 255), "yunet": (255, 120, 0)}


def save_misses(
    misses: Sequence[Miss], frames: Sequence[npt.NDArray[np.uint8]], masks: Sequence[Bits], folder: Path
) -> list[Path]:
    """One picture per miss: the original around the judged box | the same with the hidden area tinted red."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.jpg"):
        old.unlink()
    paths = []
    for m in misses:
        image = frames[m.frame]
        h, w = image.shape[:2]
        mask = unpack(masks[m.frame], (h, w))
        x0, y0, x1, y1 = m.box
        pad = max(32.0, 0.5 * max(x1 - x0, y1 - y0))
        cx0, cy0 = max(0, int(x0 - pad)), max(0, int(y0 - pad))
        cx1, cy1 = min(w, int(x1 + pad)), min(h, int(y1 + pad))
        crop = image[cy0:cy1, cx0:cx1, :3].copy()
        tinted = crop.copy()
        hid = mask[cy0:cy1, cx0:cx1]
        tinted[hid] = (0.5 * tinted[hid] + [0, 0, 127]).astype(np.uint8)
        box = (int(x0) - cx0, int(y0) - cy0), (int(np.ceil(x1)) - cx0, int(np.ceil(y1)) - cy0)
        for pic in (crop, tinted):
            cv2.rectangle(pic, box[0], box[1], COLOURS[m.kind], 1)
        pair = np.concatenate([crop, np.full((crop.shape[0], 4, 3), 255, np.uint8), tinted], axis=1)
        if pair.shape[0] < 160:  # small misses are shown larger
            f = 160 / pair.shape[0]
            pair = cv2.resize(pair, None, fx=f, fy=f, interpolation=cv2.INTER_NEAREST)
        path = (
            folder
            / f"f{m.frame:03d}-{m.kind}-{int(x0)}x{int(y0)}-s{round(100 * m.score)}-hid{round(100 * m.hidden)}.jpg"
        )
        cv2.imwrite(str(path), pair, [cv2.IMWRITE_JPEG_QUALITY, 85])
        paths.append(path)
    return paths


def contact_sheet(paths: Sequence[Path], out: Path, height: int = 160, width: int = 1600) -> None:
    """The miss pictures in rows, each scaled to `height`, labelled with its file name."""
    rows: list[npt.NDArray[np.uint8]] = []
    row: list[npt.NDArray[np.uint8]] = []
    used = 0
    for p in paths:
        pic = cv2.imread(str(p))
        if pic is None:
            continue
        pic = cv2.resize(pic, (max(1, round(pic.shape[1] * height / pic.shape[0])), height))
        label = np.full((16, pic.shape[1], 3), 255, np.uint8)
        cv2.putText(label, p.stem[:40], (2, 12), cv2.FONT_HERSHEY_PLAIN, 0.8, (0, 0, 0), 1)
        pic = np.concatenate([label, pic])
        if used + pic.shape[1] > width and row:
            rows.append(_pad(np.concatenate(row, axis=1), width))
            row, used = [], 0
        row.append(pic[:, :width])
        used += min(width, pic.shape[1])
    if row:
        rows.append(_pad(np.concatenate(row, axis=1), width))
    if rows:
        out.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out), np.concatenate(rows), [cv2.IMWRITE_JPEG_QUALITY, 85])


def _pad(row: npt.NDArray[np.uint8], width: int) -> npt.NDArray[np.uint8]:
    return np.pad(row, ((0, 4), (0, width - row.shape[1]), (0, 0)), constant_values=255)
