"""The checks every input gets before a decoder sees it."""

from __future__ import annotations

from pathlib import Path

from edgeguard.errors import InputError


def check_input(path: Path) -> int:
    """The size of `path`, a non-empty regular file; InputError naming why not."""
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise InputError(path, "file does not exist") from exc
    except OSError as exc:
        raise InputError(path, f"cannot stat file: {exc.strerror or exc}") from exc
    if not path.is_file():
        raise InputError(path, "not a regular file")
    if st.st_size == 0:
        raise InputError(path, "empty file (0 bytes)")
    return st.st_size
