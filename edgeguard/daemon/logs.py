"""Logging for the service: journald with structured fields under systemd, else stderr."""

from __future__ import annotations

import logging
import os
import sys


def under_systemd() -> bool:
    # systemd sets JOURNAL_STREAM when stdout/stderr go to the journal.
    return bool(os.environ.get("JOURNAL_STREAM"))


def setup(level: str, *, verbose: bool = False) -> None:
    lvl = logging.DEBUG if verbose else getattr(logging, level.upper())
    handler: logging.Handler
    if under_systemd():
        try:
            from systemd.journal import JournalHandler
        except ImportError:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        else:
            handler = JournalHandler(SYSLOG_IDENTIFIER="edgeguard")
            handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=lvl, handlers=[handler], force=True)
