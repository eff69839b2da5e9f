"""Publish: the one place where a protected output enters the place its readers look.

The engine writes every output to a hidden staging name in a private folder
(`staging_path`); only a sink makes it visible, and only once it is complete
and verified. The daemon publishes through a `Sink` (the local output folder
today; another machine is one more implementation); `edgeguard protect`
writes where the user said with `replace_into`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

from edgeguard.durable import fsync_dir, move_noclobber, short_of_space, sweep_temporaries
from edgeguard.media import media_kind

log = logging.getLogger(__name__)

PARTIAL_MARK = ".partial"  # in every staging name: recovery removes what a crash left


def output_name(name: str) -> str:
    """The output's name for an input called `name`: videos become MP4, images keep their format."""
    path = Path(name)
    return path.stem + ".mp4" if media_kind(path) == "video" else path.name


def staging_path(folder: Path, name: str) -> Path:
    """A hidden, unique name in `folder` for output `name`, keeping its extension for the muxer."""
    path = Path(name)
    return folder / f".{path.stem}.{uuid.uuid4().hex[:8]}{PARTIAL_MARK}{path.suffix}"


def is_staging(name: str) -> bool:
    """Whether `name` is one of `staging_path`'s (an original may be called x.partial.mp4: not hidden)."""
    return name.startswith(".") and PARTIAL_MARK in name


def replace_into(staged: Path, dst: Path) -> None:
    """Make a staged output (already flushed by the engine) `dst`, replacing what is there (the CLI's output)."""
    os.replace(staged, dst)
    fsync_dir(dst.parent)


class Sink(ABC):
    """Where the daemon's outputs go. Every output is named by an address the ledger keeps."""

    @abstractmethod
    def problem(self, size: int) -> str | None:
        """Why the output of an input of `size` bytes cannot be published now (full, read-only), or None."""

    @abstractmethod
    def publish(
        self, staged: Path, name: str, before: Callable[[str], None], alive: Callable[[], None] | None = None
    ) -> str:
        """Publish the finished file `staged` as `name` (never over another output); return its address.

        `before(address)` is called before the output becomes visible, so the caller can record
        it first: after a crash, a recorded address that `exists` means the output was published.
        OSError when the sink refuses (the sink's fault, not the input's); `staged` is then kept.
        """

    @abstractmethod
    def attach(self, staged: Path, address: str, suffix: str) -> None:
        """Put the finished file `staged` beside the output at `address` as ADDRESS+`suffix`, replacing an
        earlier one. OSError when the sink refuses; `staged` is then the caller's to remove."""

    @abstractmethod
    def exists(self, address: str) -> bool:
        """Whether the output at `address` is still published."""

    @abstractmethod
    def sha256(self, address: str) -> str:
        """The sha256 of the output at `address` (recovery checks that a published output is the job's own)."""

    @abstractmethod
    def describe(self) -> str:
        """Where outputs go, for log lines."""

    def recover(self) -> None:  # noqa: B027 - optional: a sink may have nothing to clean up
        """Clean up what a crash mid-publish left behind (called once, before any job runs)."""


class LocalFolder(Sink):
    """A folder on this machine; outputs appear in it atomically, by hard link, with `mode`."""

    def __init__(self, folder: Path, *, min_free: int, output_ratio: float, mode: int = 0o640) -> None:
        self.folder = folder
        self.min_free = min_free
        self.output_ratio = output_ratio
        self.mode = mode

    def problem(self, size: int) -> str | None:
        short = short_of_space(self.folder, self.min_free + int(size * self.output_ratio))
        if short:
            return short
        # access(), not a probe file: a kill between creating and removing one would leave it
        # among the outputs. access() also reports a read-only mount.
        if not os.access(self.folder, os.W_OK | os.X_OK):
            return f"output folder {self.folder} is not writable by the daemon"
        return None

    def publish(
        self, staged: Path, name: str, before: Callable[[str], None], alive: Callable[[], None] | None = None
    ) -> str:
        dst = move_noclobber(
            staged, self.folder, name, before=lambda dst: before(str(dst)), mode=self.mode, alive=alive
        )
        return str(dst)

    def attach(self, staged: Path, address: str, suffix: str) -> None:
        # Staged in work (the same file system: see paths.work), so nothing half written is ever here.
        staged.chmod(self.mode)
        os.replace(staged, address + suffix)
        fsync_dir(self.folder)

    def exists(self, address: str) -> bool:
        return Path(address).is_file()

    def sha256(self, address: str) -> str:
        with open(address, "rb") as stream:
            return hashlib.file_digest(stream, "sha256").hexdigest()

    def describe(self) -> str:
        return str(self.folder)

    def recover(self) -> None:
        # A crash during a cross-filesystem publish can leave the hidden copy (perhaps also
        # linked as the output it became); it is only ever a temporary.
        for name in sweep_temporaries(self.folder):
            log.info("removed %s, a copy a crash interrupted", name)
