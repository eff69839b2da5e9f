"""Contact sheets: a few frames of an input beside their protected result, to tune a camera's config by eye.

`build_preview` protects the whole input with the real `Engine` (keyframes, carry-over and all:
exactly what the daemon would publish) into a temporary file, keeps the hidden share of the
chosen frames from the engine's per-frame masks, then reads those frames of the original and of
the protected file through the engine's own readers (so both are upright the same way) and lays
them out: one row per frame, original | protected, each panel under a dark label strip.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from av.stream import Disposition

from edgeguard.detections import Detections
from edgeguard.durable import fsync_file
from edgeguard.engine import Engine, Progress
from edgeguard.errors import FileError, InputError, UsageError
from edgeguard.frames import Image, Mask
from edgeguard.masks import hidden_share
from edgeguard.media import image as image_io
from edgeguard.media import media_kind
from edgeguard.media import video as video_io
from edgeguard.media.container import open_input
from edgeguard.publish import output_name, replace_into, staging_path

__all__ = [
    "GAP",
    "LABEL_HEIGHT",
    "MAX_FRAMES",
    "PANEL_WIDTH",
    "Preview",
    "Shot",
    "build_preview",
    "panel_size",
    "plan",
    "spread",
]

log = logging.getLogger(__name__)

PANEL_WIDTH = 640  # the widest a panel gets; narrower inputs keep their size
LABEL_HEIGHT = 28  # the dark strip above each panel
GAP = 4  # dark columns between the original and the protected panel
MAX_FRAMES = 32  # rows of a video's sheet, at most
DEFAULT_FRAMES = 4
JPEG_QUALITY = 80  # .jpg sheets are the small ones (a README, a ticket); .png keeps every pixel
SHEET_FORMATS = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg"}
SUFFIX = ".preview.png"  # the default sheet's name: INPUT's stem + this, beside the input

_BACKGROUND = (24, 24, 24)
_TEXT = (240, 240, 240)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_FONT_SCALE = 0.55


@dataclass(frozen=True)
class Shot:
    """One row of the sheet."""

    index: int  # frame index in the input (0 for an image)
    seconds: float | None  # the frame's time; None for an image
    share: float  # fraction of the frame's pixels hidden, 0..1


@dataclass(frozen=True)
class Preview:
    input: Path
    output: Path
    kind: str  # "video" or "image"
    frames: int  # frames the engine protected (1 for an image)
    shots: tuple[Shot, ...]
    overall_share: float  # mean hidden share over every frame of the input
    panel: tuple[int, int]  # width, height of each panel (without its label strip)

    @property
    def shown_share(self) -> float:
        """Mean hidden share of the frames on the sheet."""
        return sum(s.share for s in self.shots) / len(self.shots) if self.shots else 0.0

    def summary(self) -> str:
        """One line for the operator: where the sheet went and how much is hidden."""
        if self.kind == "image":
            return f"{self.output}: hidden share {self.shown_share:.1%}"
        return (
            f"{self.output}: {len(self.shots)} of {self.frames} frames, mean hidden share "
            f"{self.shown_share:.1%} (whole video {self.overall_share:.1%})"
        )


def plan(
    src: Path, output: str | None, frames: int = DEFAULT_FRAMES, daemon_folders: dict[str, Path] | None = None
) -> Path:
    """Check a preview request before any model loads; return where its sheet goes.

    `output` is the sheet's file (.png or .jpg), a folder (`FOLDER/` or an existing one) to put
    the default name in, or None for INPUT's stem + `.preview.png` beside the input.
    `daemon_folders` (paths.* by key): the sheet, which shows the original footage, never goes
    into one (the daemon would take it from incoming, or publish it from output).
    """
    if src.is_dir():
        raise UsageError(f"edgeguard preview: {src} is a directory; give one file in it")
    if not 1 <= frames <= MAX_FRAMES:
        raise UsageError(f"edgeguard preview: --frames {frames}: give 1 to {MAX_FRAMES}")
    default = src.stem + SUFFIX
    if output is None:
        dst = src.parent / default
    elif output.endswith("/") or Path(output).is_dir():
        dst = Path(output) / default
    else:
        dst = Path(output)
    if dst.resolve() == src.resolve():
        raise UsageError(f"edgeguard preview: output {dst} would overwrite its input")
    if dst.suffix.lower() not in SHEET_FORMATS:
        raise UsageError(f"edgeguard preview: {dst}: a contact sheet is written as .png or .jpg; name it so")
    if not dst.parent.is_dir():
        raise UsageError(f"edgeguard preview: -o {dst}: the folder {dst.parent} does not exist")
    here = dst.parent.resolve()
    for key, folder in (daemon_folders or {}).items():
        if folder.resolve() == here:
            raise UsageError(
                f"edgeguard preview: {dst} would be in paths.{key} ({folder}): the sheet shows the original"
                " footage; write it outside the daemon's folders with -o"
            )
    return dst


def spread(total: int, count: int) -> list[int]:
    """`count` frame indices spread evenly over `total` frames: the middle of each of `count` equal parts."""
    if total <= count:
        return list(range(total))
    return [(2 * i + 1) * total // (2 * count) for i in range(count)]


def panel_size(width: int, height: int, max_width: int = PANEL_WIDTH) -> tuple[int, int]:
    """A panel's (width, height) for a `width` x `height` frame: scaled down to `max_width`, never up."""
    if width <= max_width:
        return width, height
    return max_width, max(1, round(height * max_width / width))


