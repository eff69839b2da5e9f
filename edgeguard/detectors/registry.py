"""Detector plugins by type key: each declares its key, its own config model and its class.

A plugin module calls `register()` when imported. The built-in ones are imported
on first use, and packages installed with an ``edgeguard.detectors`` entry point
(naming the module that registers) are imported with them; a plugin that fails
to import is logged and left out, so a broken optional backend only hurts the
configs that name it.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any

from edgeguard.errors import ConfigError
from edgeguard.settings import DetectorSettings, PluginOptions

if TYPE_CHECKING:
    from edgeguard.detectors.base import Detector

log = logging.getLogger(__name__)

BUILTIN = ("edgeguard.detectors.maskrcnn", "edgeguard.detectors.yolox")
ENTRY_POINTS = "edgeguard.detectors"


@dataclass(frozen=True)
class Plugin:
    type_key: str  # what a model manifest names as its `backend`
    options: type[PluginOptions]  # its keys, under `detector.<type_key>` in the config
    detector: type[Detector[Any]]


_plugins: dict[str, Plugin] = {}
_loaded = False


def register(type_key: str, options: type[PluginOptions], detector: type[Detector[Any]]) -> Plugin:
    """Make a detector available to manifests whose `backend` is `type_key`."""
    if type_key in DetectorSettings.model_fields:
        raise ValueError(f"detector plugin key {type_key!r} is taken by the key detector.{type_key}")
    found = _plugins.get(type_key)
    if found is not None and (found.options, found.detector) != (options, detector):
        raise ValueError(f"detector plugin {type_key!r} is already registered by {found.detector.__module__}")
    plugin = Plugin(type_key, options, detector)
    _plugins[type_key] = plugin
    return plugin


def unregister(type_key: str) -> None:
    """Forget a plugin (tests that register one of their own)."""
    _plugins.pop(type_key, None)


def _load() -> None:
    global _loaded  # noqa: PLW0603 - import-once state of this registry
    if _loaded:
        return
    for module in BUILTIN:
        try:
            importlib.import_module(module)
        except ImportError as exc:  # its library is missing here: only configs that name it suffer
            log.error("detector plugin %s cannot be loaded: %s", module, exc)
    for entry in metadata.entry_points(group=ENTRY_POINTS):
        try:
            entry.load()
        except Exception as exc:  # noqa: BLE001 - a third-party plugin must not stop edgeguard
            log.error("detector plugin %s (%s) cannot be loaded: %s", entry.name, entry.value, exc)
    _loaded = True


def plugins() -> dict[str, Plugin]:
    _load()
    return dict(_plugins)


def options_models() -> dict[str, type[PluginOptions]]:
    """The config model of every plugin, by the section key it reads."""
    return {key: p.options for key, p in plugins().items()}


def plugin(type_key: str) -> Plugin:
    try:
        return plugins()[type_key]
    except KeyError:
        raise ConfigError([f"model backend {type_key!r} is not one of {sorted(_plugins)}"]) from None
