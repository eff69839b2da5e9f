"""`edgeguard preview`: the contact sheet, with the real yolox_nano model on real shared media."""

from __future__ import annotations

import itertools
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from edgeguard import preview as preview_module
from edgeguard import publish
from edgeguard.config import load_config
from edgeguard.engine import Engine
from edgeguard.frames import Image, Mask
from edgeguard.media.video import VideoReader
from edgeguard.preview import GAP, LABEL_HEIGHT, build_preview
from edgeguard.publish import is_staging, output_name
from tests.conftest import media
from tests.support.cli import YOLOX, cli, error_lines

FRAMES = 12  # packets of dos.mp4 (1280x720, 25 fps, two people crossing) in the test clip
CHOSEN = [3, 9]  # --frames 2 over 12 frames: the middle of each half


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEGUARD_CONFIG", raising=False)


@pytest.fixture(autouse=True)
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The temporary folder preview uses: whatever happens, it is empty afterwards."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    yield root
    assert list(root.iterdir()) == [], "a temporary file was left behind"


def cut(src: Path, dst: Path, packets: int, rotation: int | None = None) -> Path:
    """The first `packets` video packets of `src`, stream-copied (no audio), optionally with a display rotation."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = inp.streams.video[0]
        copy = out.add_stream_from_template(stream)
        if rotation is not None:
            copy.set_display_rotation(rotation)
        taken = 0
        for packet in inp.demux(stream):
            if packet.dts is None or taken == packets:
                continue
            taken += 1
            packet.stream = copy
            out.mux(packet)
    return dst


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    return cut(media("dos.mp4"), folder / "dos.mp4", FRAMES)


def observed(src: Path, keep: set[int]) -> tuple[list[float], dict[int, Mask]]:
    """Independently: every frame's hidden share from the engine, and the masks of the frames in `keep`."""
    shares: list[float] = []
    masks: dict[int, Mask] = {}

    def observe(mask: Mask, _det: object) -> None:
        if len(shares) in keep:
            masks[len(shares)] = mask.copy()
        shares.append(np.count_nonzero(mask) / mask.size)

    engine = Engine(load_config(None, ["detector.model=yolox_nano"]))
    with tempfile.TemporaryDirectory() as tmp:
        engine.protect_file(src, Path(tmp) / output_name(src.name), observe=observe)
    return shares, masks


def panels(sheet: Image, row: int, width: int, height: int) -> tuple[Image, Image]:
    """The original and the protected panel of `row` (without their label strips)."""
    top = row * (LABEL_HEIGHT + height) + LABEL_HEIGHT
    band = sheet[top : top + height]
    return band[:, :width], band[:, width + GAP : 2 * width + GAP]


