"""`edgeguard status`: what the ledger says, read-only and safe while the daemon runs."""

from __future__ import annotations

from typing import Any

from edgeguard.daemon import ledger as L
from edgeguard.daemon.folders import Folders
from edgeguard.daemon.logs import escape


def collect(folders: Folders, failures: int = 10) -> dict[str, Any]:
    if not folders.ledger.exists():
        return {"ledger": str(folders.ledger), "counts": {}, "in_progress": [], "last_failures": [], "last_sealed": []}
    db = L.Ledger(folders.ledger, readonly=True)
    try:
        return {
            "ledger": str(folders.ledger),
            "counts": db.counts(),
            "in_progress": [
                {"job": j.id, "file": j.name, "state": j.state, "progress": j.progress, "attempts": j.attempts}
                for j in db.in_states(*L.ACTIVE)
            ],
            "last_failures": [
                {"job": j.id, "file": j.name, "stage": j.stage, "reason": j.reason, "where": j.final_path}
                for j in db.last_failures(failures)
            ],
            # Originals sealed, and to which keys (fingerprints: see `edgeguard keygen`).
            "last_sealed": [
                {"job": j.id, "file": j.name, "state": j.state, "where": j.final_path, "sealed_to": _keys(j)}
                for j in db.last_sealed(failures)
            ],
        }
    finally:
        db.close()


def _keys(job: L.Job) -> list[str]:
    return job.sealed_to.split(",") if job.sealed_to else []


def render(report: dict[str, Any]) -> str:
    lines = [f"ledger: {report['ledger']}"]
    counts = report["counts"]
    lines.append("counts: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no jobs yet"))
    for j in report["in_progress"]:
        pct = f" {j['progress']:.0%}" if j["progress"] is not None else ""
        lines.append(f"in progress: job {j['job']} {escape(j['file'])} ({j['state']}{pct}, attempt {j['attempts']})")
    for f in report["last_failures"]:
        # Names are other users' text: one line each, whatever they hold.
        lines.append(f"failed: job {f['job']} {escape(f['file'])} at {f['stage']}: {escape(f['reason'] or '')}")
    for s in report["last_sealed"]:
        where = escape(s["where"] or "?")
        lines.append(
            f"sealed: job {s['job']} {escape(s['file'])} ({s['state']}) as {where}, to {', '.join(s['sealed_to'])}"
        )
    return "\n".join(lines)
