"""Producer and Consumer: bounded hand-over between threads, errors reach the caller, close() ends the thread.

Every wait is on an event or a condition, bounded only so a broken stage fails
the test instead of hanging it; no assertion depends on how long anything takes.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Iterator

import pytest

from edgeguard import stages
from edgeguard.stages import Consumer, Producer

# Only reached when the code under test is broken (a thread that never ends, a put that never blocks).
WAIT = 10.0
# A stage that hangs fails the test in a minute, not at the suite's 15-minute limit.
pytestmark = pytest.mark.timeout(60)


class Counter:
    """A count other threads bump and this one waits on."""

    def __init__(self) -> None:
        self.value = 0
        self._cond = threading.Condition()

    def bump(self) -> None:
        with self._cond:
            self.value += 1
            self._cond.notify_all()

    def wait_for(self, value: int) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.value >= value, timeout=WAIT), f"stuck at {self.value} < {value}"


class FakeTime:
    """Stands in for the `time` module in stages: the clock moves only when a test moves it."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def watch_full_puts(monkeypatch: pytest.MonkeyPatch, q: queue.Queue[object], on_full: Callable[[], None]) -> None:
    """Call `on_full` whenever something is put into `q` while it is full (that put must wait)."""
    put = q.put

    def watched(item: object, block: bool = True, timeout: float | None = None) -> None:
        if q.full():
            on_full()
        put(item, block, timeout)

    monkeypatch.setattr(q, "put", watched)


def on_get(monkeypatch: pytest.MonkeyPatch, q: queue.Queue[object], started: Callable[[], None]) -> None:
    """Call `started` each time a stage starts waiting for an item of `q`."""
    get = q.get

    def watched(block: bool = True, timeout: float | None = None) -> object:
        started()
        return get(block, timeout)

    monkeypatch.setattr(q, "get", watched)


