"""The source's audio in the protected MP4: which stream, copied or transcoded to AAC, and its timing.

`AudioTrack.add` picks the source's audio stream and adds its output stream;
`VideoWriter` then calls `mux_until` after each video frame, so audio packets
are interleaved with the video as it is written, and `finish` at the end.
Packets are streamed from the source one by one: memory stays flat.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import av.error
from av.audio.stream import AudioStream
from av.container import InputContainer, OutputContainer
from av.packet import Packet

from edgeguard.errors import InputError
from edgeguard.media.container import ffmpeg_reason, start_offset

log = logging.getLogger(__name__)

# Audio codecs the MP4 muxer accepts and browsers commonly play; anything else is
# transcoded to AAC rather than dropped.
MP4_COPY_AUDIO_CODECS: frozenset[str] = frozenset({"aac", "mp3", "ac3", "eac3", "opus", "alac", "flac"})

# Standard AAC sampling rates; other rates are resampled to 48 kHz.
_AAC_RATES = frozenset({8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000})


def audio_stream(container: InputContainer) -> AudioStream | None:
    """The audio stream that goes into the output: the container's first, if any."""
    audio = container.streams.audio
    return audio[0] if audio else None


class AudioTrack:
    """One source audio stream carried into an output container, packet by packet.

    Copied when MP4 can carry its codec, else decoded and encoded to AAC. Its
    timestamps lose the source's start offset, as the video's do, and copied
    packets get strictly increasing dts, as MP4 requires.
    """

    def __init__(
        self,
        out: OutputContainer,
        src: InputContainer,
        in_stream: AudioStream,
        out_stream: AudioStream,
        *,
        transcode: bool,
        path: Path,
    ) -> None:
        self.in_stream = in_stream
        self.out_stream = out_stream
        self.transcode = transcode
        self._out = out
        self._path = path
        # The same offset the reader takes off the video (see start_offset), in this stream's time base.
        self._shift = round(start_offset(src) / in_stream.time_base) if in_stream.time_base else 0
        self._last_dts: int | None = None
        self._packets: Iterator[Packet[AudioStream]] = src.demux(in_stream)
        self._pending = self._next_packet()

    @classmethod
    def add(cls, out: OutputContainer, src: InputContainer, path: Path) -> AudioTrack | None:
        """Add `src`'s audio to `out` (before its header is written); None if `src` has none.

        `path` is the output, named in log lines. Raises InputError for audio that
        can be neither copied nor decoded.
        """
        in_stream = audio_stream(src)
        if in_stream is None:
            return None
        name = in_stream.codec_context.name if in_stream.codec_context else None
        out_stream: AudioStream | None = None
        if name in MP4_COPY_AUDIO_CODECS:
            try:
                out_stream = out.add_stream_from_template(in_stream)
            except ValueError:
                log.info("%s: MP4 refuses %s audio; transcoding to AAC", path, name)
        transcode = out_stream is None
        if out_stream is None:
            if in_stream.codec_context is None:
                raise InputError(src.name, "audio codec can be neither copied to MP4 nor decoded", stage="encode")
            rate = in_stream.codec_context.sample_rate
            out_stream = out.add_stream("aac", rate=rate if rate in _AAC_RATES else 48000)
            out_stream.layout = "mono" if in_stream.codec_context.channels == 1 else "stereo"
        return cls(out, src, in_stream, out_stream, transcode=transcode, path=path)

    def copy_metadata(self) -> None:
        """Give the output stream the source stream's tags (language, title...)."""
        self.out_stream.metadata.update(self.in_stream.metadata)

    def mux_until(self, seconds: float | None) -> None:
        """Mux source packets up to `seconds` of output time (None: all the rest)."""
        while self._pending is not None:
            packet = self._pending
            stamp = packet.pts if packet.pts is not None else packet.dts
            if seconds is not None and stamp is not None and float(stamp * packet.time_base) > seconds:
                return
            self._mux(packet)
            self._pending = self._next_packet()

    def finish(self) -> None:
        """Mux every remaining packet and flush the AAC encoder when transcoding."""
        self.mux_until(None)
        if self.transcode:
            self._out.mux(self.out_stream.encode(None))

    def _next_packet(self) -> Packet[AudioStream] | None:
        packet = next(self._packets, None)
        if packet is not None and self._shift:
            if packet.pts is not None:
                packet.pts -= self._shift
            if packet.dts is not None:
                packet.dts -= self._shift
        return packet

    def _mux(self, packet: Packet[AudioStream]) -> None:
        flush = packet.size == 0 and packet.dts is None
        if not self.transcode:
            if not flush:
                # Some muxers (AVI) repeat audio timestamps; MP4 needs them strictly increasing,
                # so nudge them forward as the ffmpeg CLI does instead of failing the file.
                last = self._last_dts
                if packet.dts is not None and last is not None and packet.dts <= last:
                    shift = last + 1 - packet.dts
                    packet.dts += shift
                    if packet.pts is not None:
                        packet.pts = max(packet.pts + shift, packet.dts)
                if packet.dts is not None:
                    self._last_dts = packet.dts
                packet.stream = self.out_stream
                self._out.mux(packet)
            return
        try:
            frames = self.in_stream.decode(None if flush else packet)
        except av.error.InvalidDataError as exc:
            # One bad audio packet must not lose the protected video.
            log.warning("%s: skipping an undecodable audio packet: %s", self._path, ffmpeg_reason(exc))
            return
        for audio_frame in frames:
            self._out.mux(self.out_stream.encode(audio_frame))
