"""Model manifests and provisioning, on the real model files in ../shared and a real local HTTP server."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import logging
import os
import re
import shutil
import stat
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgeguard import models
from edgeguard.errors import ConfigError, ModelChecksumError, ModelMissingError, SetupError
from tests.conftest import CANDIDATES, REPO, SHARED

YOLOX_FILES = ["yolox_nano.onnx", "coco.names", "selfie_segmentation.tflite", "face_detection_yunet_2026may.onnx"]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


@functools.cache
def _published_sha256() -> dict[str, str]:
    """filename -> sha256 from the tables in shared/models/SOURCES.md and candidates/SOURCES.md."""
    table: dict[str, str] = {}
    for md in (SHARED / "models" / "SOURCES.md", CANDIDATES / "SOURCES.md"):
        for match in re.finditer(r"^\| (\S+) \| \d+ \| ([0-9a-f]{64}) \|", md.read_text(encoding="utf-8"), re.M):
            table[match[1]] = match[2]
    return table


@pytest.fixture
def candidates() -> Path:
    missing = [name for name in [*YOLOX_FILES, "SOURCES.md"] if not (CANDIDATES / name).is_file()]
    if missing or not (SHARED / "models" / "SOURCES.md").is_file():
        pytest.skip(f"SHARED MODEL FILES ABSENT in {CANDIDATES} ({', '.join(missing)}); set EDGEGUARD_SHARED")
    return CANDIDATES


@pytest.fixture
def builtin() -> dict[str, models.Manifest]:
    return models.load_manifests([models.builtin_manifest_dir()])


def _files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if not p.is_dir()] if root.exists() else []


def _write_manifest(folder: Path, name: str, files: dict[str, Any], **extra: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump({"name": name, "backend": "yolox", "files": files, **extra}, sort_keys=False), encoding="utf-8"
    )
    return path


# --- manifests ------------------------------------------------------------------------------


def test_builtin_manifests_load(builtin: dict[str, models.Manifest]) -> None:
    assert models.builtin_manifest_dir() == REPO / "models"
    assert {"mask_rcnn_inception_v2_coco", "yolox_nano"} <= set(builtin)
    assert models.DEFAULT_MODEL in builtin
    assert builtin["mask_rcnn_inception_v2_coco"].backend == "maskrcnn"
    assert builtin["yolox_nano"].backend == "yolox"
    for manifest in builtin.values():
        assert manifest.labels in manifest.files
        assert "weights" in manifest.files
        for model_file in manifest.files.values():
            assert model_file.checksum is not None and model_file.url is not None, model_file
    weights = builtin["mask_rcnn_inception_v2_coco"].files["weights"]
    assert weights.checksum == "sha1:c8adff66a1e23e607f57cf1a7cfabad0faa371f9"
    assert weights.archive_checksum == "sha1:f8a920756744d0f7ee812b3ec2474979f74ab40c"
    assert weights.archive_member == "mask_rcnn_inception_v2_coco_2018_01_28/frozen_inference_graph.pb"
    yolox = builtin["yolox_nano"]
    assert [r for r, f in yolox.files.items() if f.optional] == ["segmenter", "faces"]


def test_builtin_checksums_match_published_sources(candidates: Path, builtin: dict[str, models.Manifest]) -> None:
    published = _published_sha256()
    checked = 0
    for manifest in builtin.values():
        for model_file in manifest.files.values():
            if model_file.filename in published:
                assert model_file.checksum == f"sha256:{published[model_file.filename]}", model_file
                checked += 1
    assert checked == 7  # pbtxt, coco labels, the four yolox_nano files, and YuNet listed by Mask R-CNN too


def test_invalid_manifest_reports_every_problem_with_its_key_path(tmp_path: Path) -> None:
    path = _write_manifest(
        tmp_path,
        "broken",
        {
            "weights": {"filename": "w.onnx", "checksum": "md5:abc", "sizes": 3},
            "labels": {"filename": "../escape.txt"},
            "pack": {"filename": "p.bin", "url": "http://x/p.tar.gz", "archive_member": "../../etc/passwd"},
        },
        input_size=[416],
        colour="red",
        labels="nope",
    )
    with pytest.raises(ConfigError) as info:
        models.load_manifests([tmp_path])
    text = "\n".join(info.value.problems)
    for key in (
        "colour: unknown key",
        "input_size:",
        "labels:",
        "files.weights.checksum:",
        "files.weights.sizes: unknown key",
        "files.labels.filename:",
        "files.pack.archive_member:",
    ):
        assert f"{path}: {key}" in text, key
    assert "md5:abc" in text


def test_manifest_name_must_match_file_and_keys_must_be_unique(tmp_path: Path) -> None:
    (tmp_path / "one.yaml").write_text("name: two\nbackend: yolox\nfiles: {w: {filename: w}}\n", encoding="utf-8")
    (tmp_path / "dup.yaml").write_text(
        "name: dup\nbackend: yolox\nbackend: maskrcnn\nfiles: {w: {filename: w}}\n", encoding="utf-8"
    )
    with pytest.raises(ConfigError) as info:
        models.load_manifests([tmp_path])
    problems = info.value.problems
    assert any("one.yaml: name:" in p for p in problems)
    assert any("dup.yaml: invalid YAML" in p and "duplicate key 'backend'" in p for p in problems)


def test_first_dir_wins_and_unknown_name_lists_available(tmp_path: Path) -> None:
    _write_manifest(tmp_path, "yolox_nano", {"weights": {"filename": "mine.onnx"}}, description="mine")
    found = models.load_manifests([tmp_path, models.builtin_manifest_dir()])
    assert found["yolox_nano"].description == "mine"
    assert found["yolox_nano"].files["weights"].checksum is None
    assert "mask_rcnn_inception_v2_coco" in found
    with pytest.raises(ConfigError) as info:
        models.find_manifest("yolo9000", [models.builtin_manifest_dir(), tmp_path / "absent"])
    assert "yolo9000" in str(info.value)
    assert "mask_rcnn_inception_v2_coco, yolox_nano" in str(info.value)


def test_duplicate_key_names_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("name: dup\nbackend: yolox\nfiles:\n  w: {filename: w}\nbackend: maskrcnn\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        models.load_manifests([tmp_path])
    [problem] = info.value.problems
    assert problem.startswith(f"{path}: invalid YAML: duplicate key 'backend' (first on line 2)"), problem
    assert "line 5" in problem


def test_unknown_keys_give_one_line_each_naming_the_key_path(tmp_path: Path) -> None:
    # `path` and `role` are attributes filled in on loading, not keys a manifest may set.
    path = _write_manifest(tmp_path, "extra", {"weights": {"filename": "w.onnx", "size": 3, "role": "x"}}, colour="red")
    (tmp_path / "extra2.yaml").write_text(
        "name: extra2\nbackend: yolox\npath: /etc\nfiles: {w: {filename: w}}\n", encoding="utf-8"
    )
    with pytest.raises(ConfigError) as info:
        models.load_manifests([tmp_path])
    top = "unknown key (allowed: backend, description, files, input_size, labels, name, params)"
    in_file = "unknown key (allowed: archive_checksum, archive_member, checksum, filename, optional, url)"
    assert sorted(info.value.problems) == [
        f"{path}: colour: {top}",
        f"{path}: files.weights.role: {in_file}",
        f"{path}: files.weights.size: {in_file}",
        f"{tmp_path / 'extra2.yaml'}: path: {top}",
    ]


def test_a_problem_in_each_of_two_files_gives_two_lines(tmp_path: Path) -> None:
    one = _write_manifest(tmp_path, "one", {"w": {"filename": "w", "optional": "yes"}})
    two = _write_manifest(tmp_path, "two", {"w": {"filename": "w"}}, input_size=[0, 32])
    _write_manifest(tmp_path, "three", {"w": {"filename": "w"}})
    with pytest.raises(ConfigError) as info:
        models.load_manifests([tmp_path])
    assert info.value.problems == [
        f"{one}: files.w.optional: must be true or false, got 'yes'",
        f"{two}: input_size: must be [width, height] of positive integers, got [0, 32]",
    ]


def test_rules_across_keys_are_reported_with_the_others(tmp_path: Path) -> None:
    files = {
        "w": {"filename": "x.bin"},
        "v": {"filename": "x.bin"},
        "u": {"filename": "x.bin", "checksum": "bad"},  # has a problem of its own: not compared
        "t": {"filename": "t.bin", "archive_member": "a/t.bin", "url": "gopher://x"},
    }
    path = _write_manifest(tmp_path, "cross", files, backend=5, labels="q")
    with pytest.raises(ConfigError) as info:
        models.load_manifests([tmp_path])
    assert sorted(info.value.problems) == [
        f"{path}: backend: must be a backend type key such as 'maskrcnn' or 'yolox', got 5",
        f"{path}: files.t.url: must be an http(s) URL, got 'gopher://x'",
        f"{path}: files.u.checksum: must be 'sha256:<64 hex>' or 'sha1:<40 hex>', got 'bad'",
        f"{path}: files.v.filename: 'x.bin' is also the file of role 'w'",
        f"{path}: labels: must name a role under files (w, v, u, t), got 'q'",
    ]
    files["t"] = {"filename": "t.bin", "archive_member": "a/t.bin", "archive_checksum": "sha1:" + "0" * 40}
    files["s"] = {"filename": "s.bin", "archive_checksum": "sha1:" + "0" * 40}
    path = _write_manifest(tmp_path, "cross", files, labels="w")
    with pytest.raises(ConfigError) as info:
        models.load_manifests([tmp_path])
    assert sorted(info.value.problems) == [
        f"{path}: files.s.archive_checksum: only applies with 'archive_member'",
        f"{path}: files.t.archive_member: needs 'url' (the archive)",
        f"{path}: files.u.checksum: must be 'sha256:<64 hex>' or 'sha1:<40 hex>', got 'bad'",
        f"{path}: files.v.filename: 'x.bin' is also the file of role 'w'",
    ]


def test_loading_fills_in_path_and_roles(tmp_path: Path) -> None:
    path = _write_manifest(tmp_path, "tiny", {"weights": {"filename": "w.bin"}, "names": {"filename": "n.txt"}})
    manifest = models.find_manifest("tiny", [tmp_path])
    assert manifest.path == path
    assert [(role, f.role) for role, f in manifest.files.items()] == [("weights", "weights"), ("names", "names")]
    assert manifest.params == {} and manifest.input_size is None and manifest.labels is None


# --- offline provisioning (--from DIR) --------------------------------------------------------


def test_fetch_from_candidates_copies_and_verifies_everything(
    candidates: Path, builtin: dict[str, models.Manifest], tmp_path: Path
) -> None:
    manifest = builtin["yolox_nano"]
    models_dir = tmp_path / "models"
    paths = models.fetch(manifest, models_dir, source=candidates)
    assert [p.name for p in paths] == YOLOX_FILES
    published = _published_sha256()
    for path in paths:
        assert path.parent == models_dir / "yolox_nano"
        assert _sha256(path) == published[path.name]
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(_files_under(models_dir)) == sorted(paths)  # no temp or staging leftovers

    resolved = models.resolve(manifest, models_dir, roles=list(manifest.files))
    assert resolved == dict(zip(manifest.files, paths, strict=True))
    assert models.file_path(manifest, "faces", models_dir) == resolved["faces"]

    # A second fetch keeps the verified files (the source is not needed any more).
    mtimes = [p.stat().st_mtime_ns for p in paths]
    assert models.fetch(manifest, models_dir, source=tmp_path / "empty") == paths
    assert [p.stat().st_mtime_ns for p in paths] == mtimes


def test_fetch_refuses_a_corrupted_copy_and_leaves_nothing(
    candidates: Path, builtin: dict[str, models.Manifest], tmp_path: Path
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    corrupt = source / "yolox_nano.onnx"
    shutil.copyfile(candidates / "yolox_nano.onnx", corrupt)
    data = bytearray(corrupt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    models_dir = tmp_path / "models"

    with pytest.raises(ModelChecksumError) as info:
        models.fetch(builtin["yolox_nano"], models_dir, source=source)
    message = str(info.value)
    assert str(corrupt) in message and "yolox_nano.onnx" in message
    assert _published_sha256()["yolox_nano.onnx"] in message
    assert _sha256(corrupt) in message
    assert _files_under(models_dir) == []


def test_fetch_from_source_names_what_is_missing(builtin: dict[str, models.Manifest], tmp_path: Path) -> None:
    source = SHARED / "models"
    if not (source / "mask_rcnn_inception_v2_coco_2018_01_28.pbtxt").is_file():
        pytest.skip(f"SHARED MODEL FILES ABSENT in {source}; set EDGEGUARD_SHARED")
    manifest = builtin["mask_rcnn_inception_v2_coco"]
    models_dir = tmp_path / "models"
    with pytest.raises(ModelMissingError) as info:
        models.fetch(manifest, models_dir, source=source)
    message = str(info.value)
    assert "\n" not in message
    assert "frozen_inference_graph.pb not found in" in message
    assert "mask_rcnn_inception_v2_coco_2018_01_28.tar.gz" in message  # the tarball is accepted too
    # The files the source does have were still placed, verified.
    placed = sorted(p.name for p in _files_under(models_dir))
    assert placed == ["mask_rcnn_inception_v2_coco_2018_01_28.pbtxt", "object_detection_classes_coco.txt"]


# --- resolve ----------------------------------------------------------------------------------


def test_resolve_missing_model_says_what_to_run(builtin: dict[str, models.Manifest], tmp_path: Path) -> None:
    with pytest.raises(ModelMissingError) as info:
        models.resolve(builtin["yolox_nano"], tmp_path / "models")
    assert str(info.value) == (
        f"model yolox_nano: yolox_nano.onnx, coco.names not found in {tmp_path / 'models' / 'yolox_nano'}; "
        "run `edgeguard models fetch yolox_nano` (or --from DIR offline)"
    )


def test_optional_files_are_required_only_when_asked(
    candidates: Path, builtin: dict[str, models.Manifest], tmp_path: Path
) -> None:
    manifest = builtin["yolox_nano"]
    models_dir = tmp_path / "models"
    paths = models.fetch(manifest, models_dir, source=candidates, include_optional=False)
    assert [p.name for p in paths] == ["yolox_nano.onnx", "coco.names"]
    assert set(models.resolve(manifest, models_dir)) == {"weights", "labels"}
    with pytest.raises(ModelMissingError, match=r"face_detection_yunet_2026may\.onnx not found"):
        models.resolve(manifest, models_dir, roles=["weights", "faces"])
    with pytest.raises(ConfigError, match="no file role 'mask'"):
        models.resolve(manifest, models_dir, roles=["mask"])


def test_resolve_catches_a_file_corrupted_in_place(
    candidates: Path, builtin: dict[str, models.Manifest], tmp_path: Path
) -> None:
    manifest = builtin["yolox_nano"]
    models_dir = tmp_path / "models"
    models.fetch(manifest, models_dir, source=candidates, include_optional=False)
    labels = models_dir / "yolox_nano" / "coco.names"
    labels.write_text(labels.read_text(encoding="utf-8") + "unicorn\n", encoding="utf-8")
    with pytest.raises(ModelChecksumError, match=r"coco\.names: checksum mismatch.*edgeguard models fetch yolox_nano"):
        models.resolve(manifest, models_dir)
    assert models.resolve(manifest, models_dir, verify=False)["labels"] == labels
    # fetch replaces the corrupted file with a verified one.
    models.fetch(manifest, models_dir, source=candidates, include_optional=False)
    models.resolve(manifest, models_dir)


def test_verify_file_accepts_sha1_and_sha256(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"edgeguard")
    models.verify_file(path, f"sha1:{_sha1(b'edgeguard')}")
    models.verify_file(path, f"sha256:{hashlib.sha256(b'edgeguard').hexdigest().upper()}")
    models.verify_file(path, None)
    with pytest.raises(ModelChecksumError, match=rf"{re.escape(str(path))}: checksum mismatch: expected sha1:0+, got"):
        models.verify_file(path, "sha1:" + "0" * 40)
    with pytest.raises(ModelMissingError):
        models.verify_file(tmp_path / "absent", None)


# --- downloads from a local HTTP server ------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # silence per-request lines on stderr
        pass


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """(base URL, folder it serves)."""
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), name="test-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _make_tarball(path: Path, members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return path.read_bytes()


LABELS = b"person\n"
LABELS_SHA1 = f"sha1:{_sha1(LABELS)}"
WEIGHTS = os.urandom(3 * 1024 * 1024 + 12345)  # several 1 MiB chunks, so progress is logged


def _tiny_manifest(tmp_path: Path, base: str, *, archive_checksum: str, **weights: Any) -> models.Manifest:
    files = {
        "weights": {
            "filename": "weights.bin",
            "checksum": f"sha256:{hashlib.sha256(WEIGHTS).hexdigest()}",
            "url": f"{base}/tiny_2026.tar.gz",
            "archive_member": "tiny_2026/weights.bin",
            "archive_checksum": archive_checksum,
            **weights,
        },
        "labels": {
            "filename": "labels.txt",
            "checksum": LABELS_SHA1,
            "url": f"{base}/labels.txt",
        },
    }
    _write_manifest(tmp_path / "manifests", "tiny", files, labels="labels", input_size=[64, 32])
    return models.find_manifest("tiny", [tmp_path / "manifests"])


def test_download_extracts_member_and_verifies_both_checksums(
    server: tuple[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base, www = server
    archive = _make_tarball(
        www / "tiny_2026.tar.gz", {"tiny_2026/README": b"not wanted\n", "tiny_2026/weights.bin": WEIGHTS}
    )
    (www / "labels.txt").write_bytes(LABELS)
    manifest = _tiny_manifest(tmp_path, base, archive_checksum=f"sha1:{_sha1(archive)}")
    assert manifest.input_size == (64, 32)
    models_dir = tmp_path / "models"

    with caplog.at_level(logging.INFO, logger="edgeguard.models"):
        paths = models.fetch(manifest, models_dir, timeout=5)
    assert paths == [models_dir / "tiny" / "weights.bin", models_dir / "tiny" / "labels.txt"]
    assert paths[0].read_bytes() == WEIGHTS
    assert paths[1].read_bytes() == LABELS
    assert sorted(_files_under(models_dir)) == sorted(paths)  # no tarball, README or temp files
    assert any("%" in r.getMessage() and "tiny_2026.tar.gz" in r.getMessage() for r in caplog.records)
    assert models.resolve(manifest, models_dir) == {"weights": paths[0], "labels": paths[1]}


def test_download_with_wrong_archive_checksum_is_refused(server: tuple[str, Path], tmp_path: Path) -> None:
    base, www = server
    _make_tarball(www / "tiny_2026.tar.gz", {"tiny_2026/weights.bin": WEIGHTS})
    manifest = _tiny_manifest(tmp_path, base, archive_checksum="sha1:" + "1" * 40)
    with pytest.raises(ModelChecksumError, match="expected sha1:1111"):
        models.fetch(manifest, tmp_path / "models", timeout=5)
    assert _files_under(tmp_path / "models") == []


def test_download_with_wrong_member_checksum_is_refused(server: tuple[str, Path], tmp_path: Path) -> None:
    base, www = server
    archive = _make_tarball(www / "tiny_2026.tar.gz", {"tiny_2026/weights.bin": WEIGHTS[:-1] + b"!"})
    manifest = _tiny_manifest(tmp_path, base, archive_checksum=f"sha1:{_sha1(archive)}")
    with pytest.raises(ModelChecksumError, match=r"tiny_2026\.tar\.gz: checksum mismatch for weights\.bin"):
        models.fetch(manifest, tmp_path / "models", timeout=5)
    assert _files_under(tmp_path / "models") == []


def test_download_refuses_a_symlink_member(server: tuple[str, Path], tmp_path: Path) -> None:
    base, www = server
    archive = _make_tarball(www / "tiny_2026.tar.gz", {}, symlinks={"tiny_2026/weights.bin": "/etc/passwd"})
    manifest = _tiny_manifest(tmp_path, base, archive_checksum=f"sha1:{_sha1(archive)}")
    with pytest.raises(SetupError, match="not a regular file"):
        models.fetch(manifest, tmp_path / "models", timeout=5)
    assert _files_under(tmp_path / "models") == []


def test_download_404_is_a_one_line_setup_error(server: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = server
    manifest = _tiny_manifest(tmp_path, base, archive_checksum="sha1:" + "1" * 40)
    with pytest.raises(SetupError) as info:
        models.fetch(manifest, tmp_path / "models", timeout=5)
    assert not isinstance(info.value, ModelChecksumError)
    assert str(info.value) == (
        f"cannot download {base}/tiny_2026.tar.gz: HTTP 404 File not found; "
        "provision offline with `edgeguard models fetch tiny --from DIR` or EDGEGUARD_MODEL_SOURCE"
    )
    assert _files_under(tmp_path / "models") == []


def test_optional_download_failure_is_skipped(server: tuple[str, Path], tmp_path: Path) -> None:
    base, www = server
    (www / "labels.txt").write_bytes(LABELS)
    files = {
        "labels": {"filename": "labels.txt", "checksum": LABELS_SHA1, "url": f"{base}/labels.txt"},
        "extra": {"filename": "extra.bin", "url": f"{base}/absent.bin", "optional": True},
    }
    _write_manifest(tmp_path / "manifests", "opt", files)
    manifest = models.find_manifest("opt", [tmp_path / "manifests"])
    assert models.fetch(manifest, tmp_path / "models", timeout=5) == [tmp_path / "models" / "opt" / "labels.txt"]


def test_fetch_from_source_accepts_the_tarball(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    archive = _make_tarball(source / "tiny_2026.tar.gz", {"tiny_2026/weights.bin": WEIGHTS})
    (source / "labels.txt").write_bytes(LABELS)
    manifest = _tiny_manifest(tmp_path, "http://unused.invalid", archive_checksum=f"sha1:{_sha1(archive)}")
    paths = models.fetch(manifest, tmp_path / "models", source=source)
    assert paths[0].read_bytes() == WEIGHTS
