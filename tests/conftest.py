"""Shared fixtures: the real models and media from ../shared, never copies in the repo."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGEGUARD_SHARED", REPO.parent / "shared")).resolve()
CANDIDATES = SHARED / "models" / "candidates"
MEDIA = SHARED / "media"
PBTXT = SHARED / "models" / "mask_rcnn_inception_v2_coco_2018_01_28.pbtxt"
COCO90 = SHARED / "models" / "object_detection_classes_coco.txt"


def need(path: Path) -> Path:
    """`path`, or skip loudly when the shared file is truly absent."""
    if not path.exists():
        pytest.skip(f"SKIPPED FOR MISSING SHARED FILE: {path} (set EDGEGUARD_SHARED to the shared folder)")
    return path


def media(name: str) -> Path:
    return need(MEDIA / name)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder provisioned the way users do it offline: `models fetch --from`."""
    from edgeguard import models

    need(CANDIDATES / "yolox_nano.onnx")
    root = tmp_path_factory.mktemp("models")
    manifest = models.find_manifest("yolox_nano", [models.builtin_manifest_dir()])
    models.fetch(manifest, root, source=CANDIDATES)
    return root


@pytest.fixture(scope="session")
def standin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Mask R-CNN files: OpenCV's real text graph and labels, stand-in weights of the real shapes."""
    from tests.support.maskrcnn_standin import ensure_standin

    need(PBTXT)
    root = tmp_path_factory.mktemp("maskrcnn")
    ensure_standin(PBTXT, root)
    shutil.copy(PBTXT, root / PBTXT.name)
    shutil.copy(need(COCO90), root / COCO90.name)
    return root


@pytest.fixture
def yolox_env(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGEGUARD_MODELS_DIR", str(models_dir))
    return models_dir


def standin_overrides(root: Path) -> list[str]:
    """`--set` items that point the default model at the stand-in files."""
    return [
        f"detector.files.weights={root / 'frozen_inference_graph.pb'}",
        f"detector.files.graph={root / PBTXT.name}",
        f"detector.files.labels={root / COCO90.name}",
    ]


@pytest.fixture(autouse=True)
def no_thread_leak() -> Iterator[None]:
    """Fail a test that leaves a non-daemon thread running (as watchdog's own suite does)."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon]
    assert not leaked, f"threads leaked: {leaked}"


@pytest.fixture(scope="session")
def age() -> str:
    """Debian's `age`, which opens sealed originals as a reviewer without edgeguard would."""
    exe = shutil.which("age")
    if exe is None:
        pytest.fail("Debian's age is not installed (make deps installs it)")
    return exe
