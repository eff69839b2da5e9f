"""End to end on real media with yolox_nano: people hidden, the rest left alone, the file a user expects.

Privacy is checked against the detector itself: the same `create_detector(cfg)` is run on every
input frame, and every person it finds must be covered by the fill colour in the OUTPUT.
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import numpy.typing as npt
import pytest

from edgeguard.config import Config, load_config
from edgeguard.detections import Detections
from edgeguard.detectors.factory import create_detector
from edgeguard.engine import Engine, Result
from edgeguard.errors import Cancelled
from edgeguard.frames import Image
from edgeguard.masks import rasterize
from tests.conftest import media
from tests.support.probe import ffmpeg, ffprobe, frame_times, streams, top_level_boxes

RGB = (255, 0, 255)
BGR = np.array(RGB[::-1])
FILL = ["detector.model=yolox_nano", "protect.style=fill", f"protect.color=[{RGB[0]}, {RGB[1]}, {RGB[2]}]"]
CODEC_TOLERANCE = 40  # H.264 moves colours a little: distance in BGR units
COVERED = 0.98  # share of a person's pixels that must be within the tolerance (every-frame mode)
# Keyframe mode carries each instance between detections, so it is held to what the bench measures
# against the every-frame detector, whose boxes for one person swing from frame to frame (on
# frames 10-11 of dos.mp4 one swings wide of the person: 86-90% of it hidden): each instance
# this much hidden at least, and this share of all their pixels.
CARRIED_EACH = 0.8
CARRIED_COVERED = 0.99
MARGIN = 16  # pixels beyond the grown area where codec bleeding (one macroblock) is still allowed
MIN_PSNR = 30.0  # dB, far from every person, output vs input


# ------------------------------------------------------------------ helpers


def decode(path: Path) -> Iterator[Image]:
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="bgr24")


def near_fill(pixels: Image) -> float:
    """Share of `pixels` (N x 3 BGR) within the codec tolerance of the fill colour."""
    if len(pixels) == 0:
        return 1.0
    return float((np.linalg.norm(pixels.astype(np.int32) - BGR, axis=1) <= CODEC_TOLERANCE).mean())


def person_pixels(image: Image, det: Detections, i: int, shape: str) -> Image:
    x0, y0, x1, y1 = (int(v) for v in det.boxes[i])
    region = image[y0:y1, x0:x1]
    if shape == "mask":
        assert det.masks is not None
        return region[det.masks[i]]
    return region.reshape(-1, 3)


def outside(det_sets: list[Detections], shape: tuple[int, int], grow: int, head: float = 0.0) -> npt.NDArray[np.bool_]:
    """Pixels farther than `grow` from every box of every detection set (each box extended
    upward by `head` x its height: protect.head_margin)."""
    far = np.ones(shape, np.bool_)
    for det in det_sets:
        for x0, y0, x1, y1 in det.boxes.tolist():
            top = y0 - int(np.ceil(head * (y1 - y0)))
            far[max(0, top - grow) : y1 + grow, max(0, x0 - grow) : x1 + grow] = False
    return far


def psnr(a: Image, b: Image) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255**2 / mse)


@pytest.fixture(scope="module")
def models_env(models_dir: Path) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEGUARD_MODELS_DIR", str(models_dir))
        mp.delenv("EDGEGUARD_CONFIG", raising=False)
        yield models_dir


@dataclass
class Run:
    cfg: Config
    src: Path
    dst: Path
    result: Result
    progress: list[tuple[int, int | None]]


@pytest.fixture(scope="module")
def protect_video(models_env: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Run]:
    """Protect a clip once per (clip, settings) in this module."""
    cache: dict[tuple[str, tuple[str, ...]], Run] = {}

    def run(src: Path, *overrides: str) -> Run:
        key = (str(src), overrides)
        if key not in cache:
            cfg = load_config(None, overrides)
            dst = tmp_path_factory.mktemp("video") / (src.stem + ".mp4")
            calls: list[tuple[int, int | None]] = []
            result = Engine(cfg).protect_file(src, dst, progress=lambda done, total: calls.append((done, total)))
            cache[key] = Run(cfg, src, dst, result, calls)
        return cache[key]

    return run


@pytest.fixture(scope="module")
def reference() -> Callable[[Run], list[Detections]]:
    """What `create_detector(run.cfg)` finds on every input frame (computed once per clip and detector config)."""
    cache: dict[tuple[str, str], list[Detections]] = {}

    def detect(run: Run) -> list[Detections]:
        key = (str(run.src), run.cfg.detector.model_dump_json())
        if key not in cache:
            detector = create_detector(run.cfg)
            cache[key] = [detector.detect(frame) for frame in decode(run.src)]
        return cache[key]

    return detect


# ------------------------------------------------------------------ 1. privacy: images (exact)


@pytest.mark.parametrize("shape", ["box", "mask"])
def test_image_people_filled_exactly_and_nothing_else_touched(shape: str, models_env: Path, tmp_path: Path) -> None:
    src = tmp_path / "city.png"  # lossless in and out: every pixel can be compared exactly
    assert cv2.imwrite(str(src), cv2.imread(str(media("city.jpg"))))
    cfg = load_config(None, [*FILL, f"protect.shape={shape}", "detector.yolox.silhouettes=true"])
    dst = tmp_path / "out.png"
    result = Engine(cfg).protect_file(src, dst)

    before = cv2.imread(str(src), cv2.IMREAD_UNCHANGED)
    after = cv2.imread(str(dst), cv2.IMREAD_UNCHANGED)
    assert after.shape == before.shape
    # A photo is looked at as hard as a keyframe (nothing else will look at it).
    det = create_detector(cfg).detect(before.copy(), cfg.temporal.keyframe_confidence)
    assert len(det) >= 5, "city.jpg is a street full of pedestrians"
    assert result.detections == len(det)
    for i in range(len(det)):
        pixels = person_pixels(after, det, i, shape)
        assert (pixels == BGR).all(), f"person {i} at {det.boxes[i].tolist()} is not completely hidden"

    changed = (after != before).any(axis=2)
    assert (after[changed] == BGR).all(), "fill must not blend"
    c = cfg.protect
    expected = rasterize(det, before.shape[1], before.shape[0], shape=shape, dilate=c.dilate, head=c.head_margin) > 0
    assert (changed == expected).all(), "exactly the people (grown, with the strip above each head) are hidden"
    if shape == "mask":
        union = ~outside([det], before.shape[:2], 0)
        assert changed[union].mean() < 0.95, "shape=mask with silhouettes hid whole boxes"


# ------------------------------------------------------------------ 1. privacy: video (codec tolerance)


def check_video_privacy(
    run: Run,
    dets: list[Detections],
    shape: str,
    window: int,
    grow: int,
    loose: list[Detections] | None = None,
    *,
    each: float = COVERED,
    overall: float = COVERED,
) -> None:
    """Every person the detector found in an input frame (`dets`) is hidden in that output frame
    (`each` of them at least, `overall` of all their pixels); pixels farther than `grow` from every
    person within `window` frames are close to the input.

    `loose`: detections as keyframes see them (lower threshold), which may hide more than `dets`;
    "far" is then far from those too.
    """
    assert sum(len(d) > 0 for d in dets) >= len(dets) // 2, "the clip should show people"
    outputs = decode(run.dst)
    hidden = total = 0.0
    for i, src_frame in enumerate(decode(run.src)):
        out_frame = next(outputs)
        det = dets[i]
        for j in range(len(det)):
            pixels = person_pixels(out_frame, det, j, shape)
            share = near_fill(pixels)
            hidden, total = hidden + share * len(pixels), total + len(pixels)
            assert share >= each, f"frame {i}: person {det.boxes[j].tolist()} only {share:.1%} hidden"
        near = [*dets[max(0, i - window) : i + window + 1], *(loose or [])[max(0, i - window) : i + window + 1]]
        far = outside(near, src_frame.shape[:2], grow, run.cfg.protect.head_margin)
        assert far.mean() > 0.3
        got = psnr(out_frame[far], src_frame[far])
        assert got >= MIN_PSNR, f"frame {i}: the rest of the frame changed (PSNR {got:.1f} dB)"
    assert next(outputs, None) is None
    assert hidden / total >= overall, f"only {hidden / total:.2%} of the people's pixels hidden"


# Both runs use silhouettes so the detector config, and so the reference detections, are the same.
DOS_KEYFRAMES = (*FILL, "protect.shape=box", "detector.yolox.silhouettes=true")
DOS_EVERY_FRAME = (*FILL, "protect.shape=mask", "detector.yolox.silhouettes=true", "temporal.keyframe_interval=1")


def test_video_keyframe_mode_hides_people_and_leaves_the_rest(
    protect_video: Callable[..., Run], reference: Callable[[Run], list[Detections]]
) -> None:
    run = protect_video(media("dos.mp4"), *DOS_KEYFRAMES)
    # Protection is carried between keyframes: "far" is far from every person within one interval,
    # beyond the widest carried margin (a quarter of a 250 px person).
    t = run.cfg.temporal
    detector = create_detector(run.cfg)
    loose = [detector.detect(frame, t.keyframe_confidence) for frame in decode(run.src)]
    grow = run.cfg.protect.dilate + 64 + MARGIN
    check_video_privacy(
        run, reference(run), "box", t.keyframe_interval, grow, loose, each=CARRIED_EACH, overall=CARRIED_COVERED
    )
    assert 0 < run.result.keyframes < run.result.frames == 60


def test_video_every_frame_mode_hides_silhouettes_and_only_them(
    protect_video: Callable[..., Run], reference: Callable[[Run], list[Detections]]
) -> None:
    run = protect_video(media("dos.mp4"), *DOS_EVERY_FRAME)
    assert run.result.keyframes == run.result.frames == 60
    check_video_privacy(run, reference(run), "mask", 0, run.cfg.protect.dilate + MARGIN)


def test_keyframe_mode_hides_everyone_the_detector_finds(protect_video: Callable[..., Run]) -> None:
    """A handheld clip: every person the every-frame detector finds is at least 80% hidden, and
    99% of all their pixels are. (Not ecuador.mp4: on three frames of it the detector calls a road
    sign a person, and no keyframe around them, even at its lower threshold, sees that sign.)"""
    run = protect_video(media("dos.mp4"), *FILL, "protect.shape=box")
    detector = create_detector(run.cfg)
    leaks, hidden, total = [], 0.0, 0
    for i, (src_frame, out_frame) in enumerate(zip(decode(run.src), decode(run.dst), strict=True)):
        det = detector.detect(src_frame)
        for j in range(len(det)):
            pixels = person_pixels(out_frame, det, j, "box")
            share = near_fill(pixels)
            hidden, total = hidden + share * len(pixels), total + len(pixels)
            if share < CARRIED_EACH:
                leaks.append((i, det.boxes[j].tolist(), round(float(det.scores[j]), 2), round(share, 3)))
    assert leaks == []
    assert total > 0 and hidden / total >= CARRIED_COVERED


# ------------------------------------------------------------------ 2. video properties


def test_video_keeps_timing_and_is_web_ready(protect_video: Callable[..., Run]) -> None:
    run = protect_video(media("dos.mp4"), *DOS_KEYFRAMES)
    probe_in, probe_out = ffprobe(run.src), ffprobe(run.dst)
    (vin,), (vout,) = streams(probe_in, "video"), streams(probe_out, "video")
    assert vout["codec_name"] == "h264"
    assert vout["pix_fmt"] == "yuv420p"
    assert (vout["width"], vout["height"]) == (vin["width"], vin["height"]) == (1280, 720)
    assert int(vout["nb_frames"]) == int(vin["nb_frames"]) == run.result.frames == 60
    assert vout["avg_frame_rate"] == vin["avg_frame_rate"] == "25/1"
    assert float(vout["duration"]) == pytest.approx(float(vin["duration"]), abs=0.001)
    assert frame_times(run.dst) == frame_times(run.src)
    boxes = top_level_boxes(run.dst)
    assert boxes.index("moov") < boxes.index("mdat"), f"not faststart: {boxes}"
    (ain,), (aout,) = streams(probe_in, "audio"), streams(probe_out, "audio")
    assert aout["codec_name"] == "aac"
    assert (aout["sample_rate"], aout["channels"]) == (ain["sample_rate"], ain["channels"])
    assert float(aout["duration"]) == pytest.approx(float(ain["duration"]), abs=0.05)
    # Progress was reported for every frame, against the declared total.
    assert [d for d, _ in run.progress] == list(range(1, 61))
    assert {t for _, t in run.progress} == {60}


@pytest.fixture(scope="module")
def desk_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 30 frames of the seed's upper-case .MP4 clip (with its AAC audio), same extension."""
    src = tmp_path_factory.mktemp("desk") / "desk.MP4"
    ffmpeg("-i", media("croped_mini_subject_2_typeset.MP4"), "-frames:v", "30", "-c", "copy", src)
    return src


