"""Audit records: what was done to make each output, and with what.

A privacy officer asks "what was done to this file?": the record answers with
both files' hashes and sizes, what was found and how much of the frame was
hidden, the model (with its weights' hashes), the target, the effective config
(and its hash), the edgeguard version, the times, and what became of the
original. The daemon keeps it in the ledger before the output appears and
completes it once the original is disposed of; `edgeguard audit` finds it by
either file's name or hash.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import sqlite3
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edgeguard import __version__
from edgeguard.config import Config
from edgeguard.daemon import ledger as L
from edgeguard.daemon.logs import escape
from edgeguard.engine import Result
from edgeguard.errors import Cancelled, EdgeguardError

SCHEMA = 1
SIDECAR = ".audit.json"  # OUTPUT.audit.json, with `audit.sidecar: true`
_CHUNK = 1 << 20
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


def sha256_file(path: Path, *, alive: Callable[[], None] | None = None, cancel: threading.Event | None = None) -> str:
    """The file's sha256; `alive` is called per chunk, and Cancelled is raised once `cancel` is set."""
    hasher = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            hasher.update(chunk)
            if alive is not None:
                alive()
            if cancel is not None and cancel.is_set():
                raise Cancelled(path)
    return hasher.hexdigest()


def effective_config(cfg: Config) -> tuple[str, dict[str, Any]]:
    """The config as the daemon uses it (defaults filled in), and the sha256 of its canonical JSON."""
    data = cfg.model_dump(mode="json")
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest(), data


def _utc(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="milliseconds")


def build(
    *,
    job: int,
    name: str,
    input_sha256: str,
    input_size: int,
    output: Path,
    output_sha256: str,
    result: Result,
    weights: Mapping[str, str],
    cfg: Config,
    started: float,
    seconds: float,
) -> dict[str, Any]:
    """The record of one output; `original` is filled in by `with_original` once it is disposed of.

    `started` is the attempt's wall-clock start; `seconds` its duration, from the monotonic clock
    (a gateway without a real-time clock may jump when NTP syncs).
    """
    config_sha256, config = effective_config(cfg)
    return {
        "schema": SCHEMA,
        "job": job,
        "input": {"name": name, "sha256": input_sha256, "size": input_size},
        "output": {"name": output.name, "sha256": output_sha256, "size": output.stat().st_size},
        "kind": result.kind,
        "frames": result.frames,
        "keyframes": result.keyframes,
        "detections": dict(result.classes),
        "hidden": {"mean": result.hidden_mean, "max": result.hidden_max},
        "style": cfg.protect.style,
        "model": {"name": result.model, "weights_sha256": dict(weights)},
        "target": result.target,
        "config_sha256": config_sha256,
        "config": config,
        "edgeguard": __version__,
        "started": _utc(started),
        "finished": _utc(started + seconds),
        "seconds": round(seconds, 3),
        "original": {"policy": cfg.daemon.originals, "path": None},
    }


def at(record: dict[str, Any], address: str) -> dict[str, Any]:
    """`record` with the output's address (known only as it is published)."""
    return {**record, "output": {**record["output"], "name": Path(address).name, "path": address}}


def with_original(
    record: dict[str, Any], policy: str, path: Path | None, sealed_to: list[str] | None = None
) -> dict[str, Any]:
    """`record` with what became of the original: deleted, or moved to `path` (sealed to the keys
    of the fingerprints `sealed_to`)."""
    original: dict[str, Any] = {"policy": policy, "path": str(path) if path is not None else None}
    if sealed_to is not None:
        original["sealed_to"] = sealed_to
    return {**record, "original": original}


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, indent=2, sort_keys=False) + "\n"


def render(record: dict[str, Any]) -> str:
    """A record for a person: the answers first, the config last (as its hash)."""
    inp, out, hidden, model = record["input"], record["output"], record["hidden"], record["model"]
    found = ", ".join(f"{n} {c}" for c, n in record["detections"].items()) or "nothing"
    original = record["original"]
    fate = (
        "deleted"
        if original["policy"] == "delete"
        else f"{original['policy']}: {escape(original['path'] or 'not yet moved (the daemon is finishing it)')}"
    )
    if original.get("sealed_to"):
        fate += f" (sealed to {', '.join(original['sealed_to'])})"
    weights = [f"          {role} sha256:{digest}" for role, digest in model["weights_sha256"].items()]
    lines = [
        f"output    {escape(out.get('path') or out['name'])}",
        f"          sha256:{out['sha256']}  {out['size']} bytes",
        f"input     {escape(inp['name'])}",
        f"          sha256:{inp['sha256']}  {inp['size']} bytes",
        f"job       {record['job']}, {record['started']} .. {record['finished']} ({record['seconds']:.1f} s)",
        f"frames    {record['frames']} ({record['keyframes']} analysed)",
        f"found     {found}",
        f"hidden    {hidden['mean']:.1%} of the frame on average, {hidden['max']:.1%} at most ({record['style']})",
        f"model     {model['name']} on {record['target']}",
        *weights,
        f"config    sha256:{record['config_sha256']}",
        f"edgeguard {record['edgeguard']}",
        f"original  {fate}",
    ]
    return "\n".join(lines)


def find(ledger: Path, query: str) -> list[dict[str, Any]]:
    """The records of the output or input `query`, newest first.

    An existing file is found by its content (sha256 of the input or the output), so a renamed
    copy is still found and a different file of the same name is not; otherwise `query` is a
    sha256 or a file name (outputs called so first, then inputs). EdgeguardError when the
    ledger cannot be read.
    """
    path = Path(query)
    if path.is_dir():
        raise EdgeguardError(f"{escape(query)} is a folder; give a file, a file name or a sha256")
    digest: str | None = None
    if path.is_file():
        try:
            digest = sha256_file(path)
        except OSError as exc:
            raise EdgeguardError(f"{escape(query)}: cannot read: {exc.strerror or exc}") from exc
    elif _HEX64.match(query):
        digest = query.lower()
    if not ledger.is_file():
        raise EdgeguardError(f"no ledger at {ledger} (has the daemon run with this config?)")
    try:
        db = L.Ledger(ledger, readonly=True)
        try:
            if not db.has_audits():  # a ledger from before audit records
                return []
            rows = db.audits_by_hash(digest) if digest is not None else db.audits_by_name(path.name)
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise EdgeguardError(f"cannot read the ledger {ledger}: {exc}") from exc
    return [json.loads(row) for row in rows]
