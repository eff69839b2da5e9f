"""The package's shape, as the code states it: one place per stage, plugins that carry their own config."""

from __future__ import annotations

import ast
from pathlib import Path

from edgeguard.detectors import registry
from edgeguard.detectors.base import Detector
from edgeguard.settings import PluginOptions
from tests.conftest import REPO

PACKAGE = REPO / "edgeguard"


def imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth of its code (lazy imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_the_daemon_imports_no_detector_module() -> None:
    """The daemon sees the model only through the engine (`Engine.model_name`, `with_config`)."""
    for path in sorted((PACKAGE / "daemon").glob("*.py")):
        bad = sorted(m for m in imports(path) if m.startswith("edgeguard.detectors"))
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"
        assert ".detector." not in path.read_text(encoding="utf-8"), f"{path.name} reaches into the engine's detector"


def test_every_detector_plugin_module_carries_its_own_config_model() -> None:
    plugins = registry.plugins()
    assert {"maskrcnn", "yolox"} <= plugins.keys()
    modules = {p.detector.__module__ for p in plugins.values()}
    for key, plugin in plugins.items():
        assert issubclass(plugin.options, PluginOptions) and plugin.options is not PluginOptions, key
        assert issubclass(plugin.detector, Detector), key
        # Declared beside the class, not in the shared config tree.
        assert plugin.options.__module__ == plugin.detector.__module__, key
    shipped = {
        f"edgeguard.detectors.{p.stem}"
        for p in (PACKAGE / "detectors").glob("*.py")
        if p.stem not in {"__init__", "base", "registry", "factory"}
    }
    assert shipped <= modules, f"plugin modules that register nothing: {sorted(shipped - modules)}"


def test_plugin_keys_are_not_keys_of_the_shared_detector_section() -> None:
    from edgeguard.config import DetectorConfig

    for key, plugin in registry.plugins().items():
        shared = set(DetectorConfig.model_fields) & set(plugin.options.model_fields)
        assert not shared, f"detector.{key} repeats shared keys {sorted(shared)}"


def test_the_partial_marker_and_output_names_live_in_publish_alone() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "publish.py":
            continue
        text = path.read_text(encoding="utf-8")
        assert '".partial' not in text, f"{path.relative_to(REPO)} spells the staging marker"
        assert "folders.output" not in text or path.name == "service.py", (
            f"{path.relative_to(REPO)} reaches for the output folder; go through the sink"
        )
