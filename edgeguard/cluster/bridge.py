"""The Ray driver: a child process of the daemon that sends its files to the cluster's actors.

Ray's driver runs here, not in the daemon: a lost head can leave its calls hanging or end its
process, and a driver cannot connect again to a cluster that came back. The daemon talks to
this process over two pipes in JSON lines (see `client`), kills it whenever the cluster stops
answering, and starts a fresh one when it tries the cluster again.

It reads the file the daemon names (in the daemon's work folder) and writes the protected
result where the daemon says (a staging name there); it never touches anything else of the
daemon's. Segments of a long video go to every actor at once; a segment whose actor died is
sent to another; the protected segments are joined here (`segments.join`).

Messages out, each a line: {"progress": f} whenever there is news and at least every WAIT while
it works (so the daemon's silence timeout means a hung bridge); {"ready": {...}} once connected
(and the actors hold the model); then per request {"done": result} | {"failed": error} |
{"unavailable": reason}, or for {"op": "nodes"} (doctor) {"nodes": [...]}. An actor that hands on
no frame for cluster.stall_timeout is taken for hung: killed, and its piece sent to another.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

from edgeguard.cluster import Unavailable, segments
from edgeguard.cluster.actor import check_node
from edgeguard.cluster.pool import PULSE, Member, Pool, last_line
from edgeguard.durable import fsync_file
from edgeguard.media import media_kind

log = logging.getLogger(__name__)

T = TypeVar("T")

WAIT = 0.5  # seconds between progress messages while the cluster works
PR_SET_PDEATHSIG = 1  # prctl(2)
PIECE_TRIES = 3  # a piece that this many actors died or failed on is the file's fault, not the cluster's


class Refused(Exception):
    """The file cannot be protected: an actor blamed the input, or PIECE_TRIES actors failed on it.
    The daemon fails it (or retries it, when `transient`)."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error["reason"])
        self.error = error


class PieceRefused(Refused):
    """A piece of a cut video was refused: the file is protected whole before anyone is blamed."""


