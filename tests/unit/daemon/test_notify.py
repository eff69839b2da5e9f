"""sd_notify over a real AF_UNIX datagram socket, as systemd would receive it."""

from __future__ import annotations

import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeguard.daemon.notify import Notifier, monotonic_usec


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket in tmp_path standing in for systemd's /run/systemd/notify."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        yield sock, str(path)


def _recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode("utf-8")


def _nothing_pending(sock: socket.socket) -> bool:
    sock.settimeout(0.05)
    try:
        sock.recv(4096)
    except TimeoutError:
        return True
    return False


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


def test_messages_arrive_exactly(listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch) -> None:
    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    notifier = Notifier()
    assert notifier.enabled

    assert notifier.ready("watching /var/lib/edgeguard/incoming")
    assert _recv(sock) == "READY=1\nSTATUS=watching /var/lib/edgeguard/incoming"
    assert notifier.ready()
    assert _recv(sock) == "READY=1"
    assert notifier.status("protecting cam1.mp4 (40%)")
    assert _recv(sock) == "STATUS=protecting cam1.mp4 (40%)"
    assert notifier.watchdog()
    assert _recv(sock) == "WATCHDOG=1"
    assert notifier.stopping()
    assert _recv(sock) == "STOPPING=1"
    assert notifier.stopping("finishing cam1.mp4")
    assert _recv(sock) == "STOPPING=1\nSTATUS=finishing cam1.mp4"
    assert notifier.extend_timeout(2.5)
    assert _recv(sock) == "EXTEND_TIMEOUT_USEC=2500000"
    assert notifier.send_raw("X_CUSTOM=1\n")
    assert _recv(sock) == "X_CUSTOM=1\n"
    assert _nothing_pending(sock)


def test_reloading_carries_monotonic_usec(listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch) -> None:
    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    notifier = Notifier()
    before = monotonic_usec()
    assert notifier.reloading("reloading configuration")
    after = monotonic_usec()
    message = _recv(sock)
    match = re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=(\d+)\nSTATUS=reloading configuration", message)
    assert match, message
    stamp = int(match.group(1))
    assert before <= stamp <= after
    # CLOCK_MONOTONIC in µs, not CLOCK_REALTIME or nanoseconds.
    assert abs(stamp - time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6) < 5e6

    assert notifier.reloading()
    assert re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=\d+", _recv(sock))


def test_newlines_in_values_cannot_inject_fields(
    listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    notifier = Notifier()
    assert notifier.status("bad\nREADY=1")
    assert _recv(sock) == "STATUS=bad READY=1"
    with pytest.raises(ValueError, match="field name"):
        notifier.send(**{"READY=1\nSTATUS": "x"})


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"edgeguard-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        notifier = Notifier()
        assert notifier.address == b"\0" + name.encode()
        assert notifier.ready("up")
        assert _recv(sock) == "READY=1\nSTATUS=up"


def test_socket_is_read_once_at_construction(
    listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    notifier = Notifier()
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert notifier.watchdog()
    assert _recv(sock) == "WATCHDOG=1"
    assert not Notifier().enabled


def test_unset_environment(listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch) -> None:
    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    notifier = Notifier(unset_environment=True)
    assert "NOTIFY_SOCKET" not in os.environ
    assert "WATCHDOG_USEC" not in os.environ
    assert notifier.watchdog_interval() == 4.0
    assert notifier.ready()
    assert _recv(sock) == "READY=1"


@pytest.mark.parametrize("value", [None, "", "tcp:127.0.0.1:9", "relative/path"])
def test_no_socket_is_a_no_op(value: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if value is not None:
        monkeypatch.setenv("NOTIFY_SOCKET", value)
    notifier = Notifier()
    assert not notifier.enabled
    assert notifier.ready("x") is False
    assert notifier.status("x") is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False
    assert notifier.reloading() is False
    assert notifier.send(READY=1) is False
    assert notifier.send_raw("READY=1") is False


def test_send_errors_are_logged_once_and_never_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    assert notifier.enabled
    with caplog.at_level(logging.DEBUG, logger="edgeguard.daemon.notify"):
        assert notifier.ready() is False
        assert notifier.watchdog() is False
        assert notifier.stopping() is False
    failures = [r for r in caplog.records if "sd_notify" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].levelno == logging.DEBUG


@pytest.mark.parametrize(
    ("env", "timeout"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "120000000"}, 120.0),
        ({"WATCHDOG_USEC": "500000"}, 0.5),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": "{pid}"}, 120.0),
        ({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": "{other}"}, None),
        ({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": "me"}, None),
        ({"WATCHDOG_PID": "{pid}"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], timeout: float | None) -> None:
    pid = os.getpid()
    environ = {k: v.format(pid=pid, other=pid + 1) for k, v in env.items()}
    assert Notifier(environ).watchdog_interval() == timeout


def test_watchdog_from_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "120000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert Notifier().watchdog_interval() == 120.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert Notifier().watchdog_interval() is None


def test_a_manager_that_stops_reading_cannot_stall_the_daemon(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path}, send_timeout=0.05)
    qlen = int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text())
    sent = [notifier.send(STATUS=f"message {i}") for i in range(qlen + 20)]
    # The queue takes what it can hold; the rest is dropped after the timeout instead of blocking.
    assert sent[0] and not sent[-1]
    delivered = sum(sent)
    got = [_recv(sock) for _ in range(delivered)]
    assert got == [f"STATUS=message {i}" for i, ok in enumerate(sent) if ok]
    assert _nothing_pending(sock)
    assert notifier.send(STATUS="after")  # room again once the manager reads
