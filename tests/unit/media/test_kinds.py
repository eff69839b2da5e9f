"""One list of media extensions: what `edgeguard protect` handles, the daemon watches for."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path, PurePath

import pytest

from edgeguard.config import WatchConfig
from edgeguard.daemon.watcher import Arrivals
from edgeguard.media import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, media_kind
from edgeguard.media.kinds import IMAGE_EXTENSIONS as KINDS_IMAGE_EXTENSIONS
from edgeguard.media.kinds import VIDEO_EXTENSIONS as KINDS_VIDEO_EXTENSIONS

MEDIA_EXTENSIONS = sorted(VIDEO_EXTENSIONS | IMAGE_EXTENSIONS)


def spellings(ext: str) -> list[str]:
    """Names a camera or a user might give a file with extension `ext`."""
    return [f"clip{ext}", f"CLIP{ext.upper()}", f"Clip{ext[:2].upper()}{ext[2:]}"]


@pytest.fixture
def default_arrivals(tmp_path: Path) -> Arrivals:
    # Only `wanted` is used: the observer is never started.
    return Arrivals(tmp_path, WatchConfig())


def test_the_package_exports_the_lists_of_kinds() -> None:
    assert VIDEO_EXTENSIONS is KINDS_VIDEO_EXTENSIONS
    assert IMAGE_EXTENSIONS is KINDS_IMAGE_EXTENSIONS
    assert not VIDEO_EXTENSIONS & IMAGE_EXTENSIONS
    assert all(ext.startswith(".") and ext == ext.lower() for ext in MEDIA_EXTENSIONS)


@pytest.mark.parametrize("ext", MEDIA_EXTENSIONS)
def test_the_default_watch_patterns_take_every_media_extension(default_arrivals: Arrivals, ext: str) -> None:
    for name in spellings(ext):
        assert default_arrivals.wanted(name), f"the daemon would never take {name}"


def test_the_default_watch_patterns_take_nothing_protect_refuses(default_arrivals: Arrivals) -> None:
    for pattern in WatchConfig().patterns:
        assert pattern.startswith("*."), pattern
        name = f"clip{pattern[1:]}"
        assert default_arrivals.wanted(name)
        assert media_kind(PurePath(name)) is not None, f"{pattern} claims files protect cannot handle"


def test_the_default_watch_patterns_still_skip_other_files(default_arrivals: Arrivals) -> None:
    for name in ("notes.txt", "clip.mp4.part", ".clip.mp4", "clip.mp4~", "mp4", "clip.tiff"):
        assert not default_arrivals.wanted(name), name


@pytest.mark.parametrize("ext", sorted(VIDEO_EXTENSIONS))
def test_media_kind_knows_videos_in_any_case(ext: str) -> None:
    for name in spellings(ext):
        assert media_kind(Path(name)) == "video", name


@pytest.mark.parametrize("ext", sorted(IMAGE_EXTENSIONS))
def test_media_kind_knows_images_in_any_case(ext: str) -> None:
    for name in spellings(ext):
        assert media_kind(Path(name)) == "image", name


@pytest.mark.parametrize("name", ["notes.txt", "clip.mp4.part", "README", ".mp4", "clip.", "photo.tiff"])
def test_media_kind_refuses_other_names(name: str) -> None:
    assert media_kind(Path(name)) is None


@pytest.mark.parametrize("module", ["edgeguard.media.kinds"])
def test_importing_the_kinds_loads_no_decoder(module: str) -> None:
    """A fresh interpreter: this test process has long imported PyAV and OpenCV."""
    code = f"import {module}, sys; print('av' in sys.modules, 'cv2' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.split() == ["False", "False"], f"{module} imports av or cv2: {result.stdout}"