def reachable(address: str, timeout: float) -> str | None:
    """None if the head's port accepts a connection within `timeout`, else why not."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return None
    except OSError as exc:
        return f"cannot reach the Ray head at {address}: {exc.strerror or exc}"


class Bridge:
    """Serves the daemon's requests, one at a time, with the pool's actors."""

    def __init__(self, request: dict[str, Any], out: IO[str]) -> None:
        self.out = out
        self.lock = threading.Lock()
        self.fraction = 0.0  # of the file in progress, as last reported
        self.request = request
        self.pool = Pool(request, self.send)

    def send(self, message: dict[str, Any]) -> None:
        with self.lock:  # the heartbeat thread sends too
            self.out.write(json.dumps(message) + "\n")
            self.out.flush()

    def serve(self, requests: IO[str]) -> None:
        if self.request.get("actors", True):  # `edgeguard doctor` only looks: it takes no node's CPUs
            self.pool.refresh()
        self.send({"ready": {"actors": len(self.pool.members), "nodes": len({m.node for m in self.pool.members})}})
        for line in requests:
            request = json.loads(line)
            try:
                if request["op"] == "nodes":
                    self.send({"nodes": self.describe()})
                    continue
                self.fraction = 0.0
                result = self.protect(Path(request["src"]), Path(request["out"]))
            except Refused as exc:
                self.send({"failed": exc.error})
                continue
            except OSError as exc:  # this machine's work folder (full, gone): a retry, not the cluster's fault
                error = {"reason": f"cannot write in the work folder: {exc.strerror or exc}", "stage": "write"}
                self.send({"failed": {**error, "input": False, "incomplete": False, "transient": True}})
                continue
            except Unavailable as exc:
                self.send({"unavailable": str(exc)})
                return  # a fresh driver tries again later
            except Exception as exc:
                log.exception("the bridge failed")
                self.send({"unavailable": f"the cluster bridge failed: {type(exc).__name__}: {last_line(exc)}"})
                return
            self.send({"done": result})

    def describe(self) -> list[dict[str, Any]]:
        """Every live node: its CPUs, its versions, and the model as it received it (by sha256).

        A probe of no CPU on each node: it runs beside the daemon's actors, never waits for them.
        """
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray = self.pool.ray
        probe = ray.remote(num_cpus=0, max_retries=0)(check_node)
        nodes = self.pool.nodes()
        refs = {}
        for node in nodes:
            strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            ref = probe.options(scheduling_strategy=strategy).remote(
                self.pool.parcel, self.request["cluster"]["node_cache"]
            )
            refs[node["NodeID"]] = ref
        deadline = time.monotonic() + self.request["cluster"]["silence_timeout"]
        pending = list(refs.values())
        while pending and time.monotonic() < deadline:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=WAIT)
            self.send({"progress": 0.0})
        out = []
        for node in nodes:
            ref = refs[node["NodeID"]]
            try:
                about, problem = (ray.get(ref, timeout=0), None) if ref not in pending else (None, "no answer")
            except Exception as exc:  # noqa: BLE001 - what the node could not do is the report
                about, problem = None, last_line(exc)
            cpus = node.get("Resources", {}).get("CPU", 0)
            out.append(
                {
                    "node": node["NodeID"],
                    "address": node.get("NodeManagerAddress"),
                    "cpus": cpus,
                    "room": min(self.request["cluster"]["actors_per_node"], int(cpus // self.pool.cpus)),
                    "about": about,
                    "problem": problem,
                }
            )
        return out

    # ---------------------------------------------------------------- protecting

    def protect(self, src: Path, out: Path) -> dict[str, Any]:
        self.pool.refresh()
        seconds = self.request["cluster"]["segment_seconds"]
        plan = None
        if media_kind(src) == "video" and seconds > 0:
            try:
                with self.beating():
                    plan = segments.plan(src, seconds)
            except Exception as exc:  # noqa: BLE001 - whatever is wrong with it, the whole-file run says
                log.info("%s: not cut (%s); protecting it whole", src.name, last_line(exc))
        if plan is not None:
            try:
                return self._segmented(src, out, plan)
            except Unavailable:
                raise
            except Exception as exc:  # noqa: BLE001 - a cut, a piece or a join that failed: the actor judges the whole
                log.warning("%s: %s; protecting it whole", src.name, last_line(exc))
        started = time.monotonic()
        with self.beating():
            data = src.read_bytes()
        result_data, result = self._run([(0, data)], src.suffix, out.suffix, lambda _k, d: d)[0]
        del data
        with self.beating():
            out.write_bytes(result_data)
            fsync_file(out)
        seconds = time.monotonic() - started
        fps = round(result["frames"] / seconds, 3) if seconds else 0.0
        return {**result, "seconds": round(seconds, 3), "fps": fps, "segments": 1, "nodes": 1}

    @contextlib.contextmanager
    def beating(self) -> Iterator[None]:
        """Tell the daemon "still working" every WAIT while the bridge itself works (reading, cutting,
        joining a long video), so its silence timeout and the watchdog see work, not a hang."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(WAIT):
                self.send({"progress": self.fraction})

        thread = threading.Thread(target=beat, name="edgeguard-bridge-beat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _segmented(self, src: Path, out: Path, plan: segments.Plan) -> dict[str, Any]:
        started = time.monotonic()
        parts = [out.with_name(f"{out.name}.seg{s.index:04d}.mp4") for s in plan.segments]
        try:

            def keep(k: int, data: bytes) -> Path:
                parts[k].write_bytes(data)
                return parts[k]

            pieces = ((s.index, data) for s, data in segments.cut(src, plan.segments))
            results = self._run(pieces, ".mp4", ".mp4", keep, total=len(plan.segments))
            video = self.request["sections"]["video"]
            with self.beating():
                segments.join(
                    src, parts, plan, out, audio=video["audio"] == "keep", keep_metadata=video["keep_metadata"]
                )
                fsync_file(out)
        finally:
            for part in parts:
                part.unlink(missing_ok=True)
        merged = _merge([r for _, r in results])
        frames = merged["frames"]
        seconds = time.monotonic() - started
        nodes = len({r["node"] for _, r in results})
        log.info("%s: %d segments on %d nodes", src.name, len(parts), nodes)
        return {
            **merged,
            "nodes": nodes,
            "seconds": round(seconds, 3),
            "fps": round(frames / seconds, 3) if seconds else 0.0,
            "segments": len(parts),
        }

    def _run(
        self,
        pieces: Iterator[tuple[int, bytes]] | list[tuple[int, bytes]],
        suffix: str,
        out_suffix: str,
        keep: Callable[[int, bytes], T],
        total: int = 1,
    ) -> list[tuple[T, dict[str, Any]]]:
        """Protect every piece on the pool, at most one per actor at a time; results in piece order.

        A piece goes to another actor when its actor's node died (not counted), when the actor
        failed without blaming the input, or when its node's disk was full (that node is then
        rested); after PIECE_TRIES counted failures it is refused: a file that kills every actor
        it meets is the file's fault.
        """
        running: dict[Any, tuple[int, Any, int, Member]] = {}
        try:
            return self._schedule(iter(pieces), suffix, out_suffix, keep, total, running)
        finally:
            # Left early (a refusal, a failed cut): the actors still at work on this file are free
            # again; a task of theirs still running only delays their next one.
            for _, _, _, member in running.values():
                member.busy = False

    @staticmethod
    def _again(k: int, obj: Any, tries: int, problem: str, total: int) -> tuple[int, Any, int]:
        """A piece whose actor failed it, to be sent elsewhere; refused after PIECE_TRIES counted failures."""
        if tries >= PIECE_TRIES:
            reason = f"{PIECE_TRIES} cluster actors failed on it: {problem}"
            error = {"reason": reason, "stage": "remote", "input": False, "incomplete": False, "transient": False}
            raise (PieceRefused if total > 1 else Refused)(error)
        log.warning("sending piece %d elsewhere", k)
        return k, obj, tries

    def _stalled(self, running: dict[Any, tuple[int, Any, int, Member]], done: list[Any]) -> list[Any]:
        """The running pieces whose actor handed on no frame for stall_timeout: each actor's `pulse`
        is asked once at a time, without waiting; one that does not answer has not moved."""
        limit = self.request["cluster"]["stall_timeout"]
        if not limit:
            return []
        ray = self.pool.ray
        now = time.monotonic()
        stalled = []
        for ref, (_, _, _, member) in running.items():
            if ref in done:
                continue
            if member.asking is not None and ray.wait([member.asking], timeout=0)[0]:
                try:
                    steps = ray.get(member.asking)
                except ray.exceptions.RayError as exc:
                    # Dead (its piece fails on its own), or a node without `pulse`: never judged hung.
                    log.debug("node %s: no pulse (%s)", member.node[:12], last_line(exc))
                    steps = None
                if steps is None or steps != member.steps:
                    member.steps, member.moved = -1 if steps is None else steps, now
                member.asking = None
            if member.asking is None:
                member.asking = member.handle.pulse.options(concurrency_group=PULSE).remote()
            # A piece done since the wait above is not hung: its last frame was simply its last.
            if now - member.moved > limit and not ray.wait([ref], timeout=0)[0]:
                stalled.append(ref)
        return stalled

    def _schedule(
        self,
        source: Iterator[tuple[int, bytes]],
        suffix: str,
        out_suffix: str,
        keep: Callable[[int, bytes], T],
        total: int,
        running: dict[Any, tuple[int, Any, int, Member]],
    ) -> list[tuple[T, dict[str, Any]]]:
        ray = self.pool.ray
        retry: deque[tuple[int, Any, int]] = deque()  # (piece, its object, counted failures)
        results: dict[int, tuple[T, dict[str, Any]]] = {}
        exhausted = False
        while True:
            for member in [m for m in self.pool.members if not m.busy]:
                if retry:
                    k, obj, tries = retry.popleft()
                else:
                    nxt = None if exhausted else next(source, None)
                    if nxt is None:
                        exhausted = True
                        break
                    k, obj, tries = nxt[0], ray.put(nxt[1]), 0
                member.start()
                running[member.handle.protect.remote(obj, suffix, out_suffix)] = (k, obj, tries, member)
            if not running:
                if exhausted and not retry:
                    return [results[k] for k in sorted(results)]
                self.pool.refresh()  # every actor died: start new ones on the nodes still alive
                if not any(not m.busy for m in self.pool.members):
                    raise Unavailable("no actor of the cluster is free")
                continue
            done, _ = ray.wait(list(running), num_returns=1, timeout=WAIT)
            self.fraction = len(results) / total
            self.send({"progress": self.fraction})
            for ref in self._stalled(running, done):
                k, obj, tries, member = running.pop(ref)
                member.busy = False
                self.pool.drop(member)  # killed: a stopped process dies too, and its CPU is free again
                limit = self.request["cluster"]["stall_timeout"]
                problem = f"handed on no frame for {limit:g} s"
                log.warning("an actor on node %s %s during piece %d; killed it", member.node[:12], problem, k)
                retry.append(self._again(k, obj, tries + 1, problem, total))
            for ref in done:
                k, obj, tries, member = running.pop(ref)
                member.busy = False
                try:
                    data, result = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    self.pool.drop(member)
                    # Its node gone is the cluster's doing, not the file's: not counted.
                    lost = member.node not in {n["NodeID"] for n in self.pool.nodes()}
                    what = "lost with its node" if lost else "failed"
                    log.warning(
                        "an actor on node %s %s during piece %d (%s)", member.node[:12], what, k, last_line(exc)
                    )
                    retry.append(self._again(k, obj, tries + (0 if lost else 1), last_line(exc), total))
                    continue
                if data is None and result.get("transient"):
                    # That node's disk, not the file: rest the node, try the piece elsewhere.
                    self.pool.rest(member, result["reason"])
                    log.warning("node %s: %s; sending piece %d elsewhere", member.node[:12], result["reason"], k)
                    retry.append((k, obj, tries))
                    continue
                if data is None:
                    raise (PieceRefused if total > 1 else Refused)(result)
                results[k] = (keep(k, data), result)


def _merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One result for the whole video from its segments' results."""
    frames = sum(r["frames"] for r in results)
    classes: Counter[str] = Counter()
    for r in results:
        classes.update(r["classes"])
    first = results[0]
    return {
        "kind": "video",
        "frames": frames,
        "detections": sum(r["detections"] for r in results),
        "keyframes": sum(r["keyframes"] for r in results),
        "classes": dict(sorted(classes.items())),
        "hidden_mean": round(sum(r["hidden_mean"] * r["frames"] for r in results) / frames, 6) if frames else 0.0,
        "hidden_max": max(r["hidden_max"] for r in results),
        "model": first["model"],
        "target": first["target"],
    }


def _die_with(parent: int) -> None:
    """Be killed when the daemon dies, even by SIGKILL: no driver may outlive its daemon."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)


def main(argv: list[str]) -> int:
    """`python -m edgeguard.cluster.bridge REPLY_FD PARENT_PID`: the request comes on stdin, replies on REPLY_FD."""
    _die_with(int(argv[2]))
    out = os.fdopen(int(argv[1]), "w", buffering=1)
    logging.basicConfig(level=os.environ.get("EDGEGUARD_BRIDGE_LOG", "INFO"), format="bridge: %(message)s")
    request = json.loads(sys.stdin.readline())
    cluster = request["cluster"]
    why = reachable(cluster["address"], cluster["connect_timeout"])
    if why is not None:
        out.write(json.dumps({"unavailable": why}) + "\n")
        return 0
    import ray

    try:
        ray.init(address=cluster["address"], namespace="edgeguard", log_to_driver=False, logging_level=logging.WARNING)
        bridge = Bridge(request, out)
        bridge.serve(sys.stdin)
    except Unavailable as exc:
        out.write(json.dumps({"unavailable": str(exc)}) + "\n")
    except Exception as exc:
        log.exception("cannot use the cluster")
        why = f"cannot join the cluster at {cluster['address']}: {type(exc).__name__}: {last_line(exc)}"
        out.write(json.dumps({"unavailable": why}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
