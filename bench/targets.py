"""Seconds per frame for each model on each DNN target, on a 720p clip (every frame detected).

    python -m bench.targets [--frames 8]

OpenCL runs through whatever ICD is installed (PoCL on a CPU-only machine, with
OPENCV_OPENCL_DEVICE=:CPU: and OPENCV_DNN_OPENCL_ALLOW_ALL_DEVICES=1 set for it);
targets that do not really run here are reported with the reason, never faked.
Each target runs in its own process, since OpenCL is chosen at import time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.costed import standin_set
from bench.paths import SHARED
from bench.run import prepare

TARGETS = ["cpu", "opencl", "opencl_fp16", "cuda", "cuda_fp16"]
OPENCL_ENV = {"OPENCV_OPENCL_DEVICE": ":CPU:", "OPENCV_DNN_OPENCL_ALLOW_ALL_DEVICES": "1"}

_CHILD = """
import sys, time
from pathlib import Path
from edgeguard.config import load_config
from edgeguard.detectors.factory import create_detector
from edgeguard.errors import EdgeguardError
from edgeguard.media.video import VideoReader
target, clip, frames, *sets = sys.argv[1:]
try:
    det = create_detector(load_config(None, [*sets, f"detector.target={target}"]))
except EdgeguardError as exc:
    print("unavailable:", str(exc).split(": ", 1)[-1].split(" (set ")[0]); sys.exit(0)
with VideoReader(Path(clip), max_pixels=1 << 26) as r:
    images = [f.image for f in r.frames() if f.index < int(frames)]
det.detect(images[0])  # warm-up: OpenCL compiles its kernels on the first run
t0 = time.perf_counter()
for img in images[1:]:
    det.detect(img)
print(f"{(time.perf_counter() - t0) / (len(images) - 1):.3f}")
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=3, help="frames per run, the first one a warm-up")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "edgeguard-bench")
    args = ap.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    standin, models_dir, cut = prepare(args.cache, ["dos.mp4"], max(args.frames, 8))
    models = {
        "mask_rcnn (stand-in weights)": standin_set(standin),
        "yolox_nano": ["detector.model=yolox_nano"],
    }
    print(f"Seconds per frame, detection only, {cut['dos.mp4'].name} (1280x720), shared: {SHARED}")
    print("| model | " + " | ".join(TARGETS) + " |")
    print("|---|" + "---:|" * len(TARGETS))
    for name, sets in models.items():
        cells = []
        for target in TARGETS:
            env = {**os.environ, "EDGEGUARD_MODELS_DIR": str(models_dir)}
            if target.startswith("opencl"):
                env.update(OPENCL_ENV)
            res = subprocess.run(
                [sys.executable, "-c", _CHILD, target, str(cut["dos.mp4"]), str(args.frames), *sets],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            out = res.stdout.strip().splitlines()
            cells.append(out[-1] if out else f"error: {res.stderr.strip().splitlines()[-1:]}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
