"""The one data type passed from a detector to the protection stage."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Detections:
    """Instances found in one frame.

    ``boxes`` are integer pixel rectangles ``x0, y0, x1, y1`` (end-exclusive),
    already clipped to the frame. ``masks``, when the model gives them, hold one
    boolean array per instance with the shape of its box.
    """

    boxes: npt.NDArray[np.int32]
    scores: npt.NDArray[np.float32]
    classes: tuple[str, ...]
    masks: tuple[BoolArray, ...] | None = None
    frame_size: tuple[int, int] = field(default=(0, 0))  # (width, height)

    def __post_init__(self) -> None:
        n = len(self.classes)
        if self.boxes.shape != (n, 4) or self.scores.shape != (n,):
            raise ValueError(
                f"inconsistent detections: boxes {self.boxes.shape}, scores {self.scores.shape}, {n} classes"
            )
        if self.masks is not None:
            if len(self.masks) != n:
                raise ValueError(f"{len(self.masks)} masks for {n} instances")
            for box, mask in zip(self.boxes, self.masks, strict=True):
                x0, y0, x1, y1 = (int(v) for v in box)
                if mask.shape != (y1 - y0, x1 - x0):
                    raise ValueError(f"mask {mask.shape} does not fit box {tuple(box)}")

    def __len__(self) -> int:
        return len(self.classes)

    @classmethod
    def empty(cls, frame_size: tuple[int, int]) -> Detections:
        return cls(np.zeros((0, 4), np.int32), np.zeros((0,), np.float32), (), None, frame_size)

    def subset(self, keep: list[int]) -> Detections:
        """The instances at `keep`, in that order."""
        masks = None if self.masks is None else tuple(self.masks[i] for i in keep)
        return Detections(
            self.boxes[keep], self.scores[keep], tuple(self.classes[i] for i in keep), masks, self.frame_size
        )

    def mirrored(self) -> Detections:
        """The same instances in the left-right mirrored frame."""
        w = self.frame_size[0]
        boxes = self.boxes.copy()
        boxes[:, 0], boxes[:, 2] = w - self.boxes[:, 2], w - self.boxes[:, 0]
        masks = None if self.masks is None else tuple(np.ascontiguousarray(m[:, ::-1]) for m in self.masks)
        return Detections(boxes, self.scores, self.classes, masks, self.frame_size)

    def merged(self, other: Detections) -> Detections:
        """Both sets together. If only one side has masks, the other's instances get
        masks filling their whole box, so nothing of them is hidden less."""
        masks = None
        if self.masks is not None and other.masks is not None:
            masks = self.masks + other.masks
        elif self.masks is not None or other.masks is not None:
            masks = tuple(
                m if m is not None else np.ones((int(b[3] - b[1]), int(b[2] - b[0])), np.bool_)
                for d in (self, other)
                for b, m in zip(d.boxes, d.masks or (None,) * len(d), strict=True)
            )
        return Detections(
            np.concatenate([self.boxes, other.boxes]).astype(np.int32),
            np.concatenate([self.scores, other.scores]).astype(np.float32),
            self.classes + other.classes,
            masks,
            self.frame_size,
        )


def clip_boxes(xyxy: npt.NDArray[np.floating], width: int, height: int) -> npt.NDArray[np.int32]:
    """Round outward to whole pixels and clip, so a box never shrinks."""
    out = np.empty((len(xyxy), 4), np.int32)
    if len(xyxy) == 0:
        return out
    out[:, 0] = np.clip(np.floor(xyxy[:, 0]), 0, width)
    out[:, 1] = np.clip(np.floor(xyxy[:, 1]), 0, height)
    out[:, 2] = np.clip(np.ceil(xyxy[:, 2]), 0, width)
    out[:, 3] = np.clip(np.ceil(xyxy[:, 3]), 0, height)
    out[:, 2] = np.maximum(out[:, 2], out[:, 0])
    out[:, 3] = np.maximum(out[:, 3], out[:, 1])
    return out