def test_audio_strip_drops_the_audio_stream(protect_video: Callable[..., Run], desk_clip: Path) -> None:
    assert [a["codec_name"] for a in streams(ffprobe(desk_clip), "audio")] == ["aac"]
    run = protect_video(desk_clip, *FILL, "video.audio=strip")
    probe = ffprobe(run.dst)
    assert streams(probe, "audio") == []
    assert int(streams(probe, "video")[0]["nb_frames"]) == 30


def test_upper_case_mp4_extension(protect_video: Callable[..., Run], desk_clip: Path) -> None:
    src = desk_clip
    run = protect_video(src, *FILL)
    assert run.dst.suffix == ".mp4"
    probe = ffprobe(run.dst)
    (video,) = streams(probe, "video")
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", 640, 360)
    assert int(video["nb_frames"]) == run.result.frames == 30
    assert video["avg_frame_rate"] == "30000/1001"
    assert frame_times(run.dst) == frame_times(src)
    assert [a["codec_name"] for a in streams(probe, "audio")] == ["aac"]


@pytest.fixture(scope="module")
def avi_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("avi") / "campus.avi"
    ffmpeg("-i", media("vtest.avi"), "-frames:v", "20", "-an", "-c:v", "copy", out)
    return out


def test_avi_input_gives_an_mp4(protect_video: Callable[..., Run], avi_clip: Path) -> None:
    run = protect_video(avi_clip, *FILL)
    probe = ffprobe(run.dst)
    assert "mp4" in probe["format"]["format_name"]
    (video,) = streams(probe, "video")
    assert (video["codec_name"], video["pix_fmt"]) == ("h264", "yuv420p")
    assert int(video["nb_frames"]) == run.result.frames == 20
    assert video["avg_frame_rate"] == "10/1"
    # AVI has no real pts: frame k is shown at k/fps.
    assert frame_times(run.dst) == [Fraction(k, 10) for k in range(20)]


