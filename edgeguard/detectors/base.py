"""The detector interface every backend plugin implements."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Generic, TypeVar

import cv2
import numpy as np

from edgeguard import dnn_target
from edgeguard.detections import Detections, clip_boxes
from edgeguard.errors import ConfigError, SetupError
from edgeguard.frames import Image
from edgeguard.settings import DetectorSettings, PluginOptions

log = logging.getLogger(__name__)


# Darknet-style label files spell some COCO classes differently; configs use COCO's names.
COCO_ALIASES = {
    "motorbike": "motorcycle",
    "aeroplane": "airplane",
    "sofa": "couch",
    "pottedplant": "potted plant",
    "diningtable": "dining table",
    "tvmonitor": "tv",
}
FACE = "face"
PERSON = "person"


def read_labels(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SetupError(f"cannot read labels {path}: {exc.strerror or exc}") from exc
    return [COCO_ALIASES.get(s.strip(), s.strip()) for s in lines if s.strip()]


OptionsT = TypeVar("OptionsT", bound=PluginOptions)


@dataclass(frozen=True)
class DetectorSpec:
    """Everything a plugin is built from, read once by the factory."""

    cfg: DetectorSettings  # the keys every plugin reads
    files: Mapping[str, Path]  # role -> verified file
    target: str  # a DNN target that runs here
    name: str  # the model's name
    native_size: tuple[int, int] | None = None  # the manifest's input size
    score_floor: float | None = None  # the lowest score a caller may ask for (keyframes)


def check_classes(classes: Iterable[str], labels: Iterable[str], name: str, *, has_faces: bool) -> None:
    """ConfigError unless every class is one of the model's labels (or `face`, with a face model)."""
    wanted = set(classes)
    if FACE in wanted and not has_faces:
        raise ConfigError([f"detector.classes: {FACE!r} needs a face model, which {name} does not provide"])
    unknown = sorted(wanted - {FACE} - set(labels))
    if unknown:
        raise ConfigError([f"detector.classes: {', '.join(map(repr, unknown))} not a class of {name}"])


class Detector(ABC, Generic[OptionsT]):
    """Finds instances of the configured classes in a BGR frame.

    A plugin subclasses it with its own options model (`Detector[MyOptions]`), reads
    them as `self.options`, and registers both with `registry.register`.
    """

    #: the model gives per-instance masks (else protection falls back to boxes)
    has_masks: bool = False
    #: the caller uses masks; a model may skip computing them when False
    want_masks: bool = True
    #: `temporal.keyframe_mirror: auto` looks at mirrored keyframes too (for small models whose
    #: detections flicker from frame to frame; cheap for them)
    mirror_keyframes: bool = False
    #: the settings the factory built it from (see `factory.reusable`)
    built_from: tuple[object, ...] = ()
    #: sha256 of each model file as loaded, by role (for audit records)
    weights: Mapping[str, str] = MappingProxyType({})

    def __init__(self, spec: DetectorSpec, options: OptionsT) -> None:
        cfg, name = spec.cfg, spec.name
        self.cfg = cfg
        self.options = options
        self.native_size = spec.native_size
        floor = spec.score_floor
        # The lowest score any caller may ask for (keyframes look harder than cfg.confidence).
        self.score_floor = min(cfg.confidence, floor if floor is not None else cfg.confidence)
        self.target = spec.target
        self.model_name = name
        files = spec.files
        self.labels = read_labels(files["labels"])
        self.faces: FaceDetector | None = None
        check_classes(cfg.classes, self.labels, name, has_faces="faces" in files)
        wanted = set(cfg.classes)
        # Face mode: persons are found too, followed between keyframes, and their heads hidden.
        self.heads = FACE in wanted and cfg.heads and PERSON in self.labels and PERSON not in wanted
        if FACE in wanted:
            self.faces = FaceDetector(files["faces"], cfg.confidence, spec.target)
            wanted.discard(FACE)
        if self.heads:
            wanted.add(PERSON)
        self.class_ids = np.array([i for i, c in enumerate(self.labels) if c in wanted], np.int64)
        self._load(files)

    @classmethod
    def optional_roles(cls, cfg: DetectorSettings, options: OptionsT) -> set[str]:
        """The optional manifest files this configuration needs (faces for the class `face`)."""
        return {"faces"} if FACE in cfg.classes else set()

    @abstractmethod
    def _load(self, files: Mapping[str, Path]) -> None:
        """Read the model files and place the network on `self.target`."""

    @abstractmethod
    def _detect(self, image: Image, confidence: float) -> Detections:
        """Instances of the wanted model classes scoring at least `confidence` (faces are added by `detect`)."""

    def detect(self, image: Image, confidence: float | None = None, *, mirror: bool = False) -> Detections:
        """Instances in `image`; `confidence` (not below score_floor) overrides detector.confidence.

        `mirror` also detects on the mirrored frame and adds what only that finds.
        """
        conf = self.cfg.confidence if confidence is None else max(confidence, self.score_floor)
        found = self._detect(image, conf) if len(self.class_ids) else Detections.empty(_size(image))
        if mirror and len(self.class_ids):
            found = found.merged(self._detect(np.ascontiguousarray(image[:, ::-1]), conf).mirrored())
        if self.faces is not None:
            found = found.merged(self.faces.detect(image))
        return found


def _size(image: Image) -> tuple[int, int]:
    return int(image.shape[1]), int(image.shape[0])


class FaceDetector:
    """YuNet faces as the extra class ``face`` (boxes grown to cover hair and chin)."""

    def __init__(self, path: Path, confidence: float, target: str) -> None:
        backend, tgt = dnn_target.TARGETS[target]
        self._yunet = cv2.FaceDetectorYN.create(str(path), "", (320, 320), confidence, 0.3, 5000, backend, tgt)
        self._size = (320, 320)

    def detect(self, image: Image) -> Detections:
        h, w = image.shape[:2]
        if self._size != (w, h):
            self._yunet.setInputSize((w, h))
            self._size = (w, h)
        _, faces = self._yunet.detect(np.ascontiguousarray(image[:, :, :3]))
        if faces is None or len(faces) == 0:
            return Detections.empty((w, h))
        x, y, fw, fh = (faces[:, i] for i in range(4))
        # YuNet boxes are tight on the face; grow by a quarter so ears, hair and chin are hidden too.
        xyxy = np.stack([x - 0.25 * fw, y - 0.35 * fh, x + 1.25 * fw, y + 1.2 * fh], axis=1)
        return Detections(clip_boxes(xyxy, w, h), faces[:, 14].astype(np.float32), (FACE,) * len(faces), None, (w, h))
