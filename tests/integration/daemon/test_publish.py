"""Only the publish step puts anything into the output folder, watched from inside the interpreter.

An audit hook sees every rename, link and file opened for writing while real jobs run
(a photo, a video, a duplicate, a bad file); each
one that lands in the output folder must come from `edgeguard/publish.py`.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from edgeguard.config import Config
from edgeguard.daemon.folders import Folders, prepare
from edgeguard.daemon.jobs import Jobs
from edgeguard.daemon.ledger import Ledger
from edgeguard.daemon.service import sink_for
from edgeguard.engine import Engine
from tests.conftest import media

PACKAGE = Path(__file__).resolve().parents[3] / "edgeguard"
HELPERS = {PACKAGE / "durable.py"}  # the no-clobber move publish.py calls


class Writes:
    """Every write into one folder, with the edgeguard module that asked for it."""

    def __init__(self) -> None:
        self.folder: Path | None = None
        self.seen: list[tuple[str, str, str]] = []  # (event, path, module)
        sys.addaudithook(self._hook)  # hooks cannot be removed: this one goes quiet with folder=None

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if self.folder is None:
            return
        if event in ("os.rename", "os.link"):
            target = args[1]
        elif event == "open" and _writes(args[1], args[2]):
            target = args[0]
        else:
            return
        if isinstance(target, (str, bytes, os.PathLike)) and Path(os.fsdecode(target)).parent == self.folder:
            self.seen.append((event, os.fsdecode(target), self._caller(sys._getframe(1))))

    @staticmethod
    def _caller(frame: FrameType | None) -> str:
        """The innermost edgeguard module on the stack that is not a shared helper."""
        while frame is not None:
            path = Path(frame.f_code.co_filename)
            if path.is_relative_to(PACKAGE) and path not in HELPERS:
                return str(path.relative_to(PACKAGE))
            frame = frame.f_back
        return "?"


def _writes(mode: object, flags: object) -> bool:
    if isinstance(mode, str):
        return any(c in mode for c in "wax+")
    return isinstance(flags, int) and bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))


WRITES = Writes()


@pytest.fixture
def watched(tmp_path: Path, yolox_env: Path) -> Iterator[tuple[Jobs, Folders]]:
    paths = {k: str(tmp_path / k) for k in ("incoming", "output", "quarantine", "failed", "processed", "work", "state")}
    cfg = Config.model_validate(
        {
            "detector": {"model": "yolox_nano"},
            "paths": paths,
            "watch": {"incomplete_seconds": 0},
            "audit": {"sidecar": True},  # the sidecar is written into the output folder too
        }
    )
    folders = prepare(cfg.paths)
    jobs = Jobs(cfg, folders, Ledger(folders.ledger), Engine(cfg), sink_for(cfg, folders))
    WRITES.seen.clear()
    WRITES.folder = folders.output
    try:
        yield jobs, folders
    finally:
        WRITES.folder = None
        jobs.ledger.close()
        jobs.close()


def _drop_and_run(jobs: Jobs, folders: Folders, src: Path, name: str) -> str:
    shutil.copyfile(src, folders.incoming / name)
    job = jobs.claim(name)
    return jobs.run(job, threading.Event(), lambda _f: None).outcome


def test_only_the_publish_module_writes_into_the_output_folder(watched: tuple[Jobs, Folders]) -> None:
    jobs, folders = watched
    assert _drop_and_run(jobs, folders, media("city.jpg"), "a.jpg") == "done"
    assert _drop_and_run(jobs, folders, media("city.jpg"), "again.jpg") == "duplicate"
    (folders.incoming / "bad.mp4").write_bytes(b"not a video at all")
    assert jobs.run(jobs.claim("bad.mp4"), threading.Event(), lambda _f: None).outcome == "failed"
    assert _drop_and_run(jobs, folders, media("vtest.avi"), "clip.avi") == "done"
    assert sorted(os.listdir(folders.output)) == ["a.jpg", "a.jpg.audit.json", "clip.mp4", "clip.mp4.audit.json"]
    assert WRITES.seen, "the hook saw nothing: it cannot vouch for anything"
    callers = {module for _, _, module in WRITES.seen}
    assert callers == {"publish.py"}, WRITES.seen
