"""VideoReader/VideoWriter on real clips: round trips checked with ffprobe, bad inputs refused."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import av
import numpy as np
import pytest
from av.audio.stream import AudioStream

from edgeguard.errors import FileError, InputError
from edgeguard.media import VIDEO_EXTENSIONS, media_kind
from edgeguard.media.video import Frame, VideoInfo, VideoReader, VideoWriter
from tests.conftest import media
from tests.support.probe import ffprobe, frame_times, streams, top_level_boxes

MAX_PIXELS = 40_000_000


def clip(name: str) -> Path:
    return media(name)


def roundtrip(src: Path, out: Path, **kwargs: Any) -> tuple[VideoInfo, list[Fraction]]:
    """Read `src`, write every frame unchanged; return the info and the input frame times."""
    options: dict[str, Any] = {"source": src, "crf": 23, "preset": "ultrafast", "audio": "keep"}
    options.update(kwargs)
    times: list[Fraction] = []
    with VideoReader(src, max_pixels=MAX_PIXELS) as reader, VideoWriter(out, reader.info, **options) as writer:
        for frame in reader.frames():
            assert frame.pts is not None
            times.append(frame.pts * reader.info.time_base)
            writer.write(frame, frame.image)
    return reader.info, times


def remux(
    src: Path,
    out: Path,
    *,
    max_packets: int | None = None,
    audio: bool = True,
    video: bool = True,
    setup: Callable[[av.container.OutputContainer, list[av.stream.Stream]], None] | None = None,
    container_options: dict[str, str] | None = None,
) -> Path:
    """Copy packets of `src` into `out` (no re-encode), optionally tagging the output first."""
    with av.open(str(src)) as inp, av.open(str(out), "w", container_options=container_options) as outp:
        wanted = ([inp.streams.video[0]] if video else []) + (list(inp.streams.audio[:1]) if audio else [])
        mapping = {s.index: outp.add_stream_from_template(s) for s in wanted}
        if setup is not None:
            setup(outp, list(mapping.values()))
        counts: dict[int, int] = {}
        for packet in inp.demux(wanted):
            if packet.dts is None:
                continue
            index = packet.stream.index
            counts[index] = counts.get(index, 0) + 1
            if max_packets is not None and counts[index] > max_packets:
                continue
            packet.stream = mapping[index]
            outp.mux(packet)
    return out


# ------------------------------------------------------------------ kinds


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("a.mp4", "video"),
        ("croped_mini_subject_2_typeset.MP4", "video"),
        ("b.MoV", "video"),
        ("c.avi", "video"),
        ("d.mkv", "video"),
        ("e.webm", "video"),
        ("f.ts", "video"),
        ("g.JPG", "image"),
        ("h.jpeg", "image"),
        ("i.png", "image"),
        ("j.webp", "image"),
        ("k.bmp", "image"),
        ("notes.txt", None),
        ("noext", None),
        ("archive.mp4.part", None),
    ],
)
def test_media_kind_is_case_insensitive(name: str, kind: str | None) -> None:
    assert media_kind(Path("/in") / name) == kind


def test_extensions_are_lower_case() -> None:
    assert all(ext == ext.lower() and ext.startswith(".") for ext in VIDEO_EXTENSIONS)


# ------------------------------------------------------------------ round trips


@pytest.fixture(scope="module")
def dos_roundtrip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, VideoInfo, list[Fraction]]:
    src = clip("dos.mp4")
    out = tmp_path_factory.mktemp("dos") / "out.mp4"
    info, times = roundtrip(src, out, audio="keep")
    return src, out, info, times


def test_probe_reports_the_clip(dos_roundtrip: tuple[Path, Path, VideoInfo, list[Fraction]]) -> None:
    _src, _out, info, times = dos_roundtrip
    assert (info.width, info.height, info.frames, info.fps) == (1280, 720, 60, Fraction(25))
    assert (info.codec, info.audio_codec, info.rotation) == ("h264", "aac", 0)
    assert info.duration == pytest.approx(2.4, abs=0.01)
    assert len(times) == 60


def test_frames_are_contiguous_bgr() -> None:
    with VideoReader(clip("dos.mp4"), max_pixels=MAX_PIXELS) as reader:
        frames: Iterator[Frame] = reader.frames()
        first = next(frames)
        assert first.index == 0
        assert first.image.shape == (720, 1280, 3)
        assert first.image.dtype == np.uint8
        assert first.image.flags["C_CONTIGUOUS"]
        assert next(frames).index == 1


def test_roundtrip_is_browser_playable_h264(dos_roundtrip: tuple[Path, Path, VideoInfo, list[Fraction]]) -> None:
    _src, out, _info, _times = dos_roundtrip
    probe = ffprobe(out)
    (video,) = streams(probe, "video")
    assert video["codec_name"] == "h264"
    assert video["pix_fmt"] == "yuv420p"
    assert (video["width"], video["height"]) == (1280, 720)
    assert int(video["nb_frames"]) == 60
    assert video["avg_frame_rate"] == "25/1"
    assert not video.get("side_data_list"), "no display matrix: frames are written upright"
    boxes = top_level_boxes(out)
    assert boxes.index("moov") < boxes.index("mdat"), f"faststart: moov must precede mdat, got {boxes}"


def test_roundtrip_keeps_every_timestamp(dos_roundtrip: tuple[Path, Path, VideoInfo, list[Fraction]]) -> None:
    _src, out, _info, times = dos_roundtrip
    assert frame_times(out) == times


def test_roundtrip_copies_audio(dos_roundtrip: tuple[Path, Path, VideoInfo, list[Fraction]]) -> None:
    src, out, _info, _times = dos_roundtrip
    (audio_in,) = streams(ffprobe(src), "audio")
    (audio_out,) = streams(ffprobe(out), "audio")
    assert audio_out["codec_name"] == "aac"
    assert audio_out["nb_frames"] == audio_in["nb_frames"], "copied packet for packet"
    assert float(audio_out["duration"]) == pytest.approx(float(audio_in["duration"]), abs=0.05)


def test_upper_case_mp4_without_audio(tmp_path: Path) -> None:
    src = clip("croped_mini_subject_2_typeset.MP4")
    out = tmp_path / "out.mp4"
    info, times = roundtrip(src, out, audio="strip")
    assert (info.width, info.height, info.fps) == (640, 360, Fraction(30000, 1001))
    probe = ffprobe(out)
    assert streams(probe, "audio") == []
    (video,) = streams(probe, "video")
    assert int(video["nb_frames"]) == len(times) == 185
    assert video["avg_frame_rate"] == "30000/1001"
    assert frame_times(out) == times


def test_avi_without_real_pts_is_timed_by_frame_order(tmp_path: Path) -> None:
    # AVI stores no presentation times; with B-frames the decoder's pts are
    # scrambled. Frame k must land at k/fps, and the audio must follow along.
    src = clip("vtest.avi")
    out = tmp_path / "out.mp4"
    info, times = roundtrip(src, out)
    assert (info.width, info.height, info.fps, info.frames) == (480, 360, Fraction(10), 795)
    assert times == [Fraction(k, 10) for k in range(795)]
    probe = ffprobe(out)
    (video,) = streams(probe, "video")
    assert int(video["nb_frames"]) == 795
    assert video["avg_frame_rate"] == "10/1"
    assert frame_times(out) == times
    (audio,) = streams(probe, "audio")
    assert float(audio["duration"]) == pytest.approx(79.5, abs=0.2)


def start_times(path: Path) -> dict[str, float]:
    probe = ffprobe(path)
    return {s["codec_type"]: float(s["start_time"]) for s in probe["streams"]}


def test_transport_stream_clock_is_moved_to_zero_keeping_sync(tmp_path: Path) -> None:
    # MPEG-TS (camcorder .mts too) starts at an arbitrary clock; an MP4 must start at 0.
    src = remux(clip("dos.mp4"), tmp_path / "clip.ts", container_options={"output_ts_offset": "10"})
    before = start_times(src)
    assert before["video"] >= 10, before
    out = tmp_path / "out.mp4"
    info, times = roundtrip(src, out)
    assert info.frames is None  # a TS declares no frame count
    assert times[0] == 0 and len(times) == 60
    after = start_times(out)
    assert after["video"] == 0
    assert after["audio"] - after["video"] == pytest.approx(before["audio"] - before["video"], abs=0.002)
    assert frame_times(out) == times


def test_metadata_is_stripped_unless_kept(tmp_path: Path) -> None:
    secret = {
        "location": "+48.8584+002.2945/",
        "make": "Acme",
        "model": "Spy-1",
        "title": "Secret meeting",
        "creation_time": "2024-05-01T10:00:00.000000Z",
    }

    def tag(container: av.container.OutputContainer, added: list[av.stream.Stream]) -> None:
        container.metadata.update(secret)
        for stream in added:
            stream.metadata.update({"creation_time": secret["creation_time"], "handler_name": "Acme Handler"})

    src = remux(clip("ecuador.mp4"), tmp_path / "tagged.mov", setup=tag)
    probe_in = ffprobe(src)
    assert probe_in["format"]["tags"]["location"].startswith("+48.8584")
    assert probe_in["format"]["tags"]["make"] == "Acme"

    stripped = tmp_path / "stripped.mp4"
    roundtrip(src, stripped, keep_metadata=False)
    probe = ffprobe(stripped)
    tags = probe["format"].get("tags", {})
    for key in ("location", "location-eng", "make", "model", "title", "creation_time"):
        assert key not in tags, f"{key} leaked: {tags}"
    for stream in probe["streams"]:
        assert "creation_time" not in stream.get("tags", {})
        assert "Acme" not in stream.get("tags", {}).get("handler_name", "")
    raw = stripped.read_bytes()
    assert b"Acme" not in raw and b"+48.8584" not in raw and b"Secret meeting" not in raw
    assert len(streams(probe, "audio")) == 1

    kept = tmp_path / "kept.mp4"
    roundtrip(src, kept, keep_metadata=True)
    tags = ffprobe(kept)["format"]["tags"]
    assert tags["location"].startswith("+48.8584")
    assert tags["title"] == "Secret meeting"


@pytest.mark.parametrize(
    ("degrees", "hflip", "turn"),
    [
        (90, False, lambda a: np.rot90(a, 1)),
        (180, False, lambda a: np.rot90(a, 2)),
        (270, False, lambda a: np.rot90(a, 3)),
        (0, True, lambda a: a[:, ::-1]),
        (90, True, lambda a: np.rot90(a, 1)[:, ::-1]),
    ],
)
def test_rotated_input_is_decoded_and_written_upright(
    tmp_path: Path, degrees: int, hflip: bool, turn: Callable[[np.ndarray], np.ndarray]
) -> None:
    src = clip("dos.mp4")

    def rotate(_container: av.container.OutputContainer, added: list[av.stream.Stream]) -> None:
        added[0].set_display_rotation(degrees, hflip=hflip)  # type: ignore[attr-defined]

    rotated = remux(src, tmp_path / "rotated.mp4", max_packets=12, audio=False, setup=rotate)
    with VideoReader(src, max_pixels=MAX_PIXELS) as plain:
        expected = turn(next(plain.frames()).image)

    out = tmp_path / "out.mp4"
    with VideoReader(rotated, max_pixels=MAX_PIXELS) as reader:
        assert reader.info.rotation == degrees % 360
        assert (reader.info.height, reader.info.width, 3) == expected.shape
        frames = list(reader.frames())
        assert len(frames) == 12
        # Same decoder, same bits: the upright frame is exactly the turned original.
        np.testing.assert_array_equal(frames[0].image, expected)
        with VideoWriter(out, reader.info, source=rotated, crf=18, preset="ultrafast", audio="keep") as writer:
            for frame in frames:
                writer.write(frame, frame.image)

    (video,) = streams(ffprobe(out), "video")
    assert (video["width"], video["height"]) == (expected.shape[1], expected.shape[0])
    assert not video.get("side_data_list"), "output must carry no rotation"
    with VideoReader(out, max_pixels=MAX_PIXELS) as check:
        assert check.info.rotation == 0
        written = next(check.frames()).image
    assert np.abs(written.astype(int) - expected.astype(int)).mean() < 4

    # Independent oracle: the ffmpeg CLI's own autorotation agrees with ours.
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is not None and not hflip:  # old ffmpeg CLIs ignore mirroring
        raw = subprocess.run(
            [ffmpeg, "-v", "error", "-i", str(rotated), "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "bgr24", "-"],
            check=True,
            capture_output=True,
        ).stdout
        theirs = np.frombuffer(raw, dtype=np.uint8).reshape(expected.shape)
        assert np.abs(theirs.astype(int) - expected.astype(int)).mean() < 3


def synthetic_clip(
    path: Path,
    *,
    width: int,
    height: int,
    pts_ms: list[int],
    audio_codec: str | None = None,
) -> Path:
    """A small clip with exact timestamps (time base 1/1000); odd sizes via yuv444p."""
    # Smooth ramps survive 4:2:0 chroma; a white last row and column mark the edge.
    x = np.linspace(0, 255, width)[None, :]
    y = np.linspace(0, 255, height)[:, None]
    base = np.stack(np.broadcast_arrays(x, y, (x + y) / 2), axis=-1).astype(np.uint8)
    base[-1, :] = base[:, -1] = 255
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=25, options={"preset": "ultrafast", "crf": "18"})
        video.width, video.height, video.pix_fmt = width, height, "yuv444p"
        video.codec_context.time_base = Fraction(1, 1000)
        audio = cast(AudioStream, out.add_stream(audio_codec, rate=48000)) if audio_codec else None
        for i, pts in enumerate(pts_ms):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(base // (1 + i % 2)), format="bgr24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if audio is not None:
            seconds = (pts_ms[-1] + 40) / 1000
            samples = (np.sin(np.arange(int(48000 * seconds)) / 10) * 8000).astype(np.int16)
            for start in range(0, samples.size, 1024):
                chunk = samples[start : start + 1024].reshape(1, -1)
                sound = av.AudioFrame.from_ndarray(chunk, format="s16", layout="mono")
                sound.sample_rate, sound.pts = 48000, start
                out.mux(audio.encode(sound))
            out.mux(audio.encode(None))
    return path


def test_odd_size_vfr_clip_keeps_pixels_and_timestamps(tmp_path: Path) -> None:
    pts_ms = [0, 40, 100, 110, 250, 260, 270, 500, 540, 1000]  # variable frame rate
    src = synthetic_clip(tmp_path / "odd.mkv", width=321, height=241, pts_ms=pts_ms)
    out = tmp_path / "out.mp4"
    with VideoReader(src, max_pixels=MAX_PIXELS) as reader:
        assert (reader.info.width, reader.info.height) == (321, 241)
        frames = list(reader.frames())
        with VideoWriter(out, reader.info, source=src, crf=10, preset="ultrafast", audio="keep") as writer:
            assert writer.encoded_size == (322, 242)
            for frame in frames:
                writer.write(frame, frame.image)
    assert frame_times(out) == [Fraction(ms, 1000) for ms in pts_ms]
    (video,) = streams(ffprobe(out), "video")
    assert (video["width"], video["height"], video["pix_fmt"]) == (322, 242, "yuv420p")
    with VideoReader(out, max_pixels=MAX_PIXELS) as check:
        written = next(check.frames()).image
    original = frames[0].image.astype(int)
    # Every input pixel survives (nothing cropped, the white edge is there) and
    # the one-pixel pad repeats that edge.
    assert np.abs(written[:241, :321].astype(int) - original).mean() < 3
    assert written[:241, 320].min() > 200 and written[240, :321].min() > 200
    assert np.abs(written[:241, 321].astype(int) - original[:, 320]).mean() < 8
    assert np.abs(written[241, :321].astype(int) - original[240, :]).mean() < 8


def test_audio_mp4_cannot_carry_is_transcoded_to_aac(tmp_path: Path) -> None:
    pts_ms = [i * 40 for i in range(25)]
    src = synthetic_clip(tmp_path / "pcm.mkv", width=160, height=120, pts_ms=pts_ms, audio_codec="pcm_s16le")
    assert streams(ffprobe(src), "audio")[0]["codec_name"] == "pcm_s16le"
    out = tmp_path / "out.mp4"
    roundtrip(src, out, audio="keep")
    (audio,) = streams(ffprobe(out), "audio")
    assert audio["codec_name"] == "aac"
    assert float(audio["duration"]) == pytest.approx(1.0, abs=0.06)


# ------------------------------------------------------------------ bad inputs


def expect_input_error(path: Path, max_pixels: int = MAX_PIXELS) -> InputError:
    """Open and fully decode `path`; return the InputError it must raise."""
    with pytest.raises(InputError) as caught, VideoReader(path, max_pixels=max_pixels) as reader:
        for _ in reader.frames():
            pass
    return caught.value


def test_missing_file(tmp_path: Path) -> None:
    assert "does not exist" in expect_input_error(tmp_path / "gone.mp4").reason


def test_zero_byte_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.touch()
    assert "empty file" in expect_input_error(empty).reason


def test_truncated_mp4_with_index_at_the_end(tmp_path: Path) -> None:
    data = clip("dos.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 3 // 10])
    error = expect_input_error(cut)
    assert "not a readable media file" in error.reason


def test_truncated_faststart_mp4_fails_while_decoding(
    dos_roundtrip: tuple[Path, Path, VideoInfo, list[Fraction]], tmp_path: Path
) -> None:
    # Our own output has the index first, so a cut copy opens and then runs dry.
    data = dos_roundtrip[1].read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 3 // 10])
    error = expect_input_error(cut)
    assert error.stage == "decode"
    assert "truncated" in error.reason or "corrupt" in error.reason


def test_garbage_inside_the_stream_fails_while_decoding(tmp_path: Path) -> None:
    data = bytearray(clip("dos.mp4").read_bytes())
    data[300_000:340_000] = np.random.default_rng(0).integers(0, 256, 40_000, dtype=np.uint8).tobytes()
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    error = expect_input_error(damaged)
    assert error.stage == "decode"
    assert "corrupt" in error.reason


def test_random_bytes_named_mp4(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(1).integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    reason = expect_input_error(junk).reason
    assert "not a readable media file" in reason or "no video stream" in reason


def test_text_file_named_avi(tmp_path: Path) -> None:
    text = tmp_path / "notes.avi"
    text.write_text("meeting notes\n" * 200)
    assert "not a readable media file" in expect_input_error(text).reason


def test_audio_only_file(tmp_path: Path) -> None:
    audio_only = remux(clip("dos.mp4"), tmp_path / "sound.mp4", video=False)
    assert expect_input_error(audio_only).reason == "no video stream"


def test_dimensions_above_max_pixels_are_refused_before_decoding() -> None:
    error = expect_input_error(clip("dos.mp4"), max_pixels=1000)
    assert error.reason == "absurd dimensions 1280x720 exceed media.max_pixels=1000"
    assert error.stage == "probe"


# ------------------------------------------------------------------ writer failures


def test_writer_removes_partial_file_when_the_body_raises(tmp_path: Path) -> None:
    src = clip("dos.mp4")
    out = tmp_path / "partial.mp4"
    with (
        VideoReader(src, max_pixels=MAX_PIXELS) as reader,
        pytest.raises(RuntimeError, match="detector crashed"),
        VideoWriter(out, reader.info, source=src, crf=23, preset="ultrafast", audio="keep") as writer,
    ):
        for frame in reader.frames():
            writer.write(frame, frame.image)
            if frame.index == 5:
                assert out.exists()
                raise RuntimeError("detector crashed")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_disk_full_is_a_transient_encode_error() -> None:
    device = Path("/dev/full")
    if not device.is_char_device():
        pytest.skip("/dev/full MISSING: cannot simulate a full disk")
    src = clip("dos.mp4")
    with (
        VideoReader(src, max_pixels=MAX_PIXELS) as reader,
        pytest.raises(FileError) as caught,
        VideoWriter(device, reader.info, source=src, crf=23, preset="ultrafast", audio="keep") as writer,
    ):
        for frame in reader.frames():
            writer.write(frame, frame.image)
    assert caught.value.transient
    assert caught.value.stage == "encode"
    assert "No space left" in caught.value.reason
    assert device.is_char_device(), "cleanup must never remove anything but a regular file"


def test_writer_rejects_a_wrong_image_size(tmp_path: Path) -> None:
    src = clip("dos.mp4")
    with VideoReader(src, max_pixels=MAX_PIXELS) as reader:
        frame = next(reader.frames())
        with (
            pytest.raises(ValueError, match="expected"),
            VideoWriter(
                tmp_path / "o.mp4", reader.info, source=None, crf=23, preset="ultrafast", audio="strip"
            ) as writer,
        ):
            writer.write(frame, frame.image[:100])
    assert not (tmp_path / "o.mp4").exists()


def test_a_second_video_stream_is_refused_not_dropped(tmp_path: Path) -> None:
    """Protecting one stream and dropping the other would lose it with the original (a black first stream)."""
    path = tmp_path / "two.mkv"
    with av.open(str(path), "w") as out:
        streams = [out.add_stream("libx264", rate=25, options={"preset": "ultrafast"}) for _ in range(2)]
        for s in streams:
            s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(5):
            for k, s in enumerate(streams):
                frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 200 * k, np.uint8), format="bgr24")
                frame.pts = i
                out.mux(s.encode(frame))
        for s in streams:
            out.mux(s.encode(None))
    assert "2 video streams" in expect_input_error(path).reason


def test_frame_count_budget_from_header_and_while_decoding(tmp_path: Path) -> None:
    """A flood of tiny frames costs per-frame work: media.max_frames stops it, declared or not."""
    mp4 = synthetic_clip(tmp_path / "flood.mp4", width=16, height=16, pts_ms=[40 * i for i in range(30)])
    with pytest.raises(InputError, match=r"declares 30 frames, over media.max_frames=20"):
        VideoReader(mp4, max_pixels=MAX_PIXELS, max_frames=20)
    ts = tmp_path / "flood.ts"  # MPEG-TS declares no frame count: the decoder counts
    remux(mp4, ts)
    with (
        pytest.raises(InputError, match=r"more than media.max_frames=20"),
        VideoReader(ts, max_pixels=MAX_PIXELS, max_frames=20) as reader,
    ):
        for _ in reader.frames():
            pass
    with VideoReader(ts, max_pixels=MAX_PIXELS, max_frames=30) as reader:
        assert sum(1 for _ in reader.frames()) == 30


def test_frame_memory_budget(tmp_path: Path) -> None:
    clip_ = synthetic_clip(tmp_path / "c.mp4", width=320, height=240, pts_ms=[0, 40])
    with pytest.raises(InputError, match=r"takes 0 MiB decoded, over media.max_frame_mb"):
        VideoReader(clip_, max_pixels=MAX_PIXELS, max_frame_bytes=320 * 240 * 3 - 1)
    with VideoReader(clip_, max_pixels=MAX_PIXELS, max_frame_bytes=320 * 240 * 3) as reader:
        assert reader.info.width == 320
