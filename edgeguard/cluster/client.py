"""The daemon's side of the cluster: an engine that protects on Ray actors, else here.

`ClusterEngine` stands where `Engine` stands (the worker calls `protect_file` and then verifies
and publishes the staged result as always), so the daemon stays the one owner of its folders,
ledger and outputs. The Ray driver runs in a child process (`bridge`), started when a file needs
it and killed when the cluster stops answering, when a file is cancelled, or on close.

When the cluster cannot take a file, `cluster.mode` decides: `prefer` protects it on this machine
(and tries the cluster again after `retry_seconds`); `only` raises a transient FileError at stage
"cluster", so the job waits in work and the daemon pauses with that reason until the cluster is back.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgeguard.cluster import STAGE, Unavailable
from edgeguard.config import Config
from edgeguard.detectors.factory import model_files
from edgeguard.engine import Engine, EngineLike, Progress, Result
from edgeguard.errors import Cancelled, FileError, InputError, SetupError
from edgeguard.media import media_kind
from edgeguard.models import digest

log = logging.getLogger(__name__)


def ray_environment(cfg: Config, base: Mapping[str, str]) -> dict[str, str]:
    """The bridge's environment: Ray's token and TLS settings from `cluster` (see README, security)."""
    c = cfg.cluster
    env = dict(base)
    if c.token_file is not None:
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN_PATH"] = str(c.token_file)
    if c.tls.on:
        env.update(
            RAY_USE_TLS="1",
            RAY_TLS_CA_CERT=str(c.tls.ca),
            RAY_TLS_SERVER_CERT=str(c.tls.cert),
            RAY_TLS_SERVER_KEY=str(c.tls.key),
        )
    return env


def model_parcel(cfg: Config) -> dict[str, Any]:
    """The model files as the bridge ships them: checked here first, with their sha256."""
    manifest, files = model_files(cfg)
    explicit = {k for k, v in cfg.detector.files.model_dump().items() if v is not None}
    return {
        "name": manifest.name,
        # As text: a custom model's manifest need not be installed on the nodes.
        "manifest": manifest.path.read_text(encoding="utf-8"),
        "files": [
            {
                "role": role,
                "path": str(path),
                "filename": path.name,
                "sha256": digest(path),
                "explicit": role in explicit,
            }
            for role, path in sorted(files.items())
        ],
    }


class BridgeProcess:
    """One bridge process and its two pipes, used by one thread at a time (the worker's; doctor's;
    the main thread's on a reload, while the worker is idle)."""

    def __init__(self, cfg: Config, parcel: dict[str, Any], *, actors: bool = True) -> None:
        """`actors=False`: a bridge that only looks at the nodes (doctor), holding none of their CPUs."""
        sections = cfg.model_dump(mode="json", include={"detector", "protect", "video", "temporal", "media"})
        cluster = cfg.cluster.model_dump(mode="json")
        request = {"cluster": cluster, "sections": sections, "model": parcel, "actors": actors}
        reply_r, reply_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edgeguard.cluster.bridge", str(reply_w), str(os.getpid())],
                stdin=subprocess.PIPE,
                stdout=sys.stderr,  # Ray's own chatter goes to the journal, never into the replies
                pass_fds=(reply_w,),
                env=ray_environment(cfg, os.environ),
                text=True,
                start_new_session=True,  # killed as a group: nothing of a cancelled file lives on
            )
        except OSError as exc:  # no memory or processes left for it: the cluster cannot be used now
            os.close(reply_r)
            raise Unavailable(f"cannot start the cluster bridge: {exc.strerror or exc}") from None
        finally:
            os.close(reply_w)
        self.replies = os.fdopen(reply_r, "r")
        self.buffer = ""
        try:
            self.ask(request)
        except Unavailable:
            self.close()
            raise

    def ask(self, request: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except OSError as exc:
            raise Unavailable(f"the cluster bridge has gone ({exc.strerror or exc})") from None

    def next(self, timeout: float, cancel: threading.Event | None = None) -> dict[str, Any]:
        """The next reply; Unavailable after `timeout` s of silence or if the bridge ended, Cancelled if `cancel`."""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.replies, selectors.EVENT_READ)
            # JSON lines of ASCII (json.dumps escapes the rest): a chunk never splits a character.
            while "\n" not in self.buffer:
                if cancel is not None and cancel.is_set():
                    raise Cancelled("cluster")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Unavailable(f"no word from the cluster for {timeout:g} s")
                if sel.select(min(left, 0.25)):
                    chunk = os.read(self.replies.fileno(), 65536)
                    if not chunk:
                        raise Unavailable(f"the cluster bridge ended (exit {self.proc.wait()})")
                    self.buffer += chunk.decode()
        line, _, self.buffer = self.buffer.partition("\n")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:  # not reaped yet: its process group cannot be another's
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.replies.close()
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()


