"""Bounded hand-over between threads, so decode, inference and encode overlap.

Queues are bounded so memory stays flat however long the video; an error in
any stage reaches the caller, and `close()` always stops and joins the thread.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_END = object()
_POLL = 0.1


class Stopped(Exception):
    """The other side stopped; the stage ends quietly."""


class _Stage:
    def __init__(self, size: int, name: str) -> None:
        self.q: queue.Queue[object] = queue.Queue(maxsize=size)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.busy = 0.0  # seconds spent in the stage's own work
        self.name = name
        self.thread: threading.Thread | None = None

    def _put(self, item: object) -> None:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=_POLL)
                return
            except queue.Full:
                continue
        raise Stopped

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()


class Producer(_Stage, Generic[T]):
    """Runs an iterator in a thread; iterate the producer to get its items in order."""

    def __init__(self, source: Callable[[], Iterator[T]], size: int, name: str) -> None:
        super().__init__(size, name)
        self.thread = threading.Thread(target=self._run, args=(source,), name=name, daemon=True)
        self.thread.start()

    def _run(self, source: Callable[[], Iterator[T]]) -> None:
        try:
            it = source()
            while True:
                t0 = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    break
                finally:
                    self.busy += time.perf_counter() - t0
                self._put(item)
            self._put(_END)
        except Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            self.error = exc
            self.stop.set()

    def __iter__(self) -> Iterator[T]:
        while True:
            if self.error is not None:
                raise self.error
            try:
                item = self.q.get(timeout=_POLL)
            except queue.Empty:
                if self.thread is not None and not self.thread.is_alive() and self.q.empty():
                    if self.error is not None:
                        raise self.error from None
                    return
                continue
            if item is _END:
                return
            yield item  # type: ignore[misc]


class Consumer(_Stage, Generic[T]):
    """Applies `sink` to every item put, in order, in a thread."""

    def __init__(self, sink: Callable[[T], None], size: int, name: str) -> None:
        super().__init__(size, name)
        self.thread = threading.Thread(target=self._run, args=(sink,), name=name, daemon=True)
        self.thread.start()

    def _run(self, sink: Callable[[T], None]) -> None:
        try:
            while True:
                try:
                    item = self.q.get(timeout=_POLL)
                except queue.Empty:
                    if self.stop.is_set():
                        return
                    continue
                if item is _END:
                    return
                t0 = time.perf_counter()
                sink(item)  # type: ignore[arg-type]
                self.busy += time.perf_counter() - t0
        except BaseException as exc:  # noqa: BLE001 - re-raised by put() or finish() in the caller
            self.error = exc
            self.stop.set()

    def put(self, item: T) -> None:
        if self.error is not None:
            raise self.error
        try:
            self._put(item)
        except Stopped:
            if self.error is not None:
                raise self.error from None
            raise

    def finish(self) -> None:
        """Wait until every item is handled; re-raise the sink's error."""
        if self.error is None:
            with contextlib.suppress(Stopped):
                self._put(_END)
        assert self.thread is not None
        self.thread.join()
        if self.error is not None:
            raise self.error
