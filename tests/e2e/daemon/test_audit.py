"""Audit records from the real daemon: in the ledger, as sidecars, and through `edgeguard audit`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import media
from tests.e2e.daemon.conftest import Daemon, assert_clean, frame_count, names, sha256


def audit(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeguard", "audit", *args, "-c", str(d.cfg_path)],
        env=d.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def record_of(d: Daemon, query: str) -> dict[str, Any]:
    done = audit(d, query, "--json")
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def test_each_output_has_a_record_that_matches_its_files(daemon: Daemon, clip10: Path) -> None:
    d = daemon
    d.configure(daemon={"originals": "quarantine"}, audit={"sidecar": True})
    d.start()
    d.drop(media("city.jpg"), "street.jpg")
    d.drop(clip10, "clip.avi")
    (d.incoming / "bad.mp4").write_bytes(b"not a video")
    d.wait_states({"done": 2, "failed": 1})
    d.wait_idle()
    assert names(d.output) == ["clip.mp4", "clip.mp4.audit.json", "street.jpg", "street.jpg.audit.json"]

    for out, original in (("clip.mp4", "clip.avi"), ("street.jpg", "street.jpg")):
        sidecar = json.loads((d.output / f"{out}.audit.json").read_text(encoding="utf-8"))
        # The hashes and sizes are those of the files on disk, not of something else.
        assert sidecar["output"]["sha256"] == sha256(d.output / out)
        assert sidecar["output"]["size"] == (d.output / out).stat().st_size
        assert sidecar["output"]["path"] == str(d.output / out) and sidecar["output"]["name"] == out
        assert sidecar["input"]["sha256"] == sha256(d.quarantine / original)
        assert sidecar["input"]["size"] == (d.quarantine / original).stat().st_size
        assert sidecar["input"]["name"] == original
        assert sidecar["original"] == {"policy": "quarantine", "path": str(d.quarantine / original)}
        # The model that did the work, its weights as loaded, and the config in force.
        assert sidecar["model"]["name"] == "yolox_nano" and sidecar["target"] == "cpu"
        weights = sidecar["model"]["weights_sha256"]
        assert weights["weights"] == sha256(d.models_dir / "yolox_nano" / "yolox_nano.onnx")
        assert weights["labels"] == sha256(d.models_dir / "yolox_nano" / "coco.names")
        assert sidecar["config"]["daemon"]["originals"] == "quarantine"
        assert sidecar["config"]["paths"]["output"] == str(d.output)
        assert len(sidecar["config_sha256"]) == 64 and sidecar["edgeguard"]
        assert sidecar["started"] <= sidecar["finished"]
        # What was found and hidden: people in both, so something was hidden, but not everything.
        assert sidecar["detections"].get("person", 0) > 0
        assert 0 < sidecar["hidden"]["mean"] <= sidecar["hidden"]["max"] < 1
        # The ledger holds the same record; `edgeguard audit` finds it by either file and by either hash.
        assert record_of(d, str(d.output / out)) == sidecar
        assert record_of(d, str(d.quarantine / original)) == sidecar
        assert record_of(d, original) == sidecar
        assert record_of(d, out) == sidecar
        assert record_of(d, sidecar["input"]["sha256"]) == sidecar

    video = json.loads((d.output / "clip.mp4.audit.json").read_text(encoding="utf-8"))
    assert video["kind"] == "video" and video["frames"] == frame_count(d.output / "clip.mp4") == 10
    assert 1 <= video["keyframes"] <= video["frames"]
    photo = json.loads((d.output / "street.jpg.audit.json").read_text(encoding="utf-8"))
    assert photo["kind"] == "image" and photo["frames"] == photo["keyframes"] == 1

    text = audit(d, "clip.mp4")
    assert text.returncode == 0, text.stderr
    assert f"sha256:{video['output']['sha256']}" in text.stdout and "quarantine" in text.stdout
    # A failed file has no output and so no record; a file never seen is not found either.
    missing = audit(d, "bad.mp4")
    assert missing.returncode == 1 and "no audit record for bad.mp4" in missing.stderr
    assert_clean(d)
    assert d.terminate(timeout=15) == 0


def test_an_output_of_other_content_is_not_found_by_its_name(daemon: Daemon, clip10: Path, tmp_path: Path) -> None:
    d = daemon
    d.start()
    d.drop(media("city.jpg"))
    d.wait_states({"done": 1})
    d.wait_idle()
    assert names(d.output) == ["city.jpg"]  # no sidecar unless asked for
    assert record_of(d, "city.jpg")["output"]["sha256"] == sha256(d.output / "city.jpg")
    # A file that exists is looked up by its content: a different city.jpg has no record.
    impostor = tmp_path / "city.jpg"
    impostor.write_bytes(media("000000038829.jpg").read_bytes())
    assert audit(d, str(impostor)).returncode == 1

    # A camera reuses the name: the second output is city-1.jpg. Once a consumer has taken both
    # away, asking for city.jpg answers with city.jpg's record, not with the newer city-1.jpg's.
    d.drop(media("000000038829.jpg"), "city.jpg")
    d.wait_states({"done": 2})
    d.wait_idle()
    first, second = sha256(d.output / "city.jpg"), sha256(d.output / "city-1.jpg")
    for name in names(d.output):
        (d.output / name).unlink()
    assert record_of(d, "city.jpg")["output"]["sha256"] == first
    assert record_of(d, "city-1.jpg")["output"]["sha256"] == second
    every = audit(d, "city.jpg", "--all", "--json").stdout.splitlines()
    assert [json.loads(line)["output"]["name"] for line in every] == ["city.jpg", "city-1.jpg"]
    assert d.terminate(timeout=15) == 0


def test_without_a_ledger_or_with_a_folder_it_says_so(daemon: Daemon) -> None:
    d = daemon  # never started: no ledger yet
    none = audit(d, "clip.mp4")
    assert none.returncode == 1 and "no ledger at" in none.stderr, none.stderr
    folder = audit(d, str(d.output))
    assert folder.returncode == 1 and "is a folder" in folder.stderr, folder.stderr


def test_a_sidecar_that_cannot_be_written_costs_the_output_nothing(daemon: Daemon) -> None:
    """The sidecar is a copy: when it cannot be written, the output stays published, the job is
    done, the record is in the ledger, one error line says so, and no temporary is left."""
    d = daemon
    d.configure(audit={"sidecar": True})
    (d.output / "city.jpg.audit.json").mkdir()  # the sidecar's name taken by a folder: its rename fails
    d.start()
    d.drop(media("city.jpg"))
    d.wait_states({"done": 1})
    d.wait_idle()
    assert "city.jpg: cannot write its audit sidecar" in d.log()
    assert (d.output / "city.jpg").is_file() and (d.output / "city.jpg.audit.json").is_dir()
    [record] = d.audits()
    assert json.loads(record["record"])["output"]["sha256"] == sha256(d.output / "city.jpg")
    assert_clean(d)
    d.assert_alive()
    assert d.terminate(timeout=30) == 0
