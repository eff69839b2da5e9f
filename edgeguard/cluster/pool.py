"""The actors, in the Ray driver (`bridge`): `actors_per_node` on every live node with the CPUs for them.

Each actor is pinned to its node (so "per node" holds) and is never restarted by Ray: a dead one
is dropped and killed, and a new one started on the next refresh. A node whose actors could not
start is left alone for `retry_seconds`, so one bad node does not stall every file.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeguard.cluster import Unavailable
from edgeguard.cluster.actor import ModelFile, Parcel, Protector

log = logging.getLogger(__name__)

WAIT = 0.5  # seconds between progress messages while actors start
PULSE = "pulse"  # the actors' concurrency group for `Protector.pulse`


@dataclass(eq=False)
class Member:
    handle: Any  # the actor
    node: str
    about: dict[str, Any]
    busy: bool = field(default=False)
    # While busy: its last `pulse`, when that last moved, and a pulse asked and not yet answered.
    steps: int = -1
    moved: float = 0.0
    asking: Any = None

    def start(self) -> None:
        self.busy, self.steps, self.moved, self.asking = True, -1, time.monotonic(), None


def last_line(exc: BaseException) -> str:
    """The line of a Ray error that says what happened (Ray's own are many lines long)."""
    text = str(exc).strip()
    return text.splitlines()[-1].strip() if text else type(exc).__name__


class Pool:
    def __init__(self, request: dict[str, Any], send: Callable[[dict[str, Any]], None]) -> None:
        import ray

        self.ray = ray
        self.cluster: dict[str, Any] = request["cluster"]
        self.sections: dict[str, Any] = request["sections"]
        self.send = send
        self.members: list[Member] = []
        self.failed_nodes: dict[str, tuple[str, float]] = {}  # node -> (why its actors did not start, when)
        model = request["model"]
        files = []
        for f in model["files"]:
            data = Path(f["path"]).read_bytes()
            files.append(ModelFile(f["role"], f["filename"], f["sha256"], ray.put(data), f["explicit"]))
        # Put once: Ray sends each object to a node at most once, and only to a node that asks.
        self.parcel = Parcel(model["name"], model["manifest"], tuple(files))
        self.cpus: float = self.cluster["actor_cpus"]
        # `pulse` has a thread of its own, so it answers while `protect` works; every other call,
        # `protect` among them, still runs one at a time (two on one engine would share its net).
        self.actor = ray.remote(num_cpus=self.cpus, max_restarts=0, max_task_retries=0, concurrency_groups={PULSE: 1})(
            Protector
        )

    def nodes(self) -> list[dict[str, Any]]:
        return [n for n in self.ray.nodes() if n.get("Alive")]

    def refresh(self) -> None:
        """Drop actors of dead nodes, start missing ones and wait until they hold the model."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        alive = {n["NodeID"]: n for n in self.nodes()}
        for member in [m for m in self.members if m.node not in alive]:
            self.drop(member)
        cpus = self.cluster["actor_cpus"]
        now = time.monotonic()
        starting = []
        for node_id, node in alive.items():
            failed = self.failed_nodes.get(node_id)
            if failed is not None and now - failed[1] < self.cluster["retry_seconds"]:
                continue
            have = sum(1 for m in self.members if m.node == node_id)
            # The node's CPUs in all: its free ones exclude those our own actors hold.
            room = int(node.get("Resources", {}).get("CPU", 0) // cpus)
            for _ in range(min(self.cluster["actors_per_node"], room) - have):
                strategy = NodeAffinitySchedulingStrategy(node_id, soft=False)
                handle = self.actor.options(scheduling_strategy=strategy).remote(
                    self.sections, self.parcel, self.cluster["node_cache"]
                )
                starting.append((node_id, handle, handle.about.remote()))
        if starting:
            self._started(starting)
        if not self.members:
            raise Unavailable(f"no node of the cluster at {self.cluster['address']} runs an actor")

    def _started(self, starting: list[tuple[str, Any, Any]]) -> None:
        refs = {ref: (node, handle) for node, handle, ref in starting}
        # The model's first trip to a node and its load; as long as the daemon waits for any news.
        limit = self.cluster["silence_timeout"]
        deadline = time.monotonic() + limit
        pending = list(refs)
        while pending and time.monotonic() < deadline:
            done, pending = self.ray.wait(pending, num_returns=len(pending), timeout=WAIT)
            self.send({"progress": 0.0})
            for ref in done:
                node, handle = refs[ref]
                try:
                    about = self.ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - whatever stops an actor, that node cannot serve
                    self.failed_nodes[node] = (last_line(exc), time.monotonic())
                    self.ray.kill(handle)
                    log.error("an actor on node %s could not start: %s", node[:12], last_line(exc))
                    continue
                self.failed_nodes.pop(node, None)
                self.members.append(Member(handle, node, about))
        for ref in pending:
            node, handle = refs[ref]
            self.ray.kill(handle)
            self.failed_nodes[node] = (f"its actor did not start within {limit:g} s", time.monotonic())

    def drop(self, member: Member) -> None:
        """Forget an actor that died or misbehaved, and kill it: its CPUs go back to the node."""
        if member in self.members:
            self.members.remove(member)
        try:
            self.ray.kill(member.handle)
        except Exception as exc:  # noqa: BLE001 - already gone with its node
            log.debug("killing an actor of node %s: %s", member.node[:12], last_line(exc))

    def rest(self, member: Member, why: str) -> None:
        """Leave `member`'s node alone for retry_seconds (its disk is full, say), and drop its actor."""
        self.failed_nodes[member.node] = (why, time.monotonic())
        for other in [m for m in self.members if m.node == member.node]:
            self.drop(other)

    def problem(self, node: str) -> str | None:
        failed = self.failed_nodes.get(node)
        return failed[0] if failed is not None else None
