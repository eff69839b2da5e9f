"""Detector plugins by type key, and the factory that builds the configured one."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import cv2

from edgeguard import dnn_target, models
from edgeguard.config import Config
from edgeguard.detectors.base import Detector
from edgeguard.errors import ConfigError

log = logging.getLogger(__name__)

# type key -> module; modules import lazily so a broken optional backend only hurts its users.
PLUGINS = {"maskrcnn": "edgeguard.detectors.maskrcnn", "yolox": "edgeguard.detectors.yolox"}


def plugin(type_key: str) -> type[Detector]:
    try:
        module = importlib.import_module(PLUGINS[type_key])
    except KeyError:
        raise ConfigError([f"model backend {type_key!r} is not one of {sorted(PLUGINS)}"]) from None
    cls: type[Detector] = module.DETECTOR
    return cls


def manifest_dirs(cfg: Config) -> list[Path]:
    return [*cfg.models.manifests, models.builtin_manifest_dir()]


def model_files(cfg: Config) -> tuple[models.Manifest, dict[str, Path]]:
    """The manifest and the file of every role, checked (checksums unless given explicitly)."""
    manifest = models.find_manifest(cfg.detector.model, manifest_dirs(cfg))
    explicit = {k: v for k, v in cfg.detector.files.model_dump().items() if v is not None}
    roles = [r for r, f in manifest.files.items() if (not f.optional or _wanted(cfg, r)) and r not in explicit]
    files = models.resolve(manifest, cfg.models_dir(), roles=roles) if roles else {}
    for role, path in explicit.items():
        if not Path(path).is_file():
            raise ConfigError([f"detector.files.{role}: {path} is not a file"])
        files[role] = Path(path)
    return manifest, files


def _wanted(cfg: Config, role: str) -> bool:
    return (role == "faces" and "face" in cfg.detector.classes) or (role == "segmenter" and cfg.detector.silhouettes)


def create_detector(cfg: Config) -> Detector:
    """Load the configured model on a target that really runs here."""
    if cfg.detector.threads:
        cv2.setNumThreads(cfg.detector.threads)
    manifest, files = model_files(cfg)
    target = dnn_target.choose(cfg.detector.target, cfg.detector.on_unavailable)
    detector = plugin(manifest.backend)(
        cfg.detector, files, target, manifest.name, manifest.input_size, cfg.temporal.keyframe_confidence
    )
    log.info("loaded model %s (%s) on %s", manifest.name, manifest.backend, target)
    return detector
