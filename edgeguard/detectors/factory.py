"""The factory: the configured detector plugin, built on a target that runs here.

A new detector is one module: its options model, its `Detector` subclass, and a
`register()` call (see `registry`); nothing here changes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2

from edgeguard import dnn_target, models
from edgeguard.config import Config
from edgeguard.detectors.base import FACE, Detector, DetectorSpec, check_classes, read_labels
from edgeguard.detectors.registry import plugin
from edgeguard.errors import ConfigError

log = logging.getLogger(__name__)


def manifest_dirs(cfg: Config) -> list[Path]:
    return [*cfg.models.manifests, models.builtin_manifest_dir()]


def model_files(cfg: Config) -> tuple[models.Manifest, dict[str, Path]]:
    """The manifest and the file of every role, checked (checksums unless given explicitly)."""
    manifest = models.find_manifest(cfg.detector.model, manifest_dirs(cfg))
    chosen = plugin(manifest.backend)
    wanted = chosen.detector.optional_roles(cfg.detector, cfg.detector.options(chosen.type_key, chosen.options))
    explicit = {k: v for k, v in cfg.detector.files.model_dump().items() if v is not None}
    roles = [r for r, f in manifest.files.items() if (not f.optional or r in wanted) and r not in explicit]
    files = models.resolve(manifest, cfg.models_dir(), roles=roles) if roles else {}
    for role, path in explicit.items():
        if not Path(path).is_file():
            raise ConfigError([f"detector.files.{role}: {path} is not a file"])
        files[role] = Path(path)
    return manifest, files


def _inputs(cfg: Config) -> tuple[object, ...]:
    """Every setting `create_detector` reads: a detector serves any config that agrees on them."""
    return cfg.detector, cfg.models, cfg.temporal.keyframe_confidence, cfg.models_dir()


def create_detector(cfg: Config) -> Detector[Any]:
    """Load the configured model on a target that really runs here."""
    if cfg.detector.threads:
        cv2.setNumThreads(cfg.detector.threads)
    manifest, files = model_files(cfg)
    chosen = plugin(manifest.backend)
    target = dnn_target.choose(cfg.detector.target, cfg.detector.on_unavailable)
    spec = DetectorSpec(
        cfg.detector, files, target, manifest.name, manifest.input_size, cfg.temporal.keyframe_confidence
    )
    detector = chosen.detector(spec, cfg.detector.options(chosen.type_key, chosen.options))
    detector.built_from = _inputs(cfg)
    # Hashed as loaded: an audit record names the weights that did the work, even if the file changes later.
    detector.weights = {role: models.digest(path) for role, path in sorted(files.items())}
    log.info("loaded model %s (%s) on %s", manifest.name, manifest.backend, target)
    return detector


def reusable(detector: Detector[Any], cfg: Config) -> bool:
    """Whether `detector` is what `create_detector(cfg)` would build (a reload may keep it)."""
    return detector.built_from == _inputs(cfg)


def check(cfg: Config) -> list[str]:
    """Check the model and classes against the manifests without loading anything heavy.

    ConfigError on a problem; returns notes on what could not be checked here.
    """
    manifest = models.find_manifest(cfg.detector.model, manifest_dirs(cfg))
    plugin(manifest.backend)
    explicit = cfg.detector.files.labels
    if explicit is not None and not explicit.is_file():
        raise ConfigError([f"detector.files.labels: {explicit} is not a file"])
    if explicit is not None:
        labels: Path | None = explicit
    elif manifest.labels is not None:
        labels = models.file_path(manifest, manifest.labels, cfg.models_dir())
    else:
        labels = None
    has_faces = "faces" in manifest.files
    if labels is None or not labels.is_file():
        check_classes([c for c in cfg.detector.classes if c == FACE], [], manifest.name, has_faces=has_faces)
        return [
            f"detector.classes not checked: the labels of {manifest.name} are not here yet "
            f"(edgeguard models fetch {manifest.name})"
        ]
    check_classes(cfg.detector.classes, read_labels(labels), manifest.name, has_faces=has_faces)
    return []
