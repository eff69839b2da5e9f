"""Helpers shared by the tests that drive the `edgeguard` CLI in-process."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from edgeguard.cli import main

YOLOX = ("--set", "detector.model=yolox_nano")
SUMMARY_KEYS = {"input", "output", "frames", "detections", "seconds", "fps", "model", "target"}


def drop_cli_logging() -> None:
    """`main` installs a root StreamHandler on the (captured) stderr; remove it so it cannot outlive the test."""
    root = logging.getLogger()
    for handler in root.handlers[:]:
        if type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
    root.setLevel(logging.WARNING)


def cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    """Run `edgeguard ARGV` in-process; return (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    finally:
        drop_cli_logging()
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(err: str) -> list[str]:
    """The CLI's own messages (log records start with their level name)."""
    return [line for line in err.splitlines() if line.startswith("edgeguard:")]


def ffmpeg(*args: str | Path) -> None:
    exe = shutil.which("ffmpeg")
    if exe is None:
        pytest.skip("FFMPEG NOT INSTALLED: cannot cut test clips (apt-get install ffmpeg)")
    subprocess.run([exe, "-v", "error", "-y", *map(str, args)], check=True)
