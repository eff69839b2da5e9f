"""Offloading protection to a Ray cluster (`pip install edgeguard[cluster]`).

Who owns what: the daemon keeps its folders, ledger, claims, publishing and originals; the
cluster only computes. `client.ClusterEngine` stands in for the engine, `bridge` is the Ray
driver (a child process of the daemon), `actor` runs on the nodes, `segments` cuts a long video
at its keyframes and joins the protected pieces. Nothing here imports Ray until a file needs it.
"""

from __future__ import annotations

from edgeguard.config import Config
from edgeguard.engine import Engine, EngineLike

STAGE = "cluster"  # the stage of a file that waits for the cluster (cluster.mode: only)


class Unavailable(Exception):
    """The cluster cannot take work now (unreachable, silent, no live actor); says why."""


def engine_for(cfg: Config, local: Engine | None = None) -> EngineLike:
    """The engine the configuration asks for: this machine's, or the cluster's with it as the fallback."""
    if not cfg.cluster.on:
        return local.with_config(cfg)[0] if local is not None else Engine(cfg)
    from edgeguard.cluster.client import ClusterEngine

    return ClusterEngine(cfg, local)


def reconfigured(engine: EngineLike, cfg: Config) -> tuple[EngineLike, bool]:
    """The engine for a reloaded `cfg` (and whether a model was loaded anew): a reload may also turn
    the cluster on or off."""
    if cfg.cluster.on and isinstance(engine, Engine):
        return engine_for(cfg, engine), False
    return engine.with_config(cfg)
