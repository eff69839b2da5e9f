"""Logging for the service: journald with structured fields under systemd, else stderr."""

from __future__ import annotations

import logging
import os
import sys


def under_systemd() -> bool:
    # systemd sets JOURNAL_STREAM when stdout/stderr go to the journal.
    return bool(os.environ.get("JOURNAL_STREAM"))


def escape(text: str) -> str:
    """`text` with control characters (newlines too) written as escapes."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii") for c in text)


class OneLine(logging.Filter):
    """Every message is one line: a file name holding a newline cannot forge a log line.

    Applied to the message only; a traceback attached to the record keeps its lines.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = escape(message)
        if clean is not message:
            record.msg, record.args = clean, None
        return True


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
    handler.addFilter(OneLine())
    logging.basicConfig(level=lvl, handlers=[handler], force=True)
