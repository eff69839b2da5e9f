"""What the worker tells the main loop: one queue, these events, in the order they happened.

The worker thread owns the model, the files and the ledger; the main loop owns
the clock, the arrivals and the notify socket. The worker posts these, and the
main loop hands each to its handlers (its own bookkeeping first; a metric is
one more handler); the other way go only tasks and two stop flags (see worker).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edgeguard.daemon.watcher import Seen


@dataclass(frozen=True)
class Ready:
    """Recovery is done; `queued` jobs wait in the work folder."""

    queued: int


@dataclass(frozen=True)
class StartFailed:
    """The worker could not start (ledger, folders): the daemon exits with this error."""

    error: BaseException


@dataclass(frozen=True)
class Started:
    """A job began: claimed from incoming, or taken from the queue."""

    name: str
    job: int


@dataclass(frozen=True)
class Progress:
    name: str
    fraction: float  # 0..1


@dataclass(frozen=True)
class FileReport:
    """What a file that reached a final state took and, if it was protected, what was done."""

    seconds: float
    stage: str | None = None  # where a failed file failed
    frames: int = 0
    keyframes: int = 0
    fps: float = 0.0
    hidden: float = 0.0  # share of the frame hidden, mean over its frames


@dataclass(frozen=True)
class Finished:
    """A task ended and the worker is idle; `outcome` is a ledger state (done, failed, ...) or
    what stopped it (withdrawn, refused, rolled back, retry, error)."""

    name: str | None
    outcome: str
    queued: int  # jobs still waiting in the work folder
    pause: float = 0.0  # seconds before the next task may be handed over (the disk or ledger misbehaved)
    report: FileReport | None = None  # for a final state (done, duplicate, failed)
    waiting: str | None = None  # why the job waits for the cluster (cluster.mode: only), if it does


@dataclass(frozen=True)
class Verdict:
    """What the worker learnt about a file in incoming, for the main loop's arrivals."""

    name: str
    reason: str | None  # to log once (None: the worker logged it)
    retry: bool  # still being written: settle it again; else hold it until it changes (or `until`)
    until: float | None = None
    seen: Seen | None = None  # the file as it was judged: held only if it is still that


Event = Ready | StartFailed | Started | Progress | Finished | Verdict
Handler = Callable[[Event], None]
