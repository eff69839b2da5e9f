"""The `edgeguard` CLI in-process: bad inputs, usage errors, --json, doctor, models, keygen and unseal."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import pytest

from edgeguard import dnn_target, seal
from edgeguard.cli import main
from tests.conftest import CANDIDATES, media, need
from tests.support.cli import SUMMARY_KEYS, YOLOX, cli, drop_cli_logging, error_lines, ffmpeg


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png(path: Path, width: int = 60000, height: int = 60000) -> Path:
    """A valid-looking PNG whose header declares a decompression bomb (tiny IDAT)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )
    path.write_bytes(data)
    return path


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEGUARD_CONFIG", raising=False)
    monkeypatch.delenv("EDGEGUARD_MODEL_SOURCE", raising=False)


@pytest.fixture
def empty_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "empty-models"
    root.mkdir()
    monkeypatch.setenv("EDGEGUARD_MODELS_DIR", str(root))
    return root


@pytest.fixture(scope="module")
def avi20(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 20 frames of vtest.avi, stream-copied into an AVI (no audio)."""
    out = tmp_path_factory.mktemp("avi") / "walk.avi"
    ffmpeg("-i", media("vtest.avi"), "-frames:v", "20", "-an", "-c:v", "copy", out)
    return out


# ------------------------------------------------------------------ bad inputs


def _truncated(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def _bad_input(kind: str, folder: Path) -> tuple[Path, str]:
    """A bad input file of `kind` and a regex for the reason the user must see."""
    if kind == "empty":
        (p := folder / "empty.mp4").write_bytes(b"")
        return p, r"empty file"
    if kind == "truncated":  # moov at the end: 30% has no index at all
        return _truncated(media("dos.mp4"), folder / "cut.mp4", 0.3), r"truncated|not a readable media file"
    if kind == "truncated-faststart":  # moov first: the header promises 60 frames, 30% of them are there
        fs = folder / "fs-full.mp4"
        ffmpeg("-i", media("dos.mp4"), "-c", "copy", "-movflags", "+faststart", fs)
        p = _truncated(fs, folder / "cut-fs.mp4", 0.3)
        fs.unlink()
        return p, r"truncated: the container declares 60 frames but only \d+ could be read"
    if kind == "random":
        (p := folder / "noise.mp4").write_bytes(bytes(range(256)) * 200 + b"\x13\x37" * 999)
        return p, r"not a readable media file"
    if kind == "text-avi":
        (p := folder / "notes.avi").write_text("this is not a video\n" * 50, encoding="utf-8")
        return p, r"not a readable media file"
    if kind == "huge-png":
        return huge_png(folder / "bomb.png"), r"absurd dimensions 60000x60000"
    if kind == "unsupported":
        (p := folder / "slides.pptx").write_bytes(b"PK\x03\x04 not really")
        return p, r"unsupported file type '\.pptx'"
    if kind == "missing":
        return folder / "gone.mp4", r"does not exist"
    raise AssertionError(kind)


BAD_KINDS = ["empty", "truncated", "truncated-faststart", "random", "text-avi", "huge-png", "unsupported", "missing"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_input_fails_with_one_line_and_leaves_nothing(
    kind: str, tmp_path: Path, yolox_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    src, reason = _bad_input(kind, inputs)
    out_dir = tmp_path / "out"
    code, out, err = cli(capsys, "protect", src, "--out-dir", out_dir, *YOLOX)
    assert code == 1, err
    assert out == ""
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert src.name in lines[0]
    assert re.search(reason, lines[0]), lines[0]
    assert "Traceback" not in err
    assert list(out_dir.iterdir()) == [], "an output or temp file was left behind"


@pytest.mark.parametrize("kind", ["truncated-faststart", "huge-png"])
def test_failure_with_explicit_output_leaves_no_file(
    kind: str, tmp_path: Path, yolox_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, _ = _bad_input(kind, tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    dst = out_dir / ("result" + (".mp4" if src.suffix == ".mp4" else src.suffix))
    code, _, err = cli(capsys, "protect", src, "-o", dst, *YOLOX)
    assert code == 1, err
    assert list(out_dir.iterdir()) == []


def test_failure_keeps_an_existing_output_untouched(
    tmp_path: Path, yolox_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, _ = _bad_input("truncated-faststart", tmp_path)
    dst = tmp_path / "previous.mp4"
    dst.write_bytes(b"an earlier good result")
    code, _, _ = cli(capsys, "protect", src, "-o", dst, *YOLOX)
    assert code == 1
    assert dst.read_bytes() == b"an earlier good result"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([src.name, dst.name])


def test_mix_of_good_and_bad_inputs_writes_the_good_ones(
    tmp_path: Path, yolox_env: Path, avi20: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    bad = [_bad_input(kind, inputs)[0] for kind in ("empty", "huge-png", "text-avi")]
    good = [media("city.jpg"), avi20]
    out_dir = tmp_path / "out"
    code, out, err = cli(
        capsys, "protect", bad[0], good[0], bad[1], good[1], bad[2], "--out-dir", out_dir, "--json", *YOLOX
    )
    assert code == 1
    assert sorted(p.name for p in out_dir.iterdir()) == ["city.jpg", "walk.mp4"]
    lines = error_lines(err)
    assert len(lines) == 3, err
    for path, line in zip(bad, lines, strict=True):
        assert path.name in line
    summaries = [json.loads(line) for line in out.splitlines()]
    assert [Path(s["input"]).name for s in summaries] == ["city.jpg", "walk.avi"]


@pytest.mark.parametrize("name", ["city.jpg", "walk.avi"])
def test_write_failure_names_the_input_not_a_temp_file(
    name: str, tmp_path: Path, yolox_env: Path, avi20: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = media(name) if name == "city.jpg" else avi20
    # A name the filesystem takes but its staging name (longer) does not: the write itself fails.
    dst = tmp_path / ("o" * 240 + (".jpg" if name == "city.jpg" else ".mp4"))
    code, _, err = cli(capsys, "protect", src, "-o", dst, *YOLOX)
    assert code == 1
    (line,) = error_lines(err)
    assert ".partial" not in line
    assert src.name in line
    assert list(tmp_path.iterdir()) == []


def test_output_into_a_missing_folder_names_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-dir"
    code, _, err = cli(capsys, "protect", media("city.jpg"), "-o", missing / "out.jpg", *YOLOX)
    assert code == 2
    (line,) = error_lines(err)
    assert f"the folder {missing} does not exist" in line and "--out-dir" in line
    assert not missing.exists()


def test_output_to_a_folder_name_works_like_out_dir(
    tmp_path: Path, yolox_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(capsys, "protect", media("city.jpg"), "-o", f"{tmp_path / 'new'}/", *YOLOX)
    assert code == 0, err
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["city.jpg"]


def test_a_directory_input_says_it_is_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "protect", tmp_path, *YOLOX)
    assert code == 2
    assert error_lines(err) == [
        f"edgeguard: edgeguard protect: {tmp_path} is a directory; give the files in it (e.g. {tmp_path}/*)"
    ]


def test_two_inputs_never_share_one_output(tmp_path: Path, yolox_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for cam, photo in (("cam1", "city.jpg"), ("cam2", "messi5.jpg")):
        (tmp_path / cam).mkdir()
        cv2.imwrite(str(tmp_path / cam / "x.png"), cv2.imread(str(media(photo))))
    out_dir = tmp_path / "out"
    code, _, _ = cli(capsys, "protect", tmp_path / "cam1/x.png", tmp_path / "cam2/x.png", "--out-dir", out_dir, *YOLOX)
    written = list(out_dir.iterdir()) if out_dir.exists() else []
    assert (code == 2 and written == []) or len(written) == 2


def test_image_output_format_follows_the_output_name(
    tmp_path: Path, yolox_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "city.png"
    cv2.imwrite(str(src), cv2.imread(str(media("city.jpg"))))
    dst = tmp_path / "city-protected.jpg"
    code, _, err = cli(capsys, "protect", src, "-o", dst, *YOLOX)
    assert code in (0, 2), err
    if code == 0:
        assert dst.read_bytes()[:2] == b"\xff\xd8", "a .jpg output must be a JPEG"


# ------------------------------------------------------------------ usage errors


def test_output_with_two_inputs_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "protect", media("city.jpg"), media("messi5.jpg"), "-o", tmp_path / "x.jpg")
    assert code == 2
    (line,) = error_lines(err)
    assert "-o/--output takes exactly one INPUT" in line
    assert list(tmp_path.iterdir()) == []


def test_output_over_its_input_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "city.jpg"
    shutil.copy(media("city.jpg"), src)
    before = src.read_bytes()
    code, _, err = cli(capsys, "protect", src, "-o", src)
    assert code == 2
    assert "overwrite its input" in err
    assert src.read_bytes() == before


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("protect.style=sparkle", "--set protect.style: 'sparkle' is not a hiding style: blur, fill, pixelate"),
        ("detector.confidence=1.5", "--set detector.confidence: Input should be less than or equal to 1"),
        ("nokey", "--set nokey: expected KEY=VALUE"),
        ("detector.colour=1", "--set detector.colour: unknown key"),
    ],
)
def test_bad_set_is_a_usage_error(item: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "protect", media("city.jpg"), "--out-dir", tmp_path / "out", "--set", item)
    assert code == 2
    (line,) = error_lines(err)
    assert line.startswith(f"edgeguard: {message}"), err
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_no_command_and_unknown_option_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys)[0] == 2
    code, _, err = cli(capsys, "protect", "--frobnicate", "x.mp4")
    assert code == 2
    assert "--frobnicate" in err


# ------------------------------------------------------------------ --json


def test_json_prints_one_object_per_file(
    tmp_path: Path, yolox_env: Path, avi20: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "street.png"
    cv2.imwrite(str(png), cv2.imread(str(media("city.jpg"))))
    out_dir = tmp_path / "out"
    code, out, err = cli(capsys, "protect", media("city.jpg"), png, avi20, "--out-dir", out_dir, "--json", *YOLOX)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 3
    rows = [json.loads(line) for line in lines]
    for row in rows:
        assert row.keys() >= SUMMARY_KEYS
        assert row["model"] == "yolox_nano"
        assert row["target"] == "cpu"
        assert Path(row["output"]).is_file()
        assert row["seconds"] > 0 and row["fps"] > 0
    city, street, walk = rows
    assert city["input"] == str(media("city.jpg")) and city["output"] == str(out_dir / "city.jpg")
    assert street["output"] == str(out_dir / "street.png")
    assert walk["output"] == str(out_dir / "walk.mp4")
    assert city["frames"] == street["frames"] == 1
    assert walk["frames"] == 20
    assert city["detections"] >= 5  # a street full of pedestrians
    assert city["detections"] == street["detections"]  # same pixels, same people


def test_default_output_is_beside_the_input(
    tmp_path: Path, yolox_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "city.jpg"
    shutil.copy(media("city.jpg"), src)
    code, _, err = cli(capsys, "protect", src, *YOLOX)
    assert code == 0, err
    assert (tmp_path / "city.protected.jpg").is_file()


# ------------------------------------------------------------------ doctor


def test_doctor_ok_with_yolox_on_cpu(yolox_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "doctor", *YOLOX)
    assert code == 0, out + err
    assert cv2.__version__ in out
    assert "H.264 encoder" in out and "libx264" in out
    for name in dnn_target.TARGETS:
        assert f"target {name}" in out
    assert "target cpu (configured)" in out
    assert "model yolox_nano" in out and "verified" in out
    # Targets nobody configured are information, never a failure.
    assert not [line for line in out.splitlines() if line.startswith("FAIL")], out
    if not dnn_target.probe("cuda").ok:
        (cuda,) = [line for line in out.splitlines() if line.split()[:3] == ["--", "target", "cuda"]]
        assert "not available here" in cuda
    assert out.splitlines()[-1] == "the configured setup can run here: model yolox_nano on cpu"


def test_doctor_fails_when_the_model_is_missing(empty_models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "doctor", *YOLOX)
    assert code == 3
    (line,) = [line for line in out.splitlines() if line.startswith("FAIL model")]
    assert "edgeguard models fetch yolox_nano" in line
    assert out.splitlines()[-1] == "the configured setup cannot run here: model yolox_nano is not ready"


def test_doctor_says_whether_originals_are_sealed_and_to_which_keys(
    yolox_env: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    keys = [seal.keygen().recipient for _ in range(2)]
    listed = tmp_path / "reviewers.pub"
    listed.write_text(f"# reviewers\n{keys[1]}\n", encoding="utf-8")
    sealing = ["--set", "daemon.originals=seal", "--set", "daemon.seal_failed=true"]
    code, out, err = cli(capsys, "doctor", *YOLOX, *sealing, "--set", f"seal.recipients=[{keys[0]}, {listed}]")
    assert code == 0, out + err
    (line,) = [line for line in out.splitlines() if line.split()[1:2] == ["sealing"]]
    prints = ", ".join(seal.fingerprint(k) for k in keys)
    assert line.split(None, 2) == ["ok", "sealing", f"originals and failed sealed to 2 key(s): {prints}"]
    code, out, _ = cli(capsys, "doctor", *YOLOX)
    assert code == 0
    assert "--   sealing                  off (daemon.originals: delete)" in out.splitlines()


def test_check_config_checks_the_model_and_its_classes(yolox_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "check-config", *YOLOX, "--set", "detector.classes=[person, bicycle]")
    assert (code, out.strip()) == (0, "<defaults>: ok"), err
    code, _, err = cli(capsys, "check-config", *YOLOX, "--set", "detector.classes=[person, unicorn]")
    assert code == 2
    assert error_lines(err) == ["edgeguard: detector.classes: 'unicorn' not a class of yolox_nano"]
    code, _, err = cli(capsys, "check-config", "--set", "detector.model=yolo_huge")
    assert code == 2
    (line,) = error_lines(err)
    assert "unknown model 'yolo_huge'; available: mask_rcnn_inception_v2_coco, yolox_nano" in line


def test_check_config_says_what_it_could_not_check(empty_models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "check-config", *YOLOX)
    assert code == 0
    assert out.splitlines() == [
        "note: detector.classes not checked: the labels of yolox_nano are not here yet "
        "(edgeguard models fetch yolox_nano)",
        "<defaults>: ok",
    ]


def test_doctor_fails_for_an_unavailable_configured_target(yolox_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if dnn_target.probe("cuda").ok:
        pytest.skip("CUDA REALLY WORKS HERE: cannot test the unavailable-target path")
    code, out, _ = cli(capsys, "doctor", *YOLOX, "--set", "detector.target=cuda")
    assert code == 3
    assert "FAIL target cuda (configured)" in out
    code, out, _ = cli(
        capsys, "doctor", *YOLOX, "--set", "detector.target=cuda", "--set", "detector.on_unavailable=cpu"
    )
    assert code == 0, out


def test_doctor_with_a_bad_config_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "doctor", "--set", "detector.target=tpu")
    assert code == 2
    assert "detector.target" in err


# ------------------------------------------------------------------ models list / fetch


def test_models_list_fetch_from_and_use(empty_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    need(CANDIDATES / "yolox_nano.onnx")
    code, out, _ = cli(capsys, "models", "list", *YOLOX)
    assert code == 0
    rows = {line.split()[1] if line.startswith("*") else line.split()[0]: line for line in out.splitlines()}
    assert {"yolox_nano", "mask_rcnn_inception_v2_coco"} <= rows.keys()
    assert rows["yolox_nano"].startswith("*")
    assert rows["yolox_nano"].endswith("not provisioned: run `edgeguard models fetch yolox_nano`")

    code, out, err = cli(capsys, "models", "fetch", "yolox_nano", "--from", CANDIDATES)
    assert code == 0, err
    placed = {Path(line.split(": ", 1)[1]).name for line in out.splitlines()}
    assert {"yolox_nano.onnx", "coco.names"} <= placed
    assert (empty_models / "yolox_nano" / "yolox_nano.onnx").is_file()

    code, out, _ = cli(capsys, "models", "list", *YOLOX)
    assert any(
        line.startswith("*") and "yolox_nano" in line and line.endswith(" ready") for line in out.splitlines()
    ), out
    code, _, err = cli(capsys, "protect", media("city.jpg"), "-o", tmp_path / "x.jpg", *YOLOX)
    assert code == 0, err


def test_models_fetch_uses_the_source_env(
    empty_models: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    need(CANDIDATES / "yolox_nano.onnx")
    monkeypatch.setenv("EDGEGUARD_MODEL_SOURCE", str(CANDIDATES))
    code, out, err = cli(capsys, "models", "fetch", *YOLOX)  # no NAME: the configured model
    assert code == 0, err
    assert out.startswith("yolox_nano: ")
    assert (empty_models / "yolox_nano" / "coco.names").is_file()


def test_models_fetch_from_a_folder_without_the_files(
    empty_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "nothing-here"
    src.mkdir()
    code, _, err = cli(capsys, "models", "fetch", "yolox_nano", "--from", src)
    assert code == 3
    (line,) = error_lines(err)
    assert "yolox_nano.onnx not found in" in line
    assert not (empty_models / "yolox_nano").exists()


def test_missing_model_is_one_line_naming_models_fetch(
    empty_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "protect", media("city.jpg"), "--out-dir", tmp_path / "out", *YOLOX)
    assert code == 3
    assert out == ""
    (line,) = error_lines(err)
    assert "`edgeguard models fetch yolox_nano`" in line
    assert len(err.strip().splitlines()) == 1, err


def test_unknown_model_name(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = cli(
        capsys, "protect", media("city.jpg"), "-o", tmp_path / "x.jpg", "--set", "detector.model=yolo9000"
    )
    assert code == 2
    (line,) = error_lines(err)
    assert "unknown model 'yolo9000'" in line and "yolox_nano" in line


# ------------------------------------------------------------------ keygen / unseal


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def test_keygen_writes_an_identity_debian_age_uses(
    age: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "reviewer.key"
    with umask(0):  # owner-only whatever the umask
        code, out, err = cli(capsys, "keygen", "-o", key)
    assert code == 0, err
    recipient = out.strip()
    assert out == f"{recipient}\n" and recipient.startswith("age1"), "stdout: the public key alone"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert f"public key: {recipient}" in key.read_text(encoding="utf-8")
    assert "AGE-SECRET-KEY-1" not in out + err, "the secret stays in the file"
    assert f"fingerprint: {seal.fingerprint(recipient)}" in err
    # Debian's age encrypts to the printed key and decrypts with the file.
    sealed = subprocess.run([age, "-r", recipient], input=b"for the reviewer", capture_output=True, check=True)
    opened = subprocess.run([age, "-d", "-i", str(key)], input=sealed.stdout, capture_output=True, check=False)
    assert opened.returncode == 0, opened.stderr.decode()
    assert opened.stdout == b"for the reviewer"

    before = key.read_bytes()
    code, out, err = cli(capsys, "keygen", "-o", key)
    assert code == 2 and out == ""
    assert error_lines(err) == [f"edgeguard: {key} exists; not overwritten"]
    assert key.read_bytes() == before


def test_keygen_without_output_prints_the_identity_file(
    age: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "keygen")
    assert code == 0, err
    (recipient,) = [line.rsplit(" ", 1)[1] for line in err.splitlines() if "public key (for seal.recipients)" in line]
    key = tmp_path / "key.txt"
    key.write_text(out, encoding="utf-8")
    sealed = subprocess.run([age, "-r", recipient], input=b"for the reviewer", capture_output=True, check=True)
    opened = subprocess.run([age, "-d", "-i", str(key)], input=sealed.stdout, capture_output=True, check=False)
    assert opened.returncode == 0, opened.stderr.decode()
    assert opened.stdout == b"for the reviewer"


@dataclass(frozen=True)
class Sealed:
    original: bytes
    path: Path  # NAME.age, its record beside it
    identity: Path


@pytest.fixture
def sealed(tmp_path: Path) -> Sealed:
    """A clip sealed as the daemon seals it (NAME.age and NAME.age.json), and its reviewer's identity file."""
    pair = seal.keygen()
    identity = tmp_path / "reviewer.key"
    seal.write_identity(pair, identity)
    original = os.urandom(300_000)
    folder = tmp_path / "sealed"
    folder.mkdir()
    path = folder / "clip.mp4.age"
    with path.open("wb") as dst:
        made = seal.seal(io.BytesIO(original), dst, [pair.recipient])
    seal.record_path(path).write_text(json.dumps(made.record(job=1, file="clip.mp4")), encoding="utf-8")
    return Sealed(original, path, identity)


def test_unseal_writes_the_original_owner_only(
    sealed: Sealed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "back.mp4"
    with umask(0):
        code, stdout, err = cli(capsys, "unseal", sealed.path, "-i", sealed.identity, "-o", out)
    assert code == 0, err
    assert stdout == ""
    assert out.read_bytes() == sealed.original
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert "matches the hash taken when it was sealed" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.mp4", "reviewer.key", "sealed"], "no temporary left"


def test_unseal_writes_beside_here_under_the_original_name(
    sealed: Sealed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    code, _, err = cli(capsys, "unseal", sealed.path, "-i", sealed.identity)
    assert code == 0, err
    assert (here / "clip.mp4").read_bytes() == sealed.original


def test_unseal_never_overwrites(sealed: Sealed, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "back.mp4"
    out.write_bytes(b"someone's file")
    code, stdout, err = cli(capsys, "unseal", sealed.path, "-i", sealed.identity, "-o", out)
    assert code == 2 and stdout == ""
    (line,) = error_lines(err)
    assert f"{out} exists; not overwritten" in line
    assert out.read_bytes() == b"someone's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.mp4", "reviewer.key", "sealed"], "no temporary left"


def test_unseal_to_stdout(sealed: Sealed, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    capsysbinary.readouterr()
    try:
        code = main(["unseal", str(sealed.path), "-i", str(sealed.identity), "-o", "-"])
    finally:
        drop_cli_logging()
    out, err = capsysbinary.readouterr()
    assert code == 0, err
    assert out == sealed.original
    assert b"to stdout; matches the hash taken when it was sealed" in err


def test_unseal_with_a_wrong_identity_is_one_line(
    sealed: Sealed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stranger = tmp_path / "stranger.key"
    seal.write_identity(seal.keygen(), stranger)
    out = tmp_path / "back.mp4"
    for record in (True, False):  # checked against the record first; without one, age itself refuses
        if not record:
            seal.record_path(sealed.path).unlink()
        code, stdout, err = cli(capsys, "unseal", sealed.path, "-i", stranger, "-o", out)
        assert code == 1 and stdout == ""
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith("edgeguard: ") and "cannot" in err
        assert not out.exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["reviewer.key", "sealed", "stranger.key"]


def test_check_config_refuses_sealing_without_good_recipients(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "edgeguard.yaml"
    config.write_text("daemon:\n  originals: seal\n", encoding="utf-8")
    code, _, err = cli(capsys, "check-config", "-c", config)
    assert code == 2
    (line,) = error_lines(err)
    assert line.startswith(f"edgeguard: {config}:2: daemon.originals: sealing needs seal.recipients"), line

    code, _, err = cli(capsys, "check-config", "--set", "daemon.seal_failed=true")
    assert code == 2
    assert error_lines(err) == [
        "edgeguard: --set daemon.seal_failed: sealing needs seal.recipients"
        " (age public keys of whoever may open the originals)"
    ]

    good = seal.keygen().recipient
    code, _, err = cli(capsys, "check-config", "--set", f"seal.recipients=[age1nope, {good}]")
    assert code == 2
    (line,) = error_lines(err)
    assert line.startswith("edgeguard: --set seal.recipients.0: age1nope is not a valid age X25519 public key"), line

    secret = seal.keygen().identity
    code, _, err = cli(capsys, "check-config", "--set", f"seal.recipients=[{good}, {secret}]")
    assert code == 2
    (line,) = error_lines(err)
    assert line.startswith("edgeguard: --set seal.recipients.1: ") and "is a private key" in line, line
    assert secret.removeprefix("AGE-SECRET-KEY-1")[:8] not in err, "the secret is never printed"


@pytest.fixture(autouse=True)
def _no_leftover_logging() -> Iterator[None]:
    yield
    drop_cli_logging()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_unseal_stopped_midway_leaves_no_plaintext(sig: signal.Signals, tmp_path: Path) -> None:
    """Stopped or hung up while it writes, unseal unwinds as Ctrl-C does: the partial plaintext goes."""
    pair = seal.keygen()
    identity = tmp_path / "reviewer.key"
    seal.write_identity(pair, identity)
    zeros, big = tmp_path / "zeros", tmp_path / "big.mp4.age"
    with zeros.open("wb") as f:
        f.truncate(1 << 30)  # sparse
    with zeros.open("rb") as src, big.open("wb") as dst:  # 1 GiB sealed: seconds to unseal
        seal.seal(src, dst, [pair.recipient])
    zeros.unlink()
    out = tmp_path / "out" / "big.mp4"
    out.parent.mkdir()
    cmd = [sys.executable, "-m", "edgeguard", "unseal", str(big), "-i", str(identity), "-o", str(out)]
    with subprocess.Popen(cmd, stderr=subprocess.PIPE) as proc:
        deadline = time.monotonic() + 60
        while not any(p.name.endswith(".unsealing") and p.stat().st_size > 0 for p in out.parent.iterdir()):
            assert proc.poll() is None and time.monotonic() < deadline, "unseal never started writing"
            time.sleep(0.01)  # the polling period only
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert list(out.parent.iterdir()) == [], "a partial plaintext was left behind"


def test_unseal_refuses_a_record_it_cannot_read_in_one_line(
    sealed: Sealed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = json.loads(seal.record_path(sealed.path).read_text(encoding="utf-8"))
    seal.record_path(sealed.path).write_text(json.dumps({**record, "hmac_key": "é"}), encoding="utf-8")
    code, _, err = cli(capsys, "unseal", sealed.path, "-i", sealed.identity, "-o", tmp_path / "back.mp4")
    assert code == 1, err
    (line,) = error_lines(err)
    assert "or the record beside it" in line and "the record is another file's" in line
    assert not (tmp_path / "back.mp4").exists()
