"""Protect one file: decode, detect, track, hide, encode; all or nothing.

The engine writes to the path its caller gives (a staging name: see `publish`)
and removes it on any failure; making the output visible is the caller's step.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edgeguard import styles
from edgeguard.config import Config
from edgeguard.detections import Detections
from edgeguard.detectors.base import Detector
from edgeguard.detectors.factory import create_detector, reusable
from edgeguard.durable import fsync_file
from edgeguard.errors import Cancelled, EdgeguardError, FileError, InputError
from edgeguard.frames import Image, Mask
from edgeguard.masks import Pads, as_heads, hidden_share, rasterize
from edgeguard.media import image as image_io
from edgeguard.media import media_kind
from edgeguard.media import video as video_io
from edgeguard.stages import Consumer, Producer
from edgeguard.temporal import Planned, Planner

log = logging.getLogger(__name__)

Progress = Callable[[int, int | None], None]
# Each frame's mask and, on keyframes, the instances as hidden; in order.
Observer = Callable[[Mask, "Detections | None"], None]
QUEUE_FRAMES = 8  # frames in flight between two stages: memory stays flat


@dataclass
class Stats:
    """Seconds spent per stage (busy time of each thread) and keyframe counts."""

    decode: float = 0.0
    inference: float = 0.0
    protection: float = 0.0
    encode: float = 0.0
    planning: float = 0.0  # motion check and carry-over, on the inference thread
    idle: float = 0.0  # the inference thread waiting for decoded frames
    keyframes: int = 0
    motion_keyframes: int = 0


@dataclass
class Hidden:
    """How much of the frames was hidden, and what was found: what an audit record reports.

    In a video the inference thread counts `classes` and the encoder thread adds the frames;
    the result is read once both have finished.
    """

    frames: int = 0
    share_sum: float = 0.0  # sum over frames of the hidden share of each frame
    share_max: float = 0.0
    classes: Counter[str] = field(default_factory=Counter)  # detections per class, on analysed frames

    def add_frame(self, mask: Mask) -> None:
        share = hidden_share(mask)
        self.frames += 1
        self.share_sum += share
        self.share_max = max(self.share_max, share)

    @property
    def share_mean(self) -> float:
        return self.share_sum / self.frames if self.frames else 0.0


@dataclass(frozen=True)
class Result:
    input: str
    output: str
    kind: str
    frames: int
    detections: int
    seconds: float
    fps: float
    model: str
    target: str
    keyframes: int
    classes: dict[str, int] = field(default_factory=dict)  # detections per class
    hidden_mean: float = 0.0  # share of the frame hidden, mean over frames
    hidden_max: float = 0.0  # and on the frame that hid most
    stats: Stats = field(default_factory=Stats, repr=False)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["stats"]
        return out


def keyframe_looker(detector: Detector[Any], cfg: Config) -> Callable[[Image, bool], Detections]:
    """Detection as the planner asks for it: `(frame, stands_in)`.

    A keyframe whose instances are carried to the frames around it (and a photo,
    which nothing else will look at) looks harder than a frame of the every-frame
    loop: it keeps detections down to temporal.keyframe_confidence, since a person
    scoring low here may score higher a frame later, and with
    temporal.keyframe_mirror it also looks at the mirrored frame.
    """
    t = cfg.temporal
    mirror = t.keyframe_mirror == "always" or (t.keyframe_mirror == "auto" and detector.mirror_keyframes)

    def look(image: Image, stands_in: bool) -> Detections:
        if stands_in:
            return detector.detect(image, t.keyframe_confidence, mirror=mirror)
        return detector.detect(image)

    return look


class EngineLike(Protocol):
    """What the daemon needs of an engine: this machine's (`Engine`) or a cluster's (`cluster.client`)."""

    @property
    def model_name(self) -> str: ...

    @property
    def target(self) -> str: ...

    @property
    def weights(self) -> Mapping[str, str]: ...

    def with_config(self, cfg: Config) -> tuple[EngineLike, bool]: ...

    def protect_file(
        self, src: Path, out: Path, *, progress: Progress | None = None, cancel: threading.Event | None = None
    ) -> Result: ...

    def close(self) -> None: ...


class Engine:
    """Holds the loaded model; protects one file at a time."""

    def __init__(self, cfg: Config, detector: Detector[Any] | None = None) -> None:
        self.cfg = cfg
        self.detector = detector if detector is not None else create_detector(cfg)
        self.detector.want_masks = cfg.protect.shape == "mask"
        self.look = keyframe_looker(self.detector, cfg)
        self.style = styles.create(cfg.protect)

    @property
    def model_name(self) -> str:
        return self.detector.model_name

    @property
    def target(self) -> str:
        return self.detector.target

    @property
    def weights(self) -> Mapping[str, str]:
        """sha256 of each of the model's files as loaded, by role."""
        return self.detector.weights

    def with_config(self, cfg: Config) -> tuple[Engine, bool]:
        """An engine for a reloaded `cfg`, and whether it loaded the model anew.

        The loaded model is kept when nothing it was built from changed: protect, video and
        media settings then take effect without the cost of loading it again.
        """
        if reusable(self.detector, cfg):
            return Engine(cfg, self.detector), False
        return Engine(cfg), True

    def close(self) -> None:
        """Nothing to release: the model goes with the object."""

    def protect_file(
        self,
        src: Path,
        out: Path,
        *,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
        observe: Observer | None = None,
    ) -> Result:
        """Protect `src` into `out` (its extension picks the format), flushed to disk; nothing is left on failure."""
        kind = media_kind(src)
        if kind is None:
            raise InputError(src, f"unsupported file type {src.suffix!r}")
        started = time.monotonic()
        hidden = Hidden()
        try:
            if kind == "video":
                frames, found, stats = self._video(src, out, hidden, progress, cancel, observe)
            else:
                frames, found = self._image(src, out, hidden, observe)
                stats = Stats(keyframes=1)
            fsync_file(out)
        except FileError as exc:
            _discard(out)
            if exc.path == src:
                raise
            # The writers name the hidden staging file; the user knows the input.
            raise FileError(src, exc.reason, stage=exc.stage, transient=exc.transient) from exc
        except BaseException:
            _discard(out)
            raise
        seconds = time.monotonic() - started
        return Result(
            str(src),
            str(out),
            kind,
            frames,
            found,
            round(seconds, 3),
            round(frames / seconds, 3) if seconds > 0 else 0.0,
            self.detector.model_name,
            self.detector.target,
            stats.keyframes,
            dict(sorted(hidden.classes.items())),
            round(hidden.share_mean, 6),
            round(hidden.share_max, 6),
            stats,
        )

    def _image(self, src: Path, out: Path, hidden: Hidden, observe: Observer | None) -> tuple[int, int]:
        img = image_io.read_image(
            src, max_pixels=self.cfg.media.max_pixels, max_frame_bytes=self.cfg.media.max_frame_mb << 20
        )
        # A photo is a keyframe nothing else will look at: it looks as hard as one.
        det = self._detect(img, src, stands_in=True)
        hidden.classes.update(det.classes)
        mask = self._rasterize(det, img.shape[1], img.shape[0])
        hidden.add_frame(mask)
        if observe is not None:
            observe(mask, self._hidden(det))
        self.style.hide(img, mask)
        found = len(det)
        image_io.write_image(out, img, fmt=out.suffix.lower().lstrip("."), quality=self.cfg.media.image_quality)
        return 1, found

    def _video(
        self,
        src: Path,
        out: Path,
        hidden: Hidden,
        progress: Progress | None,
        cancel: threading.Event | None,
        observe: Observer | None = None,
    ) -> tuple[int, int, Stats]:
        """Decode, plan and detect, hide and encode in three overlapping threads."""
        v = self.cfg.video
        stats = Stats()
        found = 0
        written = 0

        def detect(image: Image, stands_in: bool) -> Detections:
            nonlocal found
            t0 = time.perf_counter()
            det = self._detect(image, src, stands_in)
            stats.inference += time.perf_counter() - t0
            found += len(det)
            hidden.classes.update(det.classes)
            return det

        with video_io.VideoReader(
            src,
            max_pixels=self.cfg.media.max_pixels,
            max_frame_bytes=self.cfg.media.max_frame_mb << 20,
            max_frames=self.cfg.media.max_frames,
        ) as reader:
            total = reader.info.frames
            with video_io.VideoWriter(
                out,
                reader.info,
                source=src,
                crf=v.crf,
                preset=v.preset,
                audio=v.audio,
                keep_metadata=v.keep_metadata,
            ) as writer:

                def encode(p: Planned[video_io.Frame]) -> None:
                    nonlocal written
                    if observe is not None:
                        observe(p.mask, None if p.det is None else self._hidden(p.det))
                    t0 = time.perf_counter()
                    hidden.add_frame(p.mask)
                    self.style.hide(p.item.image, p.mask)
                    stats.protection += time.perf_counter() - t0
                    writer.write(p.item, p.item.image)
                    written += 1

                planner: Planner[video_io.Frame] = Planner(self.cfg.temporal, detect, self._rasterize)
                decoder = Producer(reader.frames, QUEUE_FRAMES, "edgeguard-decode")
                encoder: Consumer[Planned[video_io.Frame]] = Consumer(encode, QUEUE_FRAMES, "edgeguard-encode")
                handed = 0
                try:
                    for planned in planner.run((f, f.image) for f in decoder):
                        if cancel is not None and cancel.is_set():
                            raise Cancelled(src)
                        encoder.put(planned)
                        handed += 1
                        # Reported from this thread, by frames handed to the encoder (at most
                        # QUEUE_FRAMES ahead of those written): the encoder thread calls no one.
                        if progress is not None:
                            progress(handed, total)
                    encoder.finish()
                finally:
                    decoder.close()
                    encoder.close()
                if written != planner.frames:
                    raise FileError(src, f"wrote {written} of {planner.frames} frames", stage="encode")
                stats.decode = decoder.busy
                stats.encode = encoder.busy - stats.protection
                stats.keyframes = planner.keyframes
                stats.planning = planner.busy
                stats.idle = planner.waited
                stats.motion_keyframes = planner.motion_keyframes
        log.debug(
            "%s: %d keyframes of %d frames (%d forced by motion)", src, stats.keyframes, written, stats.motion_keyframes
        )
        return written, found, stats

    def _rasterize(self, det: Detections, width: int, height: int, pad: Pads | None = None) -> Mask:
        c = self.cfg.protect
        shape = c.shape if self.detector.has_masks else "box"
        return rasterize(
            det,
            width,
            height,
            shape=shape,
            dilate=c.dilate,
            pad=pad,
            head=c.head_margin,
            heads_only=self.detector.heads,
        )

    def _hidden(self, det: Detections) -> Detections:
        """The instances as they are hidden (in face mode: persons by their heads)."""
        return as_heads(det) if self.detector.heads else det

    def _detect(self, img: Image, src: Path, stands_in: bool = False) -> Detections:
        try:
            return self.look(img, stands_in)
        except EdgeguardError:
            raise
        except Exception as exc:
            raise FileError(src, f"detection failed: {exc}", stage="detect") from exc


def _discard(path: Path) -> None:
    """Remove a partial output; a name the filesystem refused (too long, gone folder) left nothing."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)