class _Shares:
    """The engine's `observe`: the hidden share of the chosen frames only (memory stays flat)."""

    def __init__(self, chosen: set[int]) -> None:
        self.chosen = chosen
        self.shares: dict[int, float] = {}
        self.seen = 0

    def __call__(self, mask: Mask, _hidden: Detections | None) -> None:
        if self.seen in self.chosen:
            self.shares[self.seen] = hidden_share(mask)
        self.seen += 1


def build_preview(
    engine: Engine,
    src: Path,
    dst: Path,
    *,
    frames: int = DEFAULT_FRAMES,
    width: int = PANEL_WIDTH,
    progress: Progress | None = None,
) -> Preview:
    """Protect `src` with `engine` and write the contact sheet `dst` (.png or .jpg) atomically.

    Errors of the input are the engine's (FileError naming `src`); a sheet that cannot be
    written raises FileError naming `dst`. Nothing but `dst` is left behind.
    """
    fmt = SHEET_FORMATS.get(dst.suffix.lower())
    if fmt is None:
        raise ValueError(f"{dst}: a contact sheet is .png or .jpg")
    kind = media_kind(src)
    if kind is None:
        raise InputError(src, f"unsupported file type {src.suffix!r}")
    with tempfile.TemporaryDirectory(prefix="edgeguard-preview-") as tmp:
        protected = Path(tmp) / output_name(src.name)
        if kind == "video":
            shots, images, total, overall = _video(engine, src, protected, frames, width, progress)
        else:
            shots, images, total, overall = _image(engine, src, protected, width)
    sheet = _compose(shots, images)
    panel = (images[0][0].shape[1], images[0][0].shape[0])
    _write(sheet, dst, fmt)
    log.debug("%s: sheet %dx%d written to %s", src, sheet.shape[1], sheet.shape[0], dst)
    return Preview(src, dst, kind, total, tuple(shots), overall, panel)


def _limits(engine: Engine) -> dict[str, Any]:
    m = engine.cfg.media
    return {"max_pixels": m.max_pixels, "max_frame_bytes": m.max_frame_mb << 20}


def _video(
    engine: Engine, src: Path, protected: Path, count: int, width: int, progress: Progress | None
) -> tuple[list[Shot], list[tuple[Image, Image]], int, float]:
    limits = {**_limits(engine), "max_frames": engine.cfg.media.max_frames}
    with video_io.VideoReader(src, **limits) as probe:
        declared = probe.info.frames
    estimate = declared if declared is not None else _count_packets(src)
    shares = _Shares(set(spread(estimate, count)))
    result = engine.protect_file(src, protected, progress=progress, observe=shares)
    if result.frames != estimate:
        log.debug("%s: expected %d frames, the engine protected %d", src, estimate, result.frames)
    wanted = {i: s for i, s in shares.shares.items() if i < result.frames}
    if len(wanted) < min(count, result.frames):
        log.warning("%s: showing %d frames, not %d (the video has fewer than declared)", src, len(wanted), count)
    if not wanted:  # cannot happen for a video the engine accepted; be clear if it does
        raise FileError(src, "no frame to show", stage="preview")
    last = max(wanted)
    shots: list[Shot] = []
    images: list[tuple[Image, Image]] = []
    # Both through the engine's reader: the original upright as the engine saw it, the
    # output (written upright, without rotation metadata) as it was published.
    with video_io.VideoReader(src, **limits) as original, video_io.VideoReader(protected, **limits) as hidden:
        fps = float(original.info.fps)
        time_base = original.info.time_base
        panel = panel_size(original.info.width, original.info.height, width)
        for before, after in zip(original.frames(), hidden.frames(), strict=False):
            if before.index in wanted:
                seconds = float(before.pts * time_base) if before.pts is not None else before.index / fps
                shots.append(Shot(before.index, seconds, wanted[before.index]))
                images.append((_scaled(before.image, panel), _scaled(after.image, panel)))
            if before.index >= last:
                break
    if len(shots) != len(wanted):
        raise FileError(src, f"read back {len(shots)} of the {len(wanted)} chosen frames", stage="preview")
    return shots, images, result.frames, result.hidden_mean