class ClusterEngine:
    """Protects files on the cluster at `cluster.address`, with this machine's engine as the fallback."""

    def __init__(self, cfg: Config, local: Engine | None = None) -> None:
        if importlib.util.find_spec("ray") is None:
            raise SetupError("cluster.address is set but Ray is not installed: pip install 'edgeguard[cluster]'")
        self.cfg = cfg
        self._parcel = model_parcel(cfg)  # the gateway must hold the model it ships (exit 3 if not)
        self._local = local
        self._bridge: BridgeProcess | None = None
        self._down_until = 0.0  # prefer: protect here until then
        self._down_reason: str | None = None

    @property
    def model_name(self) -> str:
        return str(self._parcel["name"])

    @property
    def target(self) -> str:
        return f"ray cluster at {self.cfg.cluster.address}"

    @property
    def weights(self) -> Mapping[str, str]:
        return {f["role"]: f["sha256"] for f in self._parcel["files"]}

    def with_config(self, cfg: Config) -> tuple[EngineLike, bool]:
        """The engine for a reloaded config: a new bridge whenever anything it was given changed."""
        from edgeguard.cluster import engine_for

        if cfg.cluster == self.cfg.cluster and model_parcel(cfg) == self._parcel:
            same = {"detector", "protect", "video", "temporal", "media"}
            if cfg.model_dump(include=same) == self.cfg.model_dump(include=same):
                return self, False
        self.close()
        return engine_for(cfg, self._local), True

    def close(self) -> None:
        if self._bridge is not None:
            self._bridge.close()
            self._bridge = None

    def local(self) -> Engine:
        if self._local is None:
            log.info("loading the model on this machine (cluster.mode: prefer)")
            self._local = Engine(self.cfg)
        elif self._local.cfg is not self.cfg:
            self._local = self._local.with_config(self.cfg)[0]
        return self._local

    def protect_file(
        self,
        src: Path,
        out: Path,
        *,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> Result:
        c = self.cfg.cluster
        if c.mode == "prefer" and time.monotonic() < self._down_until:
            return self._here(src, out, progress, cancel)
        try:
            result = self._remote(src, out, progress, cancel)
        except Unavailable as exc:
            self.close()
            self._sweep(out)
            if c.mode == "only":
                reason = f"cluster unavailable: {exc}; waiting for it (cluster.mode: only)"
                raise FileError(src, reason, stage=STAGE, transient=True) from None
            self._down_until = time.monotonic() + c.retry_seconds
            log.warning("cluster unavailable (%s); protecting %s on this machine", exc, src.name)
            return self._here(src, out, progress, cancel)
        except FileError as exc:
            if isinstance(exc, Cancelled):
                self.close()  # nothing of a cancelled file may go on out there
            self._sweep(out)
            raise
        except BaseException:
            self.close()  # a bug: start afresh
            self._sweep(out)
            raise
        if self._down_reason is not None:
            log.info("the cluster at %s takes files again", c.address)
            self._down_reason = None
        return result

    def _here(self, src: Path, out: Path, progress: Progress | None, cancel: threading.Event | None) -> Result:
        """Protect on this machine (mode prefer, the cluster away)."""
        try:
            local = self.local()
        except SetupError as exc:  # e.g. a target only the nodes have: wait for the cluster instead
            reason = f"cluster unavailable, and this machine cannot protect it: {exc}"
            raise FileError(src, reason, stage=STAGE, transient=True) from None
        return local.protect_file(src, out, progress=progress, cancel=cancel)

    def _connected(self, progress: Progress | None = None, cancel: threading.Event | None = None) -> BridgeProcess:
        if self._bridge is not None and self._bridge.proc.poll() is None:
            return self._bridge
        self.close()
        c = self.cfg.cluster
        bridge = BridgeProcess(self.cfg, self._parcel)
        try:
            reply = bridge.next(c.connect_timeout + c.silence_timeout, cancel)
            while "progress" in reply:  # actors starting: fetching and loading the model
                if progress is not None:
                    progress(0, None)  # "still working": the watchdog is fed while they start
                reply = bridge.next(c.silence_timeout, cancel)
        except BaseException:
            bridge.close()
            raise
        if "ready" not in reply:
            bridge.close()
            raise Unavailable(reply.get("unavailable", f"unexpected reply {reply}"))
        ready = reply["ready"]
        log.info("connected to the cluster at %s: %d actors on %d nodes", c.address, ready["actors"], ready["nodes"])
        self._bridge = bridge
        return bridge

    def _remote(self, src: Path, out: Path, progress: Progress | None, cancel: threading.Event | None) -> Result:
        try:
            bridge = self._connected(progress, cancel)
            bridge.ask({"op": "protect", "src": str(src), "out": str(out)})
            while True:
                reply = bridge.next(self.cfg.cluster.silence_timeout, cancel)
                if "progress" not in reply:
                    break
                if progress is not None:
                    progress(round(reply["progress"] * 1000), 1000)
        except Cancelled:
            raise Cancelled(src) from None
        except Unavailable as exc:
            self._down_reason = str(exc)
            raise
        if "unavailable" in reply:
            self._down_reason = reply["unavailable"]
            raise Unavailable(reply["unavailable"])
        if "failed" in reply:
            e = reply["failed"]
            if e["input"]:
                raise InputError(src, e["reason"], stage=e["stage"], incomplete=e["incomplete"])
            raise FileError(src, e["reason"], stage=e["stage"], transient=e.get("transient", False))
        r = reply["done"]
        return Result(
            str(src),
            str(out),
            r["kind"] if r.get("kind") else (media_kind(src) or "video"),
            r["frames"],
            r["detections"],
            r["seconds"],
            r["fps"],
            r["model"],
            f"{r['target']} on the cluster ({_count(r['segments'], 'segment')} on {_count(r['nodes'], 'node')})",
            r["keyframes"],
            r["classes"],
            r["hidden_mean"],
            r["hidden_max"],
        )

    def nodes(self) -> list[dict[str, Any]]:
        """The cluster's live nodes: versions, room for actors, the model as received (`edgeguard doctor`).

        Through a bridge of its own that starts no actor, so it neither takes CPUs from a running
        daemon's actors nor waits for them.
        """
        c = self.cfg.cluster
        bridge = BridgeProcess(self.cfg, self._parcel, actors=False)
        try:
            reply = bridge.next(c.connect_timeout + c.silence_timeout)
            if "ready" not in reply:
                raise Unavailable(reply.get("unavailable", f"unexpected reply {reply}"))
            bridge.ask({"op": "nodes"})
            reply = bridge.next(c.silence_timeout)
            while "progress" in reply:
                reply = bridge.next(c.silence_timeout)
        finally:
            bridge.close()
        if "nodes" not in reply:
            raise Unavailable(reply.get("unavailable", f"unexpected reply {reply}"))
        nodes: list[dict[str, Any]] = reply["nodes"]
        return nodes

    @staticmethod
    def _sweep(out: Path) -> None:
        """Remove what a killed bridge left of this file in work (its segments, a partial output)."""
        out.unlink(missing_ok=True)
        for part in out.parent.glob(glob.escape(out.name) + ".seg*"):
            part.unlink(missing_ok=True)


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"
