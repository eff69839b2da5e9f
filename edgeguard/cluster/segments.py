"""A long video in segments: cut at its own keyframes, and the protected segments joined again.

Cutting only remuxes (no decode, no re-encode): segment k holds the input's packets from one
keyframe to the next cut, so it decodes on its own and starts with a detection. Joining copies
the protected segments' packets into one MP4, each shifted back to where its segment began,
and carries the input's audio along as `VideoWriter` does. The joined file must have exactly
the input's frames and timestamps; anything else is a `JoinError` and the caller protects the
file whole instead.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error
from av.container import InputContainer
from av.packet import Packet
from av.stream import Disposition
from av.video.stream import VideoStream

from edgeguard.media.audio import AudioTrack
from edgeguard.media.container import open_input, start_offset
from edgeguard.media.video import TECHNICAL_TAGS

log = logging.getLogger(__name__)


class JoinError(Exception):
    """The protected segments do not make the input's video again (the file is protected whole)."""


@dataclass(frozen=True)
class Segment:
    index: int
    first_packet: int  # decode-order index of its keyframe among the video's packets
    packets: int
    start: int  # pts of its first frame, shifted as the reader shifts it (input time base)


@dataclass(frozen=True)
class Plan:
    """Where a video is cut, and the timestamps the joined output must have."""

    time_base: Fraction
    pts: tuple[int, ...]  # every frame's pts in presentation order, shifted as the reader shifts them
    segments: tuple[Segment, ...]

    @property
    def frames(self) -> int:
        return len(self.pts)


def _video(container: InputContainer) -> VideoStream | None:
    streams = [s for s in container.streams.video if not s.disposition & Disposition.attached_pic]
    return streams[0] if len(streams) == 1 else None


def plan(src: Path, seconds: float) -> Plan | None:
    """Cut `src` at the first keyframe after every `seconds`; None when it is one segment or cannot be cut.

    Only a closed GOP is a cut: every frame of a segment must be shown at or after its keyframe and
    before the next segment's, else the cut is not taken. A stream without timestamps on every
    packet is not cut at all (the file is then protected whole, as on one machine).
    """
    with open_input(src) as container:
        stream = _video(container)
        if stream is None or stream.time_base is None:
            return None
        tb = stream.time_base
        shift = round(start_offset(container) / tb)
        packets: list[tuple[int, bool]] = []  # (pts, keyframe) in decode order
        try:
            for packet in container.demux(stream):
                if packet.size == 0 and packet.dts is None:
                    continue
                if packet.pts is None:
                    return None
                packets.append((packet.pts - shift, packet.is_keyframe))
        except av.error.FFmpegError:
            return None  # the one-machine path reports what is wrong with it
    if not packets:
        return None
    step = seconds / tb
    starts = [0]
    for i, (pts, key) in enumerate(packets):
        if i and key and pts - packets[starts[-1]][0] >= step:
            starts.append(i)
    starts = _closed(packets, starts)
    if len(starts) < 2:
        return None
    bounds = [*starts, len(packets)]
    segments = tuple(
        Segment(k, a, b - a, min(p for p, _ in packets[a:b])) for k, (a, b) in enumerate(itertools.pairwise(bounds))
    )
    return Plan(tb, tuple(sorted(p for p, _ in packets)), segments)


def _closed(packets: list[tuple[int, bool]], starts: list[int]) -> list[int]:
    """The cuts at which every frame before the cut is shown before its keyframe, and none after it;
    with running extremes, as a day-long recording has millions of packets."""
    pts = [p for p, _ in packets]
    before = list(itertools.accumulate(pts, max))  # before[i]: the highest pts up to packet i
    after = list(itertools.accumulate(reversed(pts), min))[::-1]  # after[i]: the lowest from packet i on
    return [0, *(c for c in starts[1:] if pts[c] == after[c] and before[c - 1] < pts[c])]


def cut(src: Path, segments: tuple[Segment, ...]) -> Iterator[tuple[Segment, bytes]]:
    """Each segment of `segments` as an MP4 of its own (bytes), in order, remuxed in one pass over `src`.

    Lazily: a segment is read only when asked for, so at most one is held here at a time. JoinError
    when a segment cannot be an MP4 (a codec MP4 does not carry): the file is then protected whole.
    """
    try:
        yield from _cut(src, segments)
    except (av.error.FFmpegError, ValueError) as exc:
        raise JoinError(f"cannot cut it: {exc}") from exc


