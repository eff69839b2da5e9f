"""`make bench`, the cluster's table: files per second and one long video's latency, here and on Ray.

One run, side by side: this machine's engine, then a real Ray cluster on this machine with one and
then two worker nodes of one CPU each (the head has none, as on a gateway that is the head). Every
configuration protects the same short clips one after another (files per second, as the daemon takes
them) and one long video (its latency). The model is yolox_nano: Mask R-CNN's real weights cannot be
had here. Each worker node is pinned to a core of its own (as a one-CPU machine would be); the head and the
driver share the machine's cores with them, so what the table shows is the cluster's overhead and how
a file's time falls from one node to two, not a bigger machine.

Then what cutting changes in what is hidden: each clip protected whole and in pieces (cut at its
keyframes, each piece protected by the same engine in-process, as an actor does, the masks in
order), with overreach and coverage of the cut run against the whole run, and persons and faces
left less than half hidden according to the bench's independent judges (bench/judges.py), both ways.

    python -m bench.cluster [--clips 6] [--clip-seconds 4] [--long-seconds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from bench.judges import Judges, judge_frames
from bench.paths import CANDIDATES, REPO, SHARED
from bench.privacy import measure
from bench.run import Recorder, decode
from edgeguard import models
from edgeguard.cluster import engine_for, segments
from edgeguard.config import load_config
from edgeguard.engine import Engine, EngineLike

RESULTS = REPO / "bench" / "results"
HEALTH = {"health_check_period_ms": 500, "health_check_failure_threshold": 2, "health_check_timeout_ms": 500}


def clip(src: Path, dst: Path, start: int, frames: int, fps: int = 25, gop: int = 25) -> Path:
    """`frames` frames of `src` from `start`, 640 wide, a keyframe every `gop` (as cameras write them)."""
    with av.open(os.fspath(src)) as inp, av.open(os.fspath(dst), "w") as out:
        v = out.add_stream("libx264", rate=fps)
        ctx = inp.streams.video[0].codec_context
        v.width, v.height, v.pix_fmt = 640, round(640 * ctx.height / ctx.width / 2) * 2, "yuv420p"
        v.options = {"preset": "veryfast", "g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"}
        written = 0
        for i, frame in enumerate(inp.decode(video=0)):
            if i < start:
                continue
            if written == frames:
                break
            picture = frame.reformat(width=v.width, height=v.height, format="yuv420p")
            picture.pts, picture.time_base = written, Fraction(1, fps)
            out.mux(v.encode(picture))
            written += 1
        out.mux(v.encode(None))
    if written < frames:
        raise SystemExit(f"{src} has fewer than {start + frames} frames")
    return dst


@contextmanager
def ray_cluster(workers: int, temp: Path) -> Iterator[str]:
    """A head without CPU and `workers` nodes of one CPU on this machine; yields the head's address."""
    from ray.cluster_utils import Cluster

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = {"num_cpus": 0, "gcs_server_port": port, "temp_dir": str(temp), "_system_config": HEALTH}
    cluster = Cluster(initialize_head=True, head_node_args=args)
    cores = sorted(os.sched_getaffinity(0))
    try:
        for k in range(workers):
            # A node of one CPU: its raylet, and so its actors, inherit this affinity. Without it an
            # actor's OpenCV and x264 threads would use every core of the machine.
            os.sched_setaffinity(0, {cores[k % len(cores)]})
            try:
                cluster.add_node(num_cpus=1)
            finally:
                os.sched_setaffinity(0, cores)
        cluster.wait_for_nodes()
        yield str(cluster.address)
    finally:
        cluster.shutdown()


def timed(engine: EngineLike, shorts: list[Path], long: Path, work: Path) -> dict[str, Any]:
    # A first file loads the model (and on the cluster starts the actors): not counted.
    engine.protect_file(shorts[0], work / ".warm.partial.mp4")
    started = time.monotonic()
    for k, src in enumerate(shorts):
        engine.protect_file(src, work / f".s{k}.partial.mp4")
    files_seconds = time.monotonic() - started
    started = time.monotonic()
    result = engine.protect_file(long, work / ".long.partial.mp4")
    long_seconds = time.monotonic() - started
    return {
        "files_per_second": round(len(shorts) / files_seconds, 3),
        "files_seconds": round(files_seconds, 2),
        "long_seconds": round(long_seconds, 2),
        "long_fps": round(result.frames / long_seconds, 2),
        "target": result.target,
    }


