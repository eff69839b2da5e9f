"""Hiding styles on synthetic frames: exactly the masked pixels change, and a new style is one class."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import pytest

from edgeguard import styles
from edgeguard.config import ProtectConfig
from edgeguard.detections import Detections
from edgeguard.frames import Image, Mask
from edgeguard.masks import rasterize


def box_detections(boxes: list[tuple[int, int, int, int]], w: int, h: int) -> Detections:
    arr = np.array(boxes, np.int32).reshape(-1, 4)
    return Detections(arr, np.full(len(boxes), 0.9, np.float32), ("person",) * len(boxes), None, (w, h))


def hide(image: Image, mask: Mask, cfg: ProtectConfig) -> Image:
    return styles.create(cfg).hide(image, mask)


def noise(h: int, w: int, seed: int = 0) -> Image:
    """Random pixels: any blur or pixelation changes (almost) every one of them."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def changed(a: Image, b: Image) -> npt.NDArray[np.bool_]:
    return np.asarray((a != b).any(axis=2))


@pytest.mark.parametrize("style", ["blur", "pixelate", "fill"])
def test_only_masked_pixels_change(style: str) -> None:
    h, w = 120, 160
    img = noise(h, w)
    det = box_detections([(30, 20, 70, 90), (100, 50, 130, 110)], w, h)
    mask = rasterize(det, w, h, shape="box", dilate=5)
    cfg = ProtectConfig(style=style, color=(10, 200, 30), blur_kernel=15, pixelate_block=8)
    out = hide(img.copy(), mask, cfg)
    diff = changed(img, out)
    assert not diff[mask == 0].any(), "a pixel outside the (dilated) mask was touched"
    # Noise: blurring/pixelating changes nearly every masked pixel (a few may keep their value by chance).
    assert diff[mask > 0].mean() > 0.98
    if style == "fill":
        assert (out[mask > 0] == (30, 200, 10)).all(), "fill colour is RGB in the config, BGR in the frame"


def test_hide_returns_the_same_array_and_an_empty_mask_is_a_no_op() -> None:
    img = noise(40, 50)
    before = img.copy()
    mask = np.zeros((40, 50), np.uint8)
    for style in ("blur", "pixelate", "fill"):
        assert hide(img, mask, ProtectConfig(style=style)) is img
    assert (img == before).all()


def test_blur_really_hides_the_content() -> None:
    # A fine checkerboard is unreadable after a 51-px Gaussian: what remains is near-uniform grey.
    h, w = 200, 200
    yy, xx = np.mgrid[0:h, 0:w]
    board = np.where(((yy // 2) + (xx // 2)) % 2 == 0, 255, 0).astype(np.uint8)
    img = np.repeat(board[:, :, None], 3, axis=2)
    mask = np.zeros((h, w), np.uint8)
    mask[50:150, 50:150] = 255
    out = hide(img.copy(), mask, ProtectConfig(style="blur", blur_kernel=51))
    inner = out[60:140, 60:140].astype(int)
    assert inner.std() < 5
    assert abs(inner.mean() - 127.5) < 10
    assert (out[mask == 0] == img[mask == 0]).all()


def test_pixelate_blocks_are_uniform_and_on_the_frame_grid() -> None:
    h, w, b = 128, 160, 16  # frame size a multiple of the block
    img = noise(h, w)
    mask = np.zeros((h, w), np.uint8)
    mask[21:99, 37:130] = 255
    out = hide(img.copy(), mask, ProtectConfig(style="pixelate", pixelate_block=b))
    checked = 0
    for y in range(0, h, b):
        for x in range(0, w, b):
            if (mask[y : y + b, x : x + b] > 0).all():
                block = out[y : y + b, x : x + b].reshape(-1, 3)
                assert (block == block[0]).all(), f"block at {(x, y)} is not uniform"
                # Each block is the mean of the pixels under it.
                assert np.abs(block[0].astype(int) - img[y : y + b, x : x + b].reshape(-1, 3).mean(0)).max() <= 1
                checked += 1
    assert checked >= 12


def test_pixelate_blocks_stay_on_the_grid_at_the_frame_edge() -> None:
    h, w, b = 100, 100, 16  # 100 is not a multiple of 16: e.g. 640x360 video with the default block
    img = noise(h, w)
    mask = np.zeros((h, w), np.uint8)
    mask[40:, 40:] = 255  # a person touching the bottom-right corner
    out = hide(img.copy(), mask, ProtectConfig(style="pixelate", pixelate_block=b))
    for y in range(48, h, b):
        for x in range(48, w, b):
            block = out[y : y + b, x : x + b].reshape(-1, 3)
            assert (block == block[0]).all(), f"block at {(x, y)} is not uniform"


def test_fill_keeps_alpha_of_bgra_frames() -> None:
    img = np.dstack([noise(30, 30), np.full((30, 30), 77, np.uint8)])
    mask = np.zeros((30, 30), np.uint8)
    mask[5:15, 5:15] = 255
    out = hide(img.copy(), mask, ProtectConfig(style="fill", color=(255, 0, 255)))
    assert (out[5:15, 5:15, :3] == (255, 0, 255)).all()
    assert (out[:, :, 3] == 77).all()


class Invert(styles.Style):
    """A toy style, defined here and registered the way a new style is: one class."""

    name = "invert"

    def cover(self, pixels: Image) -> Image:
        return np.asarray(255 - pixels, np.uint8)


@pytest.fixture
def invert() -> Iterator[None]:
    styles.register(Invert)
    yield
    styles.unregister("invert")


def test_a_new_style_is_one_class_and_the_config_accepts_it(invert: None) -> None:
    from edgeguard.config import load_config

    cfg = load_config(None, ["protect.style=invert"])
    img = noise(40, 40)
    mask = np.zeros((40, 40), np.uint8)
    mask[10:20, 5:30] = 255
    out = styles.create(cfg.protect).hide(img.copy(), mask)
    assert (out[10:20, 5:30] == 255 - img[10:20, 5:30]).all()
    assert not changed(img, out)[mask == 0].any()


def test_an_unknown_style_names_the_known_ones() -> None:
    from edgeguard.config import load_config
    from edgeguard.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        load_config(None, ["protect.style=invert"])
    assert err.value.problems == ["--set protect.style: 'invert' is not a hiding style: blur, fill, pixelate"]
