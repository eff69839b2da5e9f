"""Where the bench finds its inputs: ../shared (EDGEGUARD_SHARED), never copies in the repo."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGEGUARD_SHARED", REPO.parent / "shared")).resolve()
CANDIDATES = SHARED / "models" / "candidates"
# Fixed cameras like a gateway's (pedestrians, example_02, vtest), the seed's own sample (a
# head-worn camera over a desk), and two handheld clips.
CLIPS = [
    "pedestrians.mp4",
    "example_02.mp4",
    "vtest.avi",
    "croped_mini_subject_2_typeset.MP4",
    "dos.mp4",
    "ecuador.mp4",
]
IMAGES = ["city.jpg", "000000005001.jpg", "000000038829.jpg", "000000465822.jpg", "messi5.jpg"]