def cut_privacy(engine: Engine, src: Path, seconds: float, work: Path, judges: Judges) -> dict[str, Any]:
    """Overreach, coverage and judged misses of `src` protected in pieces, against it protected whole."""
    whole = Recorder()
    engine.protect_file(src, work / ".whole.partial.mp4", observe=whole)
    plan = segments.plan(src, seconds)
    assert plan is not None, f"{src.name} is not cut at {seconds} s"
    cut = Recorder()
    for segment, data in segments.cut(src, plan.segments):
        piece = work / f"piece{segment.index}.mp4"
        piece.write_bytes(data)
        engine.protect_file(piece, work / f".piece{segment.index}.partial.mp4", observe=cut)
    frames = decode(src)
    assert len(frames) == len(whole.masks) == len(cut.masks)
    judged = judge_frames(judges, frames, work / f"{src.stem}.judged.npz")
    shape = (frames[0].shape[0], frames[0].shape[1])
    w = measure(whole.masks, shape, judged)
    c = measure(cut.masks, shape, judged, whole.masks, whole.boxes)
    return {
        "clip": src.name,
        "pieces": len(plan.segments),
        "frames": len(frames),
        "overreach": round(c.overreach or 0.0, 3),
        "coverage": round(c.coverage, 4),
        "worst": round(c.worst, 3),
        "persons": c.judged["person"],
        "missed_persons": [w.missed("person"), c.missed("person")],
        "faces": c.judged["centerface"],
        "missed_faces": [w.missed("centerface"), c.missed("centerface")],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=6, help="short clips in the files-per-second run")
    ap.add_argument("--clip-seconds", type=int, default=4)
    ap.add_argument("--long-seconds", type=int, default=30)
    ap.add_argument("--segment-seconds", type=float, default=2.0)
    args = ap.parse_args(argv)

    temp = Path(tempfile.mkdtemp(prefix="egb-", dir="/tmp"))  # Ray's socket paths must stay short
    os.environ.update(RAY_TMPDIR=str(temp), RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    (temp / "ray").mkdir()  # where Ray's Cluster writes the address of the cluster it starts
    try:
        models_dir = temp / "models"
        manifest = models.find_manifest("yolox_nano", [models.builtin_manifest_dir()])
        models.fetch(manifest, models_dir, source=CANDIDATES)
        os.environ["EDGEGUARD_MODELS_DIR"] = str(models_dir)
        source = SHARED / "media" / "vtest.avi"  # 795 frames of a fixed camera over a hall
        fps = 25
        shorts = [clip(source, temp / f"short{k}.mp4", 40 * k, args.clip_seconds * fps) for k in range(args.clips + 1)]
        if args.long_seconds * fps > 795:
            raise SystemExit("--long-seconds: vtest.avi has 795 frames (31 s at 25 fps)")
        long = clip(source, temp / "long.mp4", 0, args.long_seconds * fps)
        work = temp / "work"
        work.mkdir()
        base = ["detector.model=yolox_nano", f"cluster.segment_seconds={args.segment_seconds}"]
        rows: dict[str, dict[str, Any]] = {}
        engine = engine_for(load_config(None, base))
        rows["this machine (2 cores)"] = timed(engine, shorts, long, work)
        for workers in (1, 2):
            with ray_cluster(workers, temp / f"ray{workers}") as address:
                engine = engine_for(load_config(None, [*base, f"cluster.address={address}"]))
                try:
                    rows[f"Ray, {workers} worker node{'s' if workers > 1 else ''} of 1 CPU"] = timed(
                        engine, shorts, long, work
                    )
                finally:
                    engine.close()
        judges = Judges(CANDIDATES)
        here = Engine(load_config(None, ["detector.model=yolox_nano"]))
        privacy = [
            cut_privacy(here, SHARED / "media" / "pedestrians.mp4", 0.5, work, judges),
            # The judges take a while per frame: the long video's first 10 s.
            cut_privacy(here, clip(source, temp / "vtest10.mp4", 0, 10 * fps), args.segment_seconds, work, judges),
        ]
    finally:
        shutil.rmtree(temp, ignore_errors=True)

    local = rows["this machine (2 cores)"]
    lines = [
        f"| where | files/s ({args.clips} clips of {args.clip_seconds} s) | vs here | "
        f"long video ({args.long_seconds} s) latency | vs here |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['files_per_second']:.2f} | {r['files_per_second'] / local['files_per_second']:.2f}x | "
            f"{r['long_seconds']:.1f} s | {r['long_seconds'] / local['long_seconds']:.2f}x |"
        )
    lines += [
        "",
        "| clip (cut into) | overreach vs whole | coverage of whole / worst frame | persons missed whole / cut | "
        "faces missed (CenterFace) whole / cut |",
        "|---|---|---|---|---|",
    ]
    for r in privacy:
        lines.append(
            f"| {r['clip']} ({r['pieces']} pieces, {r['frames']} frames) | {r['overreach']:.3f} | "
            f"{100 * r['coverage']:.1f}% / {100 * r['worst']:.1f}% | "
            f"{r['missed_persons'][0]} / {r['missed_persons'][1]} of {r['persons']} | "
            f"{r['missed_faces'][0]} / {r['missed_faces'][1]} of {r['faces']} |"
        )
    table = "\n".join(lines)
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {"args": vars(args), "rows": rows, "privacy": privacy}
    (RESULTS / "cluster.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (RESULTS / "cluster.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
