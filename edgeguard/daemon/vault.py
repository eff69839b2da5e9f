"""Sealing a job's original into a folder, so that a crash at any moment loses nothing.

One job's sealing goes through names that say how far it got:

    .T-JJJJJJJJ.sealing    being encrypted (incomplete: removed at the next start)
    .T-JJJJJJJJ.age.json   its record, written before the next step
    .T-JJJJJJJJ.sealed     encrypted, flushed: complete, not yet under its name
    NAME.age               linked from .sealed (never over another file), then .sealed is removed
    NAME.age.json          the record renamed beside it

The plaintext in work is deleted by the caller only after that, so at every moment the
original is either still in work or complete under NAME.age (or .sealed, which the job's
redo finishes naming). T names the ledger (its random id), J the job: daemons may share a
sealed or failed folder, and a new ledger numbers its jobs from 1 again. Only the worker thread
calls this.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeguard import seal
from edgeguard.durable import FlushingWriter, create_new, fsync_dir, move_noclobber

log = logging.getLogger(__name__)

SEALING = ".sealing"
SEALED = ".sealed"


@dataclass(frozen=True)
class Vault:
    """Seals originals to `recipients` (age public keys); files get `mode`; `tag` names the ledger."""

    recipients: Sequence[str]
    mode: int
    tag: str

    def fingerprints(self) -> list[str]:
        return [seal.fingerprint(r) for r in self.recipients]

    def seal(
        self,
        job_id: int,
        plaintext: Path,
        name: str,
        folder: Path,
        *,
        named: Path | None,
        before: Callable[[Path], None],
        about: dict[str, Any],
        cancel: threading.Event | None = None,
        alive: Callable[[], None] | None = None,
    ) -> Path | None:
        """Seal `plaintext` into `folder` as NAME.age (or NAME-1.age, ...) with its record; return it.

        Finishes whatever an earlier, interrupted call for this job got to. `named`: the name
        `before` recorded last time, if any. `before(path)` is called before the sealed file
        takes a name. `about` goes into the record. None when there is nothing to seal: no
        plaintext and nothing sealed (the caller reports the original lost).
        """
        stem = f".{self.tag}-{job_id:08d}"
        pending, complete, record = (folder / f"{stem}{end}" for end in (SEALING, SEALED, seal.SUFFIX + seal.RECORD))
        if not complete.exists():
            if named is not None and named.is_file():
                # Named before a crash (the name is recorded before the link, and .sealed removed after it).
                self._place_record(record, named)
                return named
            if not plaintext.exists():
                return None
            self._encrypt(plaintext, pending, record, about, cancel, alive)
            os.rename(pending, complete)
            fsync_dir(folder)
        final = move_noclobber(complete, folder, name, before=before, suffix=seal.SUFFIX)
        self._place_record(record, final)
        return final

    def _encrypt(
        self,
        plaintext: Path,
        pending: Path,
        record: Path,
        about: dict[str, Any],
        cancel: threading.Event | None,
        alive: Callable[[], None] | None,
    ) -> None:
        pending.unlink(missing_ok=True)  # an earlier attempt's, cut short
        try:
            with plaintext.open("rb") as src, create_new(pending, self.mode) as dst:
                sealed = seal.seal(src, FlushingWriter(dst, alive=alive), self.recipients, cancel=cancel, alive=alive)
                dst.flush()
                os.fsync(dst.fileno())
            record.unlink(missing_ok=True)
            with create_new(record, self.mode) as out:
                out.write(json.dumps(sealed.record(**about), indent=2).encode() + b"\n")
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            pending.unlink(missing_ok=True)
            raise

    @staticmethod
    def _place_record(record: Path, sealed_file: Path) -> None:
        if record.exists():
            os.replace(record, seal.record_path(sealed_file))
            fsync_dir(sealed_file.parent)


def sweep(folder: Path, tag: str, abandoned: Callable[[int], bool]) -> None:
    """Remove what this daemon's sealing left in `folder` that no redo will finish: incomplete
    ciphertext always; a complete one and its record only when `abandoned(job)` says its job no
    longer seals (sealing was turned off) while its plaintext is still there to be handled."""
    for entry in os.scandir(folder):
        if not entry.name.startswith(f".{tag}-"):
            continue
        number = entry.name[len(tag) + 2 :].split(".", 1)[0]
        if entry.name.endswith(SEALING):
            log.info("removing %s, a sealing a crash interrupted (the original is still in work)", entry.name)
            Path(entry.path).unlink(missing_ok=True)
        elif number.isdigit() and abandoned(int(number)):
            log.info("removing %s: sealing was turned off before its job ended (its original is in work)", entry.name)
            Path(entry.path).unlink(missing_ok=True)
