"""Video in and out with PyAV: upright BGR frames in, browser-playable H.264 MP4 out.

`VideoReader` streams decoded frames (memory stays flat however long the video
is) and turns them upright according to the stream's display matrix.
`VideoWriter` encodes frames to H.264/yuv420p in an MP4 with the moov atom first
(`+faststart`), keeps each frame's timestamp, and carries the source's audio
along (`edgeguard.media.audio`), interleaved as the video is written.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
from collections import deque
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Literal, Self, cast

import av
import av.error
import numpy as np
from av.container import InputContainer, OutputContainer
from av.sidedata.sidedata import SideDataContainer
from av.sidedata.sidedata import Type as SideDataType
from av.stream import Disposition
from av.video.codeccontext import VideoCodecContext
from av.video.frame import VideoFrame
from av.video.reformatter import ColorRange, Colorspace
from av.video.stream import VideoStream

from edgeguard.errors import FileError, InputError
from edgeguard.frames import Image
from edgeguard.media.audio import AudioTrack, audio_stream
from edgeguard.media.checks import check_input
from edgeguard.media.container import ffmpeg_reason, open_input, start_offset

__all__ = ["Frame", "VideoInfo", "VideoReader", "VideoWriter"]

log = logging.getLogger(__name__)

# Write failures worth retrying later: the disk, not the input, is the problem.
_TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO})

# Container/stream tags the muxer writes itself; copying them as metadata is meaningless.
TECHNICAL_TAGS = frozenset({"major_brand", "minor_version", "compatible_brands", "encoder"})

# AVColorSpace -> swscale matrix, so BGR is converted back with the source's matrix.
_SWS_MATRIX = {
    1: Colorspace.ITU709,  # BT709
    4: Colorspace.FCC,
    5: Colorspace.ITU601,  # BT470BG
    6: Colorspace.ITU601,  # SMPTE170M
    7: Colorspace.SMPTE240M,
    9: Colorspace.BT2020,  # BT2020_NCL
    10: Colorspace.BT2020,  # BT2020_CL
}
_UNSPECIFIED = 2  # AVCOL_SPC/PRI/TRC_UNSPECIFIED share the value 2


@dataclass(frozen=True)
class VideoInfo:
    """What the reader learnt about the input; the writer reproduces it."""

    width: int  # upright (display) size, after rotation
    height: int
    frames: int | None  # frame count the container declares, if any
    fps: Fraction  # average rate
    time_base: Fraction
    duration: float | None  # seconds
    rotation: int  # degrees counter-clockwise the reader turns frames (0/90/180/270)
    codec: str
    audio_codec: str | None


@dataclass(frozen=True, slots=True)
class Frame:
    index: int  # 0-based decode order
    pts: int | None  # in VideoInfo.time_base, counted from the container's start
    image: Image  # HxWx3 uint8 BGR, upright, C-contiguous


# (transpose, flip_x, flip_y) -> (degrees counter-clockwise, mirrored afterwards)
_ROTATION: dict[tuple[bool, bool, bool], tuple[int, bool]] = {
    (False, False, False): (0, False),
    (True, False, True): (90, False),
    (False, True, True): (180, False),
    (True, True, False): (270, False),
    (False, True, False): (0, True),
    (True, True, True): (90, True),
    (False, False, True): (180, True),
    (True, False, False): (270, True),
}


@dataclass(frozen=True)
class _Orientation:
    """How to turn a decoded picture into its display orientation."""

    transpose: bool = False
    flip_x: bool = False
    flip_y: bool = False

    @property
    def rotation(self) -> int:
        """Counter-clockwise quarter turn, read as "rotate, then mirror left-right"."""
        return _ROTATION[(self.transpose, self.flip_x, self.flip_y)][0]

    @property
    def mirrored(self) -> bool:
        return _ROTATION[(self.transpose, self.flip_x, self.flip_y)][1]

    def apply(self, image: Image) -> Image:
        if self.transpose:
            image = image.transpose(1, 0, 2)
        if self.flip_x:
            image = image[:, ::-1]
        if self.flip_y:
            image = image[::-1]
        return image


def _orientation(frame: VideoFrame) -> _Orientation:
    """Read the display matrix FFmpeg attaches to each decoded frame.

    The matrix maps a stored pixel (u, v) to its display position
    x = a*u + c*v, y = b*u + d*v (FFmpeg's row-vector convention, y pointing
    down), so the signs of a, b, c, d give the 90-degree rotation and any mirror.
    Odd angles are rounded to the nearest quarter turn.
    """
    # PyAV's stub types side_data as a TypedDict; at run time it is this mapping.
    side_data = cast(SideDataContainer, frame.side_data)
    try:
        side = side_data[SideDataType.DISPLAYMATRIX]
    except KeyError:
        return _Orientation()
    matrix = np.frombuffer(bytes(side), dtype=np.int32)
    if matrix.size < 9:
        log.warning("ignoring malformed display matrix (%d values)", matrix.size)
        return _Orientation()
    a, b, c, d = (int(v) for v in (matrix[0], matrix[1], matrix[3], matrix[4]))
    if abs(a) + abs(d) >= abs(b) + abs(c):
        result = _Orientation(transpose=False, flip_x=a < 0, flip_y=d < 0)
        off_axis = b != 0 or c != 0
    else:
        result = _Orientation(transpose=True, flip_x=c < 0, flip_y=b < 0)
        off_axis = a != 0 or d != 0
    if off_axis:
        log.warning("display rotation %d is not a quarter turn; rounding it", frame.rotation)
    return result


def _video_streams(container: InputContainer) -> list[VideoStream]:
    # Cover art in MP4/MKV is a one-picture "video" stream; it is not the video.
    return [s for s in container.streams.video if not s.disposition & Disposition.attached_pic]


def _video_stream(container: InputContainer) -> VideoStream | None:
    streams = _video_streams(container)
    return streams[0] if streams else None


def _pixel_bytes(ctx: VideoCodecContext) -> int:
    """Bytes per pixel of a decoded frame as held (BGR), doubled for deeper than 8-bit sources."""
    fmt = ctx.format
    bits = max((c.bits for c in fmt.components), default=8) if fmt is not None else 8
    return 3 * (2 if bits > 8 else 1)


def _positive(rate: Fraction | None) -> Fraction | None:
    return rate if rate is not None and rate > 0 else None


class VideoReader:
    """Open and probe a video; `frames()` then streams upright BGR frames.

    Raises InputError for a missing or empty file, a file FFmpeg cannot read, no
    video stream, a codec without a decoder, zero or absurd dimensions, and a
    stream from which no frame decodes.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_pixels: int,
        threads: int = 0,
        max_frame_bytes: int | None = None,
        max_frames: int | None = None,
    ) -> None:
        self.path = path
        self.max_frame_bytes = max_frame_bytes
        self.max_frames = max_frames
        self._consumed = False
        self._decoded: Generator[tuple[VideoFrame, int | None]] | None = None
        self._first: tuple[VideoFrame, int | None] | None = None
        check_input(path)
        self._container: InputContainer | None = open_input(path)
        try:
            self.info = self._probe(self._container, max_pixels, threads)
        except BaseException:
            self.close()
            raise

    def _probe(self, container: InputContainer, max_pixels: int, threads: int) -> VideoInfo:
        streams = _video_streams(container)
        if not streams:
            raise InputError(self.path, "no video stream")
        if len(streams) > 1:
            # Protecting one and dropping the others unseen would lose them with the original.
            raise InputError(self.path, f"{len(streams)} video streams; only files with one video stream are taken")
        stream = streams[0]
        ctx = stream.codec_context
        if ctx is None:
            raise InputError(self.path, "unsupported video codec (no decoder available)")
        width, height = ctx.width, ctx.height
        if width <= 0 or height <= 0:
            raise InputError(self.path, f"invalid video dimensions {width}x{height}")
        self._check_pixels(width, height, max_pixels)
        frame_bytes = width * height * _pixel_bytes(ctx)
        if self.max_frame_bytes is not None and frame_bytes > self.max_frame_bytes:
            raise InputError(
                self.path,
                f"a {width}x{height} frame takes {frame_bytes >> 20} MiB decoded,"
                f" over media.max_frame_mb={self.max_frame_bytes >> 20}",
            )
        if self.max_frames is not None and stream.frames > self.max_frames:
            raise InputError(
                self.path, f"the container declares {stream.frames} frames, over media.max_frames={self.max_frames}"
            )
        ctx.thread_count = threads  # 0 lets FFmpeg pick one thread per core
        # Defence in depth: FFmpeg itself refuses a later frame bigger than the limit.
        ctx.options = {**ctx.options, "max_pixels": str(max_pixels)}
        ctx.thread_type = "AUTO"
        self._stream = stream

        # Decode the first frame now: it proves the stream decodes and carries
        # the display matrix, which FFmpeg exposes per frame, not per stream.
        self._decoded = self._decode(container, stream)
        try:
            self._first = next(self._decoded)
        except StopIteration:
            raise InputError(self.path, "no decodable video frames", stage="decode") from None
        first = self._first[0]
        if (first.width, first.height) != (width, height):
            log.info(
                "%s: header says %dx%d, decoder gives %dx%d; using the decoder's size",
                self.path,
                width,
                height,
                first.width,
                first.height,
            )
            width, height = first.width, first.height
            self._check_pixels(width, height, max_pixels)
        self._size = (width, height)
        self._orientation = _orientation(first)
        rotation = self._orientation.rotation
        if self._orientation.mirrored:
            log.info("%s: display matrix mirrors the picture; un-mirroring it", self.path)
        if self._orientation.transpose:
            width, height = height, width

        time_base = stream.time_base or Fraction(1, 90000)
        self._shift = round(start_offset(container) / time_base)
        duration: float | None = None
        if stream.duration:
            duration = float(stream.duration * time_base)
        elif container.duration:
            duration = container.duration / av.time_base
        declared = stream.frames or None
        fps = _positive(stream.average_rate) or _positive(stream.guessed_rate) or _positive(stream.base_rate)
        if fps is None:
            if declared and duration:
                fps = Fraction(declared / duration).limit_denominator(1001)
            else:
                log.warning("%s: no frame rate in the stream; assuming 25 fps", self.path)
                fps = Fraction(25)
        audio = audio_stream(container)
        return VideoInfo(
            width=width,
            height=height,
            frames=declared,
            fps=fps,
            time_base=time_base,
            duration=duration,
            rotation=rotation,
            codec=ctx.name,
            audio_codec=audio.codec_context.name if audio is not None and audio.codec_context else None,
        )

    def _check_pixels(self, width: int, height: int, max_pixels: int) -> None:
        # Refuse before any big allocation: a crafted header is a memory bomb.
        if width * height > max_pixels:
            raise InputError(
                self.path,
                f"absurd dimensions {width}x{height} exceed media.max_pixels={max_pixels}",
            )

    def _fake_pts(self, stream: VideoStream) -> bool:
        """True if the container's pts are decode-order stand-ins (AVI-style).

        AVI stores no presentation times: with B-frames FFmpeg hands out
        increasing pts in decode order, which the decoder then reorders into
        nonsense. Real pts of a reordering stream are not monotonic in decode
        order, so a short look at the first packets tells the two apart.
        """
        ctx = stream.codec_context
        if ctx is None or not ctx.has_b_frames:
            return False
        stamps: list[int | None] = []
        with open_input(self.path) as probe:
            probe_stream = probe.streams[stream.index]
            try:
                for packet in probe.demux(probe_stream):
                    if packet.size:
                        stamps.append(packet.pts)
                    if len(stamps) >= 32:
                        break
            except av.error.FFmpegError:
                pass  # the real decode reports damage; this is only a hint
        known = [s for s in stamps if s is not None]
        if len(known) < 3 or len(known) != len(stamps):
            return False
        return all(a < b for a, b in itertools.pairwise(known))

    def _decode(self, container: InputContainer, stream: VideoStream) -> Generator[tuple[VideoFrame, int | None]]:
        """Decode every frame with its pts; tell a damaged stream from a ragged end.

        A decoder error on the very last packet is tolerated (recordings cut
        mid-packet end that way and FFmpeg itself just stops); an error followed
        by more packets, a demuxer error, or fewer packets than the container
        declares (a truncated file) raises InputError.
        """
        declared = stream.frames
        packets = 0
        failed: av.error.FFmpegError | None = None
        # AVI-style streams: frame k is shown at the k-th packet's dts.
        slots: deque[int | None] | None = deque() if self._fake_pts(stream) else None
        if slots is not None:
            log.info("%s: container has no real pts; timing frames by packet order", self.path)
        try:
            for packet in container.demux(stream):
                flush = packet.size == 0 and packet.dts is None
                if not flush:
                    if failed is not None:
                        raise InputError(
                            self.path,
                            f"corrupt video stream near packet {packets} ({ffmpeg_reason(failed)})",
                            stage="decode",
                        )
                    packets += 1
                    if self.max_frames is not None and packets > self.max_frames:
                        raise InputError(self.path, f"more than media.max_frames={self.max_frames} frames")
                    if slots is not None and packet.size:
                        slots.append(packet.dts)
                try:
                    frames = stream.decode(None if flush else packet)
                except av.error.FFmpegError as exc:
                    failed = exc
                    log.warning("%s: decoder error at packet %d: %s", self.path, packets, ffmpeg_reason(exc))
                    continue
                for frame in frames:
                    if slots is not None:
                        yield frame, slots.popleft() if slots else None
                    else:
                        yield frame, frame.pts
        except av.error.FFmpegError as exc:
            raise InputError(self.path, f"corrupt container ({ffmpeg_reason(exc)})", stage="decode") from exc
        # Edit lists and dropped-frame markers make small mismatches normal.
        if declared and packets < declared - max(2, declared // 100):
            raise InputError(
                self.path,
                f"truncated: the container declares {declared} frames but only {packets} could be read",
                stage="decode",
                incomplete=True,
            )
        if failed is not None:
            log.warning("%s: ignored a damaged last packet", self.path)

    def frames(self) -> Iterator[Frame]:
        """Yield every frame once, upright, as C-contiguous BGR uint8."""
        if self._consumed:
            raise RuntimeError("VideoReader.frames() can only be iterated once")
        self._consumed = True
        first, decoded_frames = self._first, self._decoded
        self._first = None  # drop the reference: keep memory flat
        if first is None or decoded_frames is None:
            return
        width, height = self._size
        index = 0
        pending: tuple[VideoFrame, int | None] | None = first
        while pending is not None:
            decoded, pts = pending
            # Scale any mid-stream size change back to the probed size so every
            # frame matches what the writer was set up for.
            image = cast(Image, decoded.to_ndarray(format="bgr24", width=width, height=height))
            image = np.ascontiguousarray(self._orientation.apply(image))
            yield Frame(index=index, pts=None if pts is None else pts - self._shift, image=image)
            index += 1
            pending = next(decoded_frames, None)

    def close(self) -> None:
        self._first = None
        if self._decoded is not None:
            self._decoded.close()  # ends the demux loop and frees its packet
            self._decoded = None
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _encode_error(path: Path, exc: BaseException, doing: str) -> FileError:
    code = exc.errno if isinstance(exc, OSError | av.error.FFmpegError) else None
    reason = f"{doing} failed: {ffmpeg_reason(exc) if isinstance(exc, av.error.FFmpegError) else exc}"
    return FileError(path, reason, stage="encode", transient=code in _TRANSIENT_ERRNOS)


class VideoWriter:
    """Encode upright BGR frames to an H.264/yuv420p MP4 with `+faststart`.

    Each frame keeps its input pts (the output video time base is the input's,
    so variable frame rate survives). Audio from `source` is copied when MP4 can
    carry it, else transcoded to AAC, and muxed as the video advances. Source
    metadata is dropped unless `keep_metadata`. Used as a context manager, an
    exception in the body (or a failed close) removes the partial file.
    """

    def __init__(
        self,
        path: Path,
        info: VideoInfo,
        *,
        source: Path | None,
        crf: int,
        preset: str,
        audio: Literal["keep", "strip"],
        keep_metadata: bool = False,
        threads: int = 0,
    ) -> None:
        if not 0 <= crf <= 51:
            raise ValueError(f"crf must be 0..51, got {crf}")
        if audio not in ("keep", "strip"):
            raise ValueError(f"audio must be 'keep' or 'strip', got {audio!r}")
        self.path = path
        self.info = info
        # yuv420p needs even sizes: pad one replicated pixel rather than crop, so
        # no input pixel (and nothing a mask covers) is lost at the edge.
        self.encoded_size = (info.width + info.width % 2, info.height + info.height % 2)
        self._last_pts: int | None = None
        self._pts_step = max(1, round(1 / (info.fps * info.time_base))) if info.fps else 1
        self._src: InputContainer | None = None
        self._audio: AudioTrack | None = None
        self._closed = False
        try:
            self._out: OutputContainer = av.open(
                os.fspath(path), "w", format="mp4", container_options={"movflags": "+faststart"}
            )
        except (av.error.FFmpegError, OSError) as exc:
            raise _encode_error(path, exc, "opening the output") from exc
        try:
            if source is not None:
                self._src = open_input(source)
            self._video = self._add_video(crf, preset, threads)
            if audio == "keep" and self._src is not None:
                self._audio = AudioTrack.add(self._out, self._src, path)
            if keep_metadata and self._src is not None:
                self._copy_metadata(self._src)
            self._out.start_encoding()
        except BaseException as exc:
            self._abort()
            if isinstance(exc, av.error.FFmpegError | OSError):
                raise _encode_error(path, exc, "writing the header") from exc
            raise

    def _add_video(self, crf: int, preset: str, threads: int) -> VideoStream:
        stream = self._out.add_stream("libx264", rate=self.info.fps, options={"crf": str(crf), "preset": preset})
        stream.width, stream.height = self.encoded_size
        stream.pix_fmt = "yuv420p"
        # The input's time base, so every input pts is representable unchanged.
        stream.codec_context.time_base = self.info.time_base
        stream.time_base = self.info.time_base
        stream.codec_context.thread_count = threads
        self._matrix: Colorspace | None = None
        src_video = _video_stream(self._src) if self._src is not None else None
        if src_video is not None and src_video.codec_context is not None:
            # Convert back with the matrix the decoder used and keep the colour
            # tags, so players show the colours the input had.
            sctx = src_video.codec_context
            self._matrix = _SWS_MATRIX.get(sctx.colorspace)
            if self._matrix is not None:
                stream.codec_context.colorspace = sctx.colorspace
            if sctx.color_primaries != _UNSPECIFIED:
                stream.codec_context.color_primaries = sctx.color_primaries
            if sctx.color_trc != _UNSPECIFIED:
                stream.codec_context.color_trc = sctx.color_trc
            stream.codec_context.color_range = int(ColorRange.MPEG)
        return stream

    def _copy_metadata(self, src: InputContainer) -> None:
        self._out.metadata.update({k: v for k, v in src.metadata.items() if k not in TECHNICAL_TAGS})
        src_video = _video_stream(src)
        if src_video is not None:
            self._video.metadata.update(src_video.metadata)
        if self._audio is not None:
            self._audio.copy_metadata()

    def write(self, frame: Frame, image: Image) -> None:
        """Encode `image` (upright BGR uint8 of the input size) at `frame.pts`."""
        if self._closed:
            raise RuntimeError("VideoWriter is closed")
        expected = (self.info.height, self.info.width, 3)
        if image.shape != expected or image.dtype != np.uint8:
            raise ValueError(f"expected a {expected} uint8 image, got {image.shape} {image.dtype}")
        pad_x = self.encoded_size[0] - self.info.width
        pad_y = self.encoded_size[1] - self.info.height
        if pad_x or pad_y:
            image = np.pad(image, ((0, pad_y), (0, pad_x), (0, 0)), mode="edge")
        pts = self._next_pts(frame)
        bgr = VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
        yuv = bgr.reformat(format="yuv420p", dst_colorspace=self._matrix, dst_color_range=ColorRange.MPEG)
        yuv.pts = pts
        yuv.time_base = self.info.time_base
        try:
            self._out.mux(self._video.encode(yuv))
            if self._audio is not None:
                self._audio.mux_until(float(pts * self.info.time_base))
        except (av.error.FFmpegError, OSError) as exc:
            raise _encode_error(self.path, exc, f"encoding frame {frame.index}") from exc

    def _next_pts(self, frame: Frame) -> int:
        # The encoder needs strictly increasing pts; repair the rare broken input
        # rather than fail the whole file.
        last = self._last_pts
        pts = frame.pts
        if pts is None:
            pts = 0 if last is None else last + self._pts_step
        elif last is not None and pts <= last:
            log.warning("%s: frame %d pts %d not after %d; nudging it", self.path, frame.index, pts, last)
            pts = last + 1
        self._last_pts = pts
        return pts

    def close(self) -> None:
        """Flush the encoder, mux the remaining audio, write the trailer."""
        if self._closed:
            return
        try:
            self._out.mux(self._video.encode(None))
            if self._audio is not None:
                self._audio.finish()
            self._out.close()
        except (av.error.FFmpegError, OSError) as exc:
            self._abort()
            raise _encode_error(self.path, exc, "finishing the file") from exc
        except BaseException:
            self._abort()
            raise
        self._closed = True
        if self._src is not None:
            self._src.close()

    def _abort(self) -> None:
        """Release everything and remove the partial output; never raises."""
        self._closed = True
        for container in (self._out, self._src):
            if container is None:
                continue
            try:
                container.close()
            except (av.error.FFmpegError, OSError) as exc:
                log.debug("%s: closing after a failure: %s", self.path, exc)
        try:
            # Only a regular file we were writing: never a device such as /dev/full.
            if self.path.is_file():
                self.path.unlink()
        except OSError as exc:
            log.warning("%s: could not remove the partial output: %s", self.path, exc)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._abort()
