"""A terminal progress bar (frames, fps, ETA); silent when stderr is not a TTY."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Never

from tqdm import tqdm


class ProgressBar:
    def __init__(self, label: str) -> None:
        self._label = label
        self._bar: tqdm[Never] | None = None
        self._done = 0

    def __enter__(self) -> ProgressBar:
        return self

    def update(self, done: int, total: int | None) -> None:
        if self._bar is None:
            if not sys.stderr.isatty():
                return
            self._bar = tqdm(total=total, desc=self._label, unit="frame", file=sys.stderr, leave=False)
        if self._bar is not None:
            self._bar.update(done - self._done)
        self._done = done

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        if self._bar is not None:
            self._bar.close()