def test_avi_with_stream_copied_audio(models_env: Path, tmp_path: Path) -> None:
    src = tmp_path / "campus.avi"
    ffmpeg("-i", media("vtest.avi"), "-frames:v", "20", "-c", "copy", src)
    dst = tmp_path / "campus.mp4"
    Engine(load_config(None, FILL)).protect_file(src, dst)
    probe = ffprobe(dst)
    assert int(streams(probe, "video")[0]["nb_frames"]) == 20
    assert [a["codec_name"] for a in streams(probe, "audio")] == ["aac"]


def test_cancel_leaves_nothing_behind(models_env: Path, tmp_path: Path) -> None:
    stop = threading.Event()

    def progress(done: int, _total: int | None) -> None:
        if done >= 5:
            stop.set()

    dst = tmp_path / "out" / "dos.mp4"
    dst.parent.mkdir()
    with pytest.raises(Cancelled) as info:
        Engine(load_config(None, FILL)).protect_file(media("dos.mp4"), dst, progress=progress, cancel=stop)
    assert info.value.transient
    assert list(dst.parent.iterdir()) == []


# ------------------------------------------------------------------ 3. images: metadata and orientation


def exif_tiff(orientation: int, order: str) -> bytes:
    """A TIFF-structured EXIF block: Make, Orientation and a GPS IFD (48°51'29.64"N 2°17'40.20"E)."""
    e = "<" if order == "II" else ">"

    def entry(tag: int, kind: int, count: int, value: bytes) -> bytes:
        return struct.pack(e + "HHI", tag, kind, count) + value

    def long_(v: int) -> bytes:
        return struct.pack(e + "I", v)

    def rationals(values: tuple[tuple[int, int], ...]) -> bytes:
        return b"".join(struct.pack(e + "II", n, d) for n, d in values)

    make = b"SpyCam 3000\0"
    make_off = 8 + 2 + 3 * 12 + 4
    gps_off = make_off + len(make)
    lat_off = gps_off + 2 + 4 * 12 + 4
    lon_off = lat_off + 24
    ifd0 = (
        struct.pack(e + "H", 3)
        + entry(0x010F, 2, len(make), long_(make_off))
        + entry(0x0112, 3, 1, struct.pack(e + "HH", orientation, 0))
        + entry(0x8825, 4, 1, long_(gps_off))
        + long_(0)
    )
    gps = (
        struct.pack(e + "H", 4)
        + entry(1, 2, 2, b"N\0\0\0")
        + entry(2, 5, 3, long_(lat_off))
        + entry(3, 2, 2, b"E\0\0\0")
        + entry(4, 5, 3, long_(lon_off))
        + long_(0)
    )
    head = order.encode() + struct.pack(e + "HI", 42, 8)
    return (
        head
        + ifd0
        + make
        + gps
        + rationals(((48, 1), (51, 1), (2964, 100)))
        + rationals(((2, 1), (17, 1), (4020, 100)))
    )