def check_panels(original: Image, protected: Image, mask: Mask | None, share: float) -> None:
    """The protected panel differs from the original where the mask hides, and only there."""
    diff = np.abs(original.astype(np.int16) - protected.astype(np.int16)).max(axis=2)
    changed = float(np.mean(diff > 40))
    # Hiding changes at most the hidden pixels (plus a JPEG/H.264 margin), and visibly so.
    assert 0.1 * share < changed < share + 0.02, (changed, share)
    if mask is not None:
        small = cv2.resize(mask, (original.shape[1], original.shape[0]), interpolation=cv2.INTER_NEAREST) > 0
        inside = cv2.erode(small.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        outside = cv2.dilate(small.astype(np.uint8), np.ones((5, 5), np.uint8)) == 0
        assert diff[inside].mean() > 4 * diff[outside].mean() + 5, (diff[inside].mean(), diff[outside].mean())


def test_video_sheet_shows_the_chosen_frames_as_published(
    clip: Path, yolox_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "preview", clip, "--frames", 2, *YOLOX)
    assert code == 0, err
    sheet_path = clip.with_name("dos.preview.png")
    assert sorted(p.name for p in clip.parent.iterdir()) == ["dos.mp4", "dos.preview.png"]
    shares, masks = observed(clip, set(CHOSEN))
    assert len(shares) == FRAMES
    shown = (shares[CHOSEN[0]] + shares[CHOSEN[1]]) / 2
    assert out == (
        f"{sheet_path}: 2 of {FRAMES} frames, mean hidden share {shown:.1%} "
        f"(whole video {sum(shares) / len(shares):.1%})\n"
    )
    sheet = cv2.imread(str(sheet_path))
    # Two rows of 1280x720 frames scaled down to 640x360 panels, original | protected.
    assert sheet.shape == (2 * (LABEL_HEIGHT + 360), 2 * 640 + GAP, 3)
    for row, index in enumerate(CHOSEN):
        check_panels(*panels(sheet, row, 640, 360), masks[index], shares[index])


def test_shots_carry_index_time_and_the_engines_share(
    clip: Path, yolox_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staged: list[Path] = []

    def replace_into(src: Path, dst: Path) -> None:  # the sheet appears whole, by rename
        assert is_staging(src.name) and src.parent == dst.parent and not dst.exists()
        staged.append(src)
        publish.replace_into(src, dst)

    monkeypatch.setattr(preview_module, "replace_into", replace_into)
    engine = Engine(load_config(None, ["detector.model=yolox_nano"]))
    preview = build_preview(engine, clip, tmp_path / "sheet.jpg", frames=2, width=320)
    shares, _ = observed(clip, set())
    assert [s.index for s in preview.shots] == CHOSEN
    assert [s.seconds for s in preview.shots] == pytest.approx([i / 25 for i in CHOSEN])
    assert [s.share for s in preview.shots] == pytest.approx([shares[i] for i in CHOSEN], abs=1e-12)
    assert preview.overall_share == pytest.approx(
        sum(shares) / len(shares), abs=1e-6
    )  # the engine rounds its mean to 6 places
    assert (preview.frames, preview.panel) == (FRAMES, (320, 180))
    assert len(staged) == 1 and not staged[0].exists()
    assert (tmp_path / "sheet.jpg").read_bytes()[:2] == b"\xff\xd8", "the extension picks the format"
    assert cv2.imread(str(tmp_path / "sheet.jpg")).shape == (2 * (LABEL_HEIGHT + 180), 2 * 320 + GAP, 3)


def rotated_copy(src: Path, dst: Path, frames: int) -> tuple[Path, list[Image]]:
    """`src`'s first frames stored turned a quarter clockwise, with a display matrix that turns them back."""
    upright: list[Image] = []
    with VideoReader(src, max_pixels=1 << 30) as reader, av.open(str(dst), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = reader.info.height, reader.info.width, "yuv420p"
        stream.set_display_rotation(90)
        for frame in itertools.islice(reader.frames(), frames):
            upright.append(frame.image)
            stored = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.rot90(frame.image, -1)), format="bgr24")
            out.mux(stream.encode(stored))
        out.mux(stream.encode())
    return dst, upright


def test_rotated_video_panels_are_upright_alike(
    tmp_path: Path, yolox_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rotated, upright = rotated_copy(media("dos.mp4"), tmp_path / "rotated.mp4", 4)
    sheet_path = tmp_path / "sheet.png"
    code, _, err = cli(capsys, "preview", rotated, "-o", sheet_path, "--frames", 1, *YOLOX)
    assert code == 0, err
    shares, masks = observed(rotated, {2})
    sheet = cv2.imread(str(sheet_path))
    # Stored 720x1280, shown upright 1280x720 scaled to 640x360: both panels turned back alike.
    assert sheet.shape == (LABEL_HEIGHT + 360, 2 * 640 + GAP, 3)
    original, protected = panels(sheet, 0, 640, 360)
    expected = cv2.resize(upright[2], (640, 360), interpolation=cv2.INTER_AREA)
    assert np.abs(original.astype(np.int16) - expected.astype(np.int16)).mean() < 6
    assert shares[2] > 0.02, "upright, the people are found"
    check_panels(original, protected, masks[2], shares[2])


def test_image_sheet_is_one_row(tmp_path: Path, yolox_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photo = media("city.jpg")  # 800x564, pedestrians
    sheet_path = tmp_path / "city.jpg"  # same name as the input, elsewhere: fine
    code, out, err = cli(capsys, "preview", photo, "-o", sheet_path, "--frames", 3, *YOLOX)
    assert code == 0, err
    shares, masks = observed(photo, {0})
    assert out == f"{sheet_path}: hidden share {shares[0]:.1%}\n"
    assert shares[0] > 0.02, "the photo has people to hide"
    assert sheet_path.read_bytes()[:2] == b"\xff\xd8"
    sheet = cv2.imread(str(sheet_path))
    assert sheet.shape == (LABEL_HEIGHT + 451, 2 * 640 + GAP, 3)
    check_panels(*panels(sheet, 0, 640, 451), masks[0], shares[0])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{folder}"], r"is a directory"),
        (["{clip}", "-o", "{clip}"], r"would overwrite its input"),
        (["{photo}", "-o", "{folder}/../in/photo.jpg"], r"would overwrite its input"),
        (["{clip}", "-o", "{folder}/sheet.gif"], r"\.png or \.jpg"),
        (["{clip}", "-o", "{folder}/missing/sheet.png"], r"does not exist"),
        (["{clip}", "--frames", "0"], r"--frames 0"),
    ],
)
def test_refusals_are_usage_errors(
    args: list[str], message: str, clip: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = clip.parent
    photo = folder / "photo.jpg"
    shutil.copy(media("city.jpg"), photo)
    argv = [a.format(folder=folder, clip=clip, photo=photo) for a in args]
    code, out, err = cli(capsys, "preview", *argv, *YOLOX)
    assert code == 2, err
    lines = error_lines(err)
    assert len(lines) == 1 and re.search(message, lines[0]), err
    assert out == ""
    assert sorted(p.name for p in folder.iterdir()) == ["dos.mp4", "photo.jpg"]


def test_bad_input_fails_with_one_line_and_writes_nothing(
    tmp_path: Path, yolox_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "cut.mp4"
    data = media("dos.mp4").read_bytes()
    bad.write_bytes(data[: len(data) // 3])  # moov at the end: no index at all
    code, out, err = cli(capsys, "preview", bad, *YOLOX)
    assert code == 1, err
    assert out == ""
    lines = error_lines(err)
    assert len(lines) == 1 and "cut.mp4" in lines[0], err
    assert not (tmp_path / "cut.preview.png").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "a staging file was left behind"


@pytest.mark.parametrize("key", ["incoming", "output"])
def test_the_sheet_never_goes_into_a_daemon_folder(
    key: str, tmp_path: Path, yolox_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The sheet shows the original footage: from incoming the daemon would take it, from output it is published."""
    folder = tmp_path / key
    folder.mkdir()
    photo = folder / "photo.jpg"  # the default puts the sheet beside its input
    shutil.copy(media("city.jpg"), photo)
    code, out, err = cli(capsys, "preview", photo, *YOLOX, "--set", f"paths.{key}={folder}")
    assert out == ""
    assert code == 2, err
    (line,) = error_lines(err)
    assert f"would be in paths.{key} ({folder})" in line and "-o" in line
    assert sorted(p.name for p in folder.iterdir()) == ["photo.jpg"]
    code, _, err = cli(
        capsys, "preview", photo, *YOLOX, "-o", str(tmp_path / "sheet.png"), "--set", f"paths.{key}={folder}"
    )
    assert code == 0, err