def _cut(src: Path, segments: tuple[Segment, ...]) -> Iterator[tuple[Segment, bytes]]:
    with open_input(src) as container:
        stream = _video(container)
        assert stream is not None
        packets = (p for p in container.demux(stream) if not (p.size == 0 and p.dts is None))
        index = 0
        for segment in segments:
            buffer = io.BytesIO()
            with av.open(buffer, "w", format="mp4") as out:
                out_stream = out.add_stream_from_template(stream)
                for packet in packets:
                    index += 1
                    if index - 1 < segment.first_packet:
                        continue
                    packet.stream = out_stream
                    out.mux(packet)
                    if index >= segment.first_packet + segment.packets:
                        break
            yield segment, buffer.getvalue()


def join(src: Path, parts: list[Path], plan_: Plan, out: Path, *, audio: bool, keep_metadata: bool = False) -> None:
    """Join the protected segments `parts` (in order) into `out`, with `src`'s audio when `audio`
    and its tags when `keep_metadata` (as `VideoWriter` writes them).

    JoinError when the result would not have exactly the input's frames and timestamps, or the
    segments' encodings cannot share one stream; `out` is then removed.
    """
    if len(parts) != len(plan_.segments):
        raise JoinError(f"{len(parts)} protected segments for {len(plan_.segments)}")
    try:
        _join(src, parts, plan_, out, audio, keep_metadata)
    except BaseException:
        out.unlink(missing_ok=True)
        raise


def _join(src: Path, parts: list[Path], plan_: Plan, out: Path, audio: bool, keep_metadata: bool) -> None:
    inputs: list[InputContainer] = []
    source: InputContainer | None = None
    try:
        inputs = [av.open(os.fspath(p), "r") for p in parts]
        source = open_input(src) if audio or keep_metadata else None
        streams = [c.streams.video[0] for c in inputs]
        first = streams[0]
        for k, s in enumerate(streams):
            if s.codec_context.extradata != first.codec_context.extradata or (s.width, s.height) != (
                first.width,
                first.height,
            ):
                raise JoinError(f"segment {k} was encoded with other parameters than segment 0")
        written: list[int] = []
        tb = plan_.time_base
        with av.open(os.fspath(out), "w", format="mp4", container_options={"movflags": "+faststart"}) as dst:
            video = dst.add_stream_from_template(first)
            video.time_base = tb
            track = AudioTrack.add(dst, source, out) if source is not None and audio else None
            if keep_metadata and source is not None:
                dst.metadata.update({k: v for k, v in source.metadata.items() if k not in TECHNICAL_TAGS})
                original = _video(source)
                if original is not None:
                    video.metadata.update(original.metadata)
                if track is not None:
                    track.copy_metadata()
            dst.start_encoding()
            last: int | None = None
            for segment, container, stream in zip(plan_.segments, inputs, streams, strict=True):
                for packet in _shifted(container, stream, segment, tb):
                    if packet.dts is not None:
                        if last is not None and packet.dts <= last:
                            raise JoinError(f"segment {segment.index} overlaps the one before it")
                        last = packet.dts
                    if packet.pts is not None:
                        written.append(packet.pts)
                    packet.stream = video
                    dst.mux(packet)
                    if track is not None and packet.pts is not None:
                        track.mux_until(float(packet.pts * tb))
            if track is not None:
                track.finish()
    except av.error.FFmpegError as exc:
        raise JoinError(f"joining the segments failed: {exc}") from exc
    finally:
        for c in inputs:
            c.close()
        if source is not None:
            source.close()
    if tuple(sorted(written)) != plan_.pts:
        raise JoinError(f"the joined video has {len(written)} frames, or other timestamps, for {plan_.frames}")


def _shifted(
    container: InputContainer, stream: VideoStream, segment: Segment, tb: Fraction
) -> Iterator[Packet[VideoStream]]:
    """The segment's packets in the input's time base, moved to where the segment starts."""
    own = stream.time_base or tb
    for packet in container.demux(stream):
        if packet.size == 0 and packet.dts is None:
            continue
        for attr in ("pts", "dts"):
            value = getattr(packet, attr)
            if value is not None:
                setattr(packet, attr, _rescale(value, own, tb) + segment.start)
        packet.time_base = tb
        yield packet


def _rescale(value: int, src: Fraction, dst: Fraction) -> int:
    exact = value * src / dst
    if exact.denominator != 1:
        raise JoinError(f"a timestamp {value}×{src} is not a whole number of {dst}")
    return int(exact)
