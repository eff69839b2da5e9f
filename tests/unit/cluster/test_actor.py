"""On a node: the model files it receives are checked by sha256 and cached; dead actors' folders go."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeguard.cluster.actor import ModelFile, Parcel, own_folder, place
from edgeguard.errors import EdgeguardError


def _parcel(data: bytes, sha256: str | None = None) -> Parcel:
    digest = sha256 or hashlib.sha256(data).hexdigest()
    return Parcel("m", "name: m\n", (ModelFile("weights", "m.onnx", digest, data, explicit=False),))


def test_a_model_file_is_fetched_once_checked_and_fetched_again_when_damaged(tmp_path: Path) -> None:
    fetched: list[object] = []

    def fetch(ref: object) -> bytes:
        fetched.append(ref)
        assert isinstance(ref, bytes)
        return ref

    parcel = _parcel(b"weights" * 1000)
    placed = place(parcel, tmp_path, fetch)
    assert placed["weights"].read_bytes() == b"weights" * 1000
    assert len(fetched) == 1
    place(parcel, tmp_path, fetch)  # a second actor of the node: from the cache
    assert len(fetched) == 1
    placed["weights"].write_bytes(b"flipped bits")  # damaged on the node's disk
    assert place(parcel, tmp_path, fetch)["weights"].read_bytes() == b"weights" * 1000
    assert len(fetched) == 2


def test_a_model_file_damaged_in_transit_is_refused(tmp_path: Path) -> None:
    parcel = _parcel(b"what arrived", sha256=hashlib.sha256(b"what was sent").hexdigest())
    with pytest.raises(EdgeguardError, match="arrived damaged"):
        place(parcel, tmp_path, lambda ref: ref)
    assert [p.name for p in (tmp_path / "sha256").iterdir()] == []


def test_a_cache_others_can_write_is_refused(tmp_path: Path) -> None:
    (tmp_path / "sha256").mkdir(mode=0o700)
    (tmp_path / "sha256").chmod(0o777)
    with pytest.raises(EdgeguardError, match="not a folder of this user's alone"):
        place(_parcel(b"x"), tmp_path, lambda ref: ref)


def test_folders_of_actors_that_are_gone_are_removed(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    dead = tmp_path / gone.stdout.decode().strip()
    dead.mkdir()
    (dead / "footage.mp4").write_bytes(b"x")
    alive = tmp_path / "1"  # init: alive, whoever owns it
    alive.mkdir()
    folder = own_folder(tmp_path)
    assert folder == tmp_path / str(os.getpid()) and folder.is_dir()
    assert not dead.exists() and alive.exists()
