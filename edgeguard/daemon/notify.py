"""A tiny, dependency-free sd_notify(3): tell systemd when the daemon is ready, alive, reloading or stopping.

systemd passes the address of its notification socket in ``$NOTIFY_SOCKET`` to a service
with ``Type=notify``; the service sends it newline-separated ``KEY=VALUE`` datagrams over
an ``AF_UNIX``/``SOCK_DGRAM`` socket. Outside systemd (a shell, a test, a container) the
variable is unset and every call here is a no-op returning ``False``, so the daemon calls
the notifier unconditionally.

Like gunicorn's ``systemd.py`` this speaks the protocol itself rather than depending on
``systemd-python``; a failed send is logged once at debug level and never raised, because
a lost status line must never stop the daemon.

Protocol notes the daemon relies on (see sd_notify(3), sd_watchdog_enabled(3) and
systemd.service(5)):

* ``READY=1`` ends start-up (``TimeoutStartSec=``) and ends a reload.
* ``RELOADING=1`` must be followed by ``READY=1`` when the reload is done. systemd ≥ 253's
  ``Type=notify-reload`` also requires ``MONOTONIC_USEC=`` (CLOCK_MONOTONIC, µs) in the same
  message, to tell this reload from an older one; without it the reload hangs until it times
  out. Older systemd ignores the field, so :meth:`Notifier.reloading` always sends it.
* ``WATCHDOG=1`` resets the ``WatchdogSec=`` timer (:meth:`Notifier.watchdog_interval`); ping
  at least every half of it, and only while making progress, so a hung pipeline is killed
  and restarted.
* ``STOPPING=1`` starts shutdown; ``EXTEND_TIMEOUT_USEC=`` asks for more time in the current
  state (start-up or stop), measured from now.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Z][A-Z0-9_]*")

Field = str | int


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd compares ``MONOTONIC_USEC=`` with."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def _address(raw: str | None) -> bytes | None:
    """The AF_UNIX address for ``$NOTIFY_SOCKET``, or None when unset or unsupported.

    A leading ``@`` names a Linux abstract socket (the kernel wants a leading NUL byte);
    anything else must be an absolute filesystem path. Other schemes (``vsock:``, used by
    systemd ≥ 254 for VMs) are not supported here and disable notifications.
    """
    if not raw:
        return None
    if raw.startswith("@"):
        return b"\0" + os.fsencode(raw[1:])
    if raw.startswith("/"):
        return os.fsencode(raw)
    log.debug("NOTIFY_SOCKET=%r is not an AF_UNIX address; systemd notifications disabled", raw)
    return None


SEND_TIMEOUT = 1.0  # seconds a notification may wait for room in the manager's queue


def _format(fields: Mapping[str, Field]) -> str:
    lines = []
    for name, value in fields.items():
        if not _NAME.fullmatch(name):
            raise ValueError(f"not an sd_notify field name: {name!r}")
        # One field per line: a newline inside a value would smuggle in another field.
        text = str(value).replace("\r", " ").replace("\n", " ")
        lines.append(f"{name}={text}")
    return "\n".join(lines)


class Notifier:
    """Sends sd_notify messages to the socket systemd named when this object was made.

    The environment is read once, at construction (pass ``environ`` to inject one in
    tests). With ``unset_environment=True`` the variables are then removed from
    ``os.environ`` so child processes do not inherit them, as sd_notify(3)'s flag does.
    """

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        *,
        unset_environment: bool = False,
        send_timeout: float = SEND_TIMEOUT,
    ) -> None:
        env = os.environ if environ is None else environ
        self.send_timeout = send_timeout
        self.address = _address(env.get("NOTIFY_SOCKET"))
        self._watchdog_usec = env.get("WATCHDOG_USEC")
        self._watchdog_pid = env.get("WATCHDOG_PID")
        self._failed = False  # a send error has been logged already
        if unset_environment:
            for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                os.environ.pop(name, None)

    @property
    def enabled(self) -> bool:
        """True when running under a service manager that asked for notifications."""
        return self.address is not None

    # ------------------------------------------------------------------ sending

    def send_raw(self, text: str) -> bool:
        """Send one datagram as is; True when the service manager's socket accepted it."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # A manager that stops reading fills its queue (net.unix.max_dgram_qlen, often 10)
                # and a plain send then blocks forever; a late notification is worth less than a stall.
                sock.settimeout(self.send_timeout)
                sock.connect(self.address)
                sock.sendall(text.encode("utf-8"))
        except OSError:
            if not self._failed:
                self._failed = True
                log.debug("sd_notify to %r failed (logged once)", self.address, exc_info=True)
            return False
        return True

    def send(self, **fields: Field) -> bool:
        """Send ``KEY=VALUE`` fields in one datagram, in the order given.

        Newlines inside values are replaced by spaces. A field name that is not upper-case
        letters, digits and underscores is a programming error and raises ValueError;
        send errors are never raised.
        """
        return self.send_raw(_format(fields))

    # ------------------------------------------------------------------ helpers

    def ready(self, status: str | None = None) -> bool:
        """Start-up (or a reload) is complete: ``READY=1`` [+ ``STATUS=``]."""
        return self.send(READY=1, **_status(status))

    def status(self, text: str) -> bool:
        """A one-line, human-readable state for ``systemctl status``: ``STATUS=``."""
        return self.send(STATUS=text)

    def watchdog(self) -> bool:
        """Keep-alive ping: ``WATCHDOG=1``. Send only while making progress."""
        return self.send(WATCHDOG=1)

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown has begun: ``STOPPING=1`` [+ ``STATUS=``]."""
        return self.send(STOPPING=1, **_status(status))

    def reloading(self, status: str | None = None) -> bool:
        """A reload has begun: ``RELOADING=1`` + ``MONOTONIC_USEC=`` [+ ``STATUS=``].

        ``MONOTONIC_USEC`` is CLOCK_MONOTONIC now, in µs. systemd ≥ 253 requires it for
        ``Type=notify-reload`` (a reload is only considered started by a message stamped
        after systemd sent the reload signal); older versions ignore it. Send
        :meth:`ready` when the new configuration is in use, or the reload never ends.
        """
        return self.send(RELOADING=1, MONOTONIC_USEC=monotonic_usec(), **_status(status))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more in the current start-up or stop: ``EXTEND_TIMEOUT_USEC=``.

        Only matters once the original ``TimeoutStartSec=``/``TimeoutStopSec=`` has passed;
        repeat before the extension runs out.
        """
        return self.send(EXTEND_TIMEOUT_USEC=max(0, round(seconds * 1_000_000)))

    # ------------------------------------------------------------------ watchdog

    def watchdog_interval(self) -> float | None:
        """``WatchdogSec=`` in seconds when systemd expects pings from this process, else None.

        This is the timeout itself (sd_watchdog_enabled(3)'s value): systemd acts when no
        ``WATCHDOG=1`` arrived for this long, so ping at least every half of it. None when
        ``$WATCHDOG_USEC`` is unset or not a positive integer, or when ``$WATCHDOG_PID`` is set
        to another process's pid (a child that inherited the environment is not watched).
        """
        if self._watchdog_usec is None:
            return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            log.debug("ignoring WATCHDOG_USEC=%r: not an integer", self._watchdog_usec)
            return None
        if usec <= 0:
            return None
        if self._watchdog_pid is not None:
            try:
                pid = int(self._watchdog_pid)
            except ValueError:
                log.debug("ignoring the watchdog: WATCHDOG_PID=%r is not a pid", self._watchdog_pid)
                return None
            if pid != os.getpid():
                return None
        return usec / 1_000_000


def _status(status: str | None) -> dict[str, Field]:
    return {} if status is None else {"STATUS": status}