def _count_packets(src: Path) -> int:
    """Frames of a container that declares no count (MKV, WebM): its video packets, without decoding."""
    with open_input(src) as container:
        stream = next(s for s in container.streams.video if not s.disposition & Disposition.attached_pic)
        return sum(1 for packet in container.demux(stream) if packet.size)


def _image(
    engine: Engine, src: Path, protected: Path, width: int
) -> tuple[list[Shot], list[tuple[Image, Image]], int, float]:
    shares = _Shares({0})
    result = engine.protect_file(src, protected, observe=shares)
    # The engine's reader: EXIF orientation applied, as the engine saw the photo.
    before = image_io.read_image(src, **_limits(engine))
    after = image_io.read_image(protected, **_limits(engine))
    panel = panel_size(before.shape[1], before.shape[0], width)
    return [Shot(0, None, shares.shares[0])], [(_scaled(before, panel), _scaled(after, panel))], 1, result.hidden_mean


def _compose(shots: list[Shot], images: list[tuple[Image, Image]]) -> Image:
    """Rows of original | protected (panels already scaled to one size), each panel under its label strip."""
    ph, pw = images[0][0].shape[:2]
    row_height = LABEL_HEIGHT + ph
    sheet = np.empty((row_height * len(shots), 2 * pw + GAP, 3), dtype=np.uint8)
    sheet[:] = _BACKGROUND
    for row, (shot, (before, after)) in enumerate(zip(shots, images, strict=True)):
        top = row * row_height
        left_label = "original" if shot.seconds is None else f"frame {shot.index}  t={shot.seconds:.2f}s  original"
        right_label = f"protected  hidden {shot.share:.1%}"
        for column, (picture, label) in enumerate(((before, left_label), (after, right_label))):
            x = column * (pw + GAP)
            _label(sheet[top : top + LABEL_HEIGHT, x : x + pw], label)
            sheet[top + LABEL_HEIGHT : top + row_height, x : x + pw] = picture
    return sheet


def _scaled(picture: Image, panel: tuple[int, int]) -> Image:
    """`picture` as a `panel` (width, height) sized BGR copy (an image's alpha is not shown)."""
    bgr = picture[:, :, :3]
    if (bgr.shape[1], bgr.shape[0]) == panel:
        return bgr.copy()
    return np.asarray(cv2.resize(np.ascontiguousarray(bgr), panel, interpolation=cv2.INTER_AREA), dtype=np.uint8)


def _label(strip: Image, text: str) -> None:
    """`text` in light letters on the (already dark) strip, shrunk to fit its width."""
    width = strip.shape[1]
    scale = _FONT_SCALE
    (tw, th), _ = cv2.getTextSize(text, _FONT, scale, 1)
    if tw > width - 12:
        scale *= (width - 12) / tw
        (_, th), _ = cv2.getTextSize(text, _FONT, scale, 1)
    y = (LABEL_HEIGHT + th) // 2
    cv2.putText(strip, text, (6, y), _FONT, scale, _TEXT, 1, cv2.LINE_AA)


def _write(sheet: Image, dst: Path, fmt: str) -> None:
    """Write `sheet` to `dst` under a temporary name, then rename it into place."""
    staged = staging_path(dst.parent, dst.name)
    try:
        image_io.write_image(staged, sheet, fmt=fmt, quality=JPEG_QUALITY)
        fsync_file(staged)
        replace_into(staged, dst)
    except FileError as exc:  # the writer names the staging file; the user knows `dst`
        _discard(staged)
        raise FileError(dst, exc.reason, stage=exc.stage, transient=exc.transient) from exc
    except OSError as exc:
        _discard(staged)
        raise FileError(dst, f"cannot write: {exc.strerror or exc}", stage="publish") from exc
    except BaseException:
        _discard(staged)
        raise


def _discard(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)