def in_thread(work: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    """Run `work` in a non-daemon thread (the leak check sees it); its exception is kept for the test."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - checked by the test thread
            errors.append(exc)

    thread = threading.Thread(target=run, name="test-caller")
    thread.start()
    return thread, errors


def joined(stage: Producer[int] | Consumer[int]) -> bool:
    assert stage.thread is not None
    return not stage.thread.is_alive() and stage.thread not in threading.enumerate()


# Producer


def test_producer_yields_every_item_in_order() -> None:
    producer = Producer(lambda: iter(range(1000)), 3, "test-producer")
    try:
        assert list(producer) == list(range(1000))
    finally:
        producer.close()
    assert joined(producer)


def test_producer_of_an_empty_source_ends_at_once() -> None:
    producer: Producer[int] = Producer(lambda: iter(()), 3, "test-producer")
    try:
        assert list(producer) == []
    finally:
        producer.close()
    assert joined(producer)


def test_an_error_in_the_source_reaches_the_caller() -> None:
    boom = ValueError("frame 3 is corrupt")

    def source() -> Iterator[int]:
        yield from range(3)
        raise boom

    producer = Producer(source, 2, "test-producer")
    try:
        with pytest.raises(ValueError, match="frame 3 is corrupt") as caught:
            for _ in producer:
                pass
    finally:
        producer.close()
    assert caught.value is boom
    assert joined(producer)


def test_an_error_opening_the_source_reaches_the_caller() -> None:
    def source() -> Iterator[int]:
        raise OSError("cannot open the video")

    producer = Producer(source, 2, "test-producer")
    try:
        with pytest.raises(OSError, match="cannot open the video"):
            list(producer)
    finally:
        producer.close()
    assert joined(producer)


def test_an_error_while_the_caller_waits_reaches_it(monkeypatch: pytest.MonkeyPatch) -> None:
    armed, waiting = threading.Event(), threading.Event()
    boom = ValueError("decoder failed mid-file")

    def source() -> Iterator[int]:
        yield 0
        assert waiting.wait(WAIT)
        raise boom

    def signal_wait() -> None:
        if armed.is_set():
            waiting.set()

    producer = Producer(source, 2, "test-producer")
    on_get(monkeypatch, producer.q, signal_wait)
    items = iter(producer)
    try:
        assert next(items) == 0
        armed.set()  # the next get() finds the queue empty: the source fails meanwhile
        with pytest.raises(ValueError, match="decoder failed") as caught:
            next(items)
    finally:
        producer.close()
    assert caught.value is boom
    assert joined(producer)


def test_a_full_queue_blocks_the_producer_instead_of_growing(monkeypatch: pytest.MonkeyPatch) -> None:
    size = 4
    go, full = threading.Event(), threading.Event()
    asked = Counter()

    def source() -> Iterator[int]:
        assert go.wait(WAIT)  # until the queue is watched
        for i in itertools.count():
            asked.bump()
            yield i

    producer = Producer(source, size, "test-producer")
    try:
        watch_full_puts(monkeypatch, producer.q, full.set)
        go.set()
        assert full.wait(WAIT), "the producer never waited for room: its queue is not bounded"
        # Blocked on item `size`: the queue holds exactly `size` items and the source was asked for no more.
        assert producer.q.qsize() == size
        assert asked.value == size + 1
        items = iter(producer)
        assert next(items) == 0
        # One taken, one more made: the producer waits again with the queue full.
        asked.wait_for(size + 2)
        assert [next(items) for _ in range(size + 1)] == list(range(1, size + 2))
    finally:
        producer.close()
    assert joined(producer)


def test_close_stops_a_blocked_producer_and_closes_its_source() -> None:
    finished = threading.Event()
    asked = Counter()

    def source() -> Iterator[int]:
        try:
            for i in itertools.count():
                asked.bump()
                yield i
        finally:
            finished.set()  # the source's own resources (the video reader) are released

    producer = Producer(source, 2, "test-producer")
    for i, item in enumerate(producer):
        assert item == i
        if i == 5:
            break  # the caller stops early, as on a failed frame
    asked.wait_for(9)  # 6 taken, 2 queued, 1 waiting for room: the producer is blocked
    producer.close()
    assert joined(producer)
    assert finished.is_set(), "the source was left open"


def test_producer_busy_counts_the_source_and_not_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeTime()
    monkeypatch.setattr(stages, "time", clock)
    full = threading.Event()

    def source() -> Iterator[int]:
        for i in range(5):
            clock.now += 2.0  # the work of decoding one frame
            yield i

    producer = Producer(source, 1, "test-producer")
    try:
        items = iter(producer)
        assert next(items) == 0
        watch_full_puts(monkeypatch, producer.q, full.set)
        # Item 1 queued, item 2 made and waiting for room: the producer is in put(), not in the source.
        assert full.wait(WAIT)
        busy_while_blocked = producer.busy
        clock.now += 100.0  # time the producer spends waiting for room
        assert list(items) == [1, 2, 3, 4]
    finally:
        producer.close()
    assert busy_while_blocked == pytest.approx(6.0)
    assert producer.busy == pytest.approx(10.0)


# Consumer


def test_consumer_handles_every_item_in_order() -> None:
    seen: list[int] = []
    consumer = Consumer(seen.append, 3, "test-consumer")
    try:
        for i in range(1000):
            consumer.put(i)
        consumer.finish()
    finally:
        consumer.close()
    assert seen == list(range(1000))
    assert joined(consumer)


def test_an_error_in_the_sink_reaches_the_caller_and_stops_the_sink() -> None:
    seen: list[int] = []
    boom = OSError(28, "No space left on device")

    def sink(item: int) -> None:
        seen.append(item)
        if item == 3:
            raise boom

    consumer = Consumer(sink, 2, "test-consumer")
    try:
        # Raised by a later put() or by finish(), whichever comes after the sink failed.
        with pytest.raises(OSError, match="No space left") as caught:
            for i in range(100):
                consumer.put(i)
            consumer.finish()
        assert caught.value is boom
        with pytest.raises(OSError, match="No space left"):
            consumer.put(100)
    finally:
        consumer.close()
    assert seen == [0, 1, 2, 3], "the sink went on after failing"
    assert joined(consumer)


def test_a_sink_error_frees_a_caller_blocked_on_the_full_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    taken, handed = Counter(), Counter()
    boom = RuntimeError("encoder died")

    def sink(item: int) -> None:
        taken.bump()
        assert release.wait(WAIT)
        raise boom

    def fail_once_the_caller_waits() -> None:
        # The sink holds item 0 and the queue item 1: the caller is waiting with item 2.
        if taken.value:
            release.set()

    def feed() -> None:
        for i in range(100):
            consumer.put(i)
            handed.bump()

    consumer = Consumer(sink, 1, "test-consumer")
    watch_full_puts(monkeypatch, consumer.q, fail_once_the_caller_waits)
    caller, errors = in_thread(feed)
    caller.join(WAIT)
    consumer.close()
    assert not caller.is_alive(), "the caller still waits for room the failed sink will never make"
    assert errors == [boom]
    assert handed.value == 2, "the put that was waiting must raise, not return"
    assert joined(consumer)


def test_a_full_queue_blocks_the_caller_instead_of_growing(monkeypatch: pytest.MonkeyPatch) -> None:
    size = 3
    release, full = threading.Event(), threading.Event()
    handed, taken = Counter(), Counter()
    seen: list[int] = []

    def sink(item: int) -> None:
        taken.bump()
        assert release.wait(WAIT)
        seen.append(item)

    def feed() -> None:
        for i in range(20):
            consumer.put(i)
            handed.bump()
        consumer.finish()

    def settled_full() -> None:
        # Once the sink holds item 0 it takes no more: a full queue then stays full.
        if taken.value:
            full.set()

    consumer = Consumer(sink, size, "test-consumer")
    watch_full_puts(monkeypatch, consumer.q, settled_full)
    feeder, errors = in_thread(feed)
    try:
        assert full.wait(WAIT), "the caller never waited for room: the queue is not bounded"
        # The sink holds item 0, the queue items 1..size, and the caller waits with the next one.
        assert consumer.q.qsize() == size
        assert handed.value == size + 1
    finally:
        release.set()
        feeder.join(WAIT)
        consumer.close()
    assert not feeder.is_alive()
    assert errors == []
    assert seen == list(range(20))
    assert joined(consumer)


def test_close_stops_an_idle_consumer() -> None:
    seen: list[int] = []
    consumer = Consumer(seen.append, 2, "test-consumer")
    consumer.put(1)
    consumer.close()
    assert joined(consumer)


def test_consumer_busy_counts_the_sink_and_not_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeTime()
    monkeypatch.setattr(stages, "time", clock)
    done, gets = Counter(), Counter()

    def sink(item: int) -> None:
        clock.now += 3.0  # the work of encoding one frame
        done.bump()

    consumer = Consumer(sink, 2, "test-consumer")
    on_get(monkeypatch, consumer.q, gets.bump)
    try:
        for i in range(4):
            consumer.put(i)
            done.wait_for(i + 1)
            # Back in get(), past its own accounting for item i: the clock may move now.
            gets.wait_for(gets.value + 1)
            clock.now += 100.0  # the consumer waits for the next item meanwhile
        consumer.finish()
    finally:
        consumer.close()
    assert consumer.busy == pytest.approx(12.0)