def jpeg_with_exif(path: Path, orientation: int, order: str) -> Path:
    data = media("city.jpg").read_bytes()
    payload = b"Exif\0\0" + exif_tiff(orientation, order)
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    path.write_bytes(data[:2] + app1 + data[2:])
    return path


def jpeg_segments(data: bytes) -> list[int]:
    """Markers of the segments before the first scan."""
    assert data[:2] == b"\xff\xd8"
    markers, pos = [], 2
    while pos + 4 <= len(data):
        assert data[pos] == 0xFF
        marker = data[pos + 1]
        markers.append(marker)
        if marker == 0xDA:
            break
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return markers


def png_chunks(data: bytes) -> list[bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    kinds, pos = [], 8
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kinds.append(data[pos + 4 : pos + 8])
        pos += 12 + length
    return kinds


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def assert_rotated_clockwise(out: Image, original: Image) -> None:
    h, w = original.shape[:2]
    assert out.shape[:2] == (w, h), "EXIF orientation 6 was not applied (width and height not swapped)"
    right = np.abs(out.astype(np.int16) - np.rot90(original, -1)).mean()
    wrong = np.abs(out.astype(np.int16) - np.rot90(original, 1)).mean()
    assert right < wrong / 2, (right, wrong)


@pytest.mark.parametrize("order", ["II", "MM"])
def test_jpeg_exif_and_gps_removed_and_orientation_applied(order: str, models_env: Path, tmp_path: Path) -> None:
    src = jpeg_with_exif(tmp_path / "phone.jpg", 6, order)
    # OpenCV itself honours our EXIF: the test input is well-formed.
    assert cv2.imread(str(src)).shape[:2] == (800, 564)
    dst = tmp_path / "out.jpg"
    Engine(load_config(None, ["detector.model=yolox_nano"])).protect_file(src, dst)
    data = dst.read_bytes()
    assert 0xE1 not in jpeg_segments(data), "an APP1 (EXIF/XMP) segment survived"
    for secret in (b"Exif", b"SpyCam", b"GPS"):
        assert secret not in data
    out = cv2.imread(str(dst), cv2.IMREAD_UNCHANGED)
    assert_rotated_clockwise(out, cv2.imread(str(media("city.jpg"))))


def test_png_stays_png_without_metadata_and_upright(models_env: Path, tmp_path: Path) -> None:
    original = cv2.imread(str(media("city.jpg")))
    ok, encoded = cv2.imencode(".png", original)
    assert ok
    raw = encoded.tobytes()
    ihdr_end = 8 + 12 + 13
    extra = png_chunk(b"eXIf", exif_tiff(6, "MM")) + png_chunk(b"tEXt", b"Comment\0meet at the SpyCam spot")
    src = tmp_path / "shot.png"
    src.write_bytes(raw[:ihdr_end] + extra + raw[ihdr_end:])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    Engine(load_config(None, ["detector.model=yolox_nano"])).protect_file(src, out_dir / "shot.png")
    data = (out_dir / "shot.png").read_bytes()
    assert set(png_chunks(data)) <= {b"IHDR", b"IDAT", b"IEND", b"sRGB", b"gAMA", b"pHYs"}
    assert b"SpyCam" not in data
    assert_rotated_clockwise(cv2.imread(str(out_dir / "shot.png")), original)


def test_png_alpha_is_kept(models_env: Path, tmp_path: Path) -> None:
    bgr = cv2.imread(str(media("city.jpg")))
    alpha = np.tile(np.linspace(0, 255, bgr.shape[1]).astype(np.uint8), (bgr.shape[0], 1))
    src = tmp_path / "cutout.png"
    cv2.imwrite(str(src), np.dstack([bgr, alpha]))
    dst = tmp_path / "out.png"
    result = Engine(load_config(None, FILL)).protect_file(src, dst)
    out = cv2.imread(str(dst), cv2.IMREAD_UNCHANGED)
    assert out.shape == (*bgr.shape[:2], 4)
    assert (out[:, :, 3] == alpha).all()
    assert result.detections >= 5
    assert (out[:, :, :3] == BGR).all(axis=2).mean() > 0.1
