"""Hiding styles: one class each, behind one interface.

A style turns the pixels under a mask into something that shows nothing of
them. `Style.hide` does the shared work (the masked area, the copy back into
the frame); a style only says how far around the area it needs to read and
what the area becomes. A new style is one class with `@register` on it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import cv2
import numpy as np

from edgeguard.frames import Image, Mask
from edgeguard.settings import ProtectSettings

Area = tuple[int, int, int, int]  # x0, y0, x1, y1

_styles: dict[str, type[Style]] = {}


def register(cls: type[Style]) -> type[Style]:
    """Make a style available as `protect.style: <cls.name>`."""
    found = _styles.get(cls.name)
    if found is not None and found is not cls:
        raise ValueError(f"hiding style {cls.name!r} is already registered by {found.__module__}")
    _styles[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    _styles.pop(name, None)


def names() -> list[str]:
    return sorted(_styles)


def create(cfg: ProtectSettings) -> Style:
    return _styles[cfg.style](cfg)


class Style(ABC):
    name: ClassVar[str]

    def __init__(self, cfg: ProtectSettings) -> None:
        self.cfg = cfg

    def area(self, box: Area, width: int, height: int) -> Area:
        """The part of the frame `cover` is given for the masked pixels' bounding `box`."""
        return box

    @abstractmethod
    def cover(self, pixels: Image) -> Image:
        """What the `area` (a 3-channel view into the frame) becomes; only its masked pixels are used.

        A style copies the pixels only if its OpenCV call needs them contiguous.
        """

    def hide(self, image: Image, mask: Mask) -> Image:
        """Hide every masked pixel of `image` in place."""
        x, y, w, h = cv2.boundingRect(mask)
        if w == 0:
            return image
        H, W = mask.shape
        x0, y0, x1, y1 = self.area((x, y, x + w, y + h), W, H)
        region = image[y0:y1, x0:x1, :3]
        done = self.cover(region)
        # A masked copy in OpenCV is ~40x faster than NumPy boolean indexing on a 720p area. It writes
        # into the frame directly, except for the colour channels of a BGRA image (a strided view).
        target = region if image.shape[2] == 3 else np.ascontiguousarray(region)
        out = cv2.copyTo(np.ascontiguousarray(done), mask[y0:y1, x0:x1], target)
        if not np.shares_memory(out, region):
            region[...] = out
        return image


@register
class Fill(Style):
    """A flat colour (`protect.color`, RGB)."""

    name = "fill"

    def cover(self, pixels: Image) -> Image:
        r, g, b = self.cfg.color
        done = np.empty((*pixels.shape[:2], 3), np.uint8)
        done[:] = (b, g, r)
        return done


@register
class Blur(Style):
    """A blur of `protect.blur_kernel` pixels."""

    name = "blur"

    def area(self, box: Area, width: int, height: int) -> Area:
        # Blur a margin around the area too so the kernel sees real neighbours, not a border.
        m = self.cfg.blur_kernel // 2
        x0, y0, x1, y1 = box
        return max(0, x0 - m), max(0, y0 - m), min(width, x1 + m), min(height, y1 + m)

    def cover(self, pixels: Image) -> Image:
        # Stack blur looks like a Gaussian but costs the same at any kernel size.
        k = self.cfg.blur_kernel
        return np.asarray(cv2.stackBlur(np.ascontiguousarray(pixels), (k, k)), np.uint8)


@register
class Pixelate(Style):
    """Blocks of `protect.pixelate_block` pixels."""

    name = "pixelate"

    def area(self, box: Area, width: int, height: int) -> Area:
        # Blocks sit on the frame's grid so they do not crawl as the area moves.
        b = self.cfg.pixelate_block
        x0, y0, x1, y1 = box
        return x0 - x0 % b, y0 - y0 % b, min(width, -(-x1 // b) * b), min(height, -(-y1 // b) * b)

    def cover(self, pixels: Image) -> Image:
        # At the right and bottom edges the last blocks are padded (edge pixels repeated) to full size.
        b = self.cfg.pixelate_block
        h, w = pixels.shape[:2]
        pad_y, pad_x = (-h) % b, (-w) % b
        roi = cv2.copyMakeBorder(pixels, 0, pad_y, 0, pad_x, cv2.BORDER_REPLICATE) if pad_x or pad_y else pixels
        rh, rw = roi.shape[:2]
        small = cv2.resize(roi, (rw // b, rh // b), interpolation=cv2.INTER_AREA)
        return np.asarray(cv2.resize(small, (rw, rh), interpolation=cv2.INTER_NEAREST)[:h, :w], np.uint8)
