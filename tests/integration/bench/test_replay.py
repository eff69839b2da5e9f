"""bench.replay: a margin rule replayed on recorded placements scores what the planner itself would hide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.privacy import unpack
from bench.replay import hidden_at, per_clip, record, score
from bench.run import decode, trim
from edgeguard.carry import Margins
from edgeguard.config import load_config
from edgeguard.detectors.factory import create_detector
from edgeguard.engine import keyframe_looker
from edgeguard.masks import rasterize
from edgeguard.temporal import Planner
from tests.conftest import media


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 40 frames of vtest: walkers, carried between a few keyframes (interval 16)."""
    out = tmp_path_factory.mktemp("replay") / "vtest-40.mp4"
    trim(media("vtest.avi"), out, 40)
    return out


def test_the_default_rule_scores_what_the_planner_hid(yolox_env: Path, clip: Path) -> None:
    cfg = load_config(None, ["detector.model=yolox_nano"])
    rec = record(cfg, clip)
    assert rec.carried and rec.keyframes, "both kinds of frame are in the clip"

    # The planner run again, as the engine runs it: what it hid on every frame.
    detector, c = create_detector(cfg), cfg.protect
    planner: Planner[int] = Planner(
        cfg.temporal,
        keyframe_looker(detector, cfg),
        lambda d, w, h, pad: rasterize(d, w, h, shape="box", dilate=c.dilate, pad=pad, head=c.head_margin),
    )
    hidden = {p.item: p.mask > 0 for p in planner.run(iter(enumerate(decode(clip))))}
    default = Margins.of(cfg.temporal)
    for i in range(len(rec.refs)):
        assert np.array_equal(hidden_at(rec, i, default, cfg), hidden[i]), f"frame {i}"
    ref_px = hidden_px = 0
    worst = 1.0
    for i, bits in enumerate(rec.refs):
        ref = unpack(bits, rec.shape)
        ref_px += int(ref.sum())
        hidden_px += int(hidden[i].sum())
        if ref.any():
            worst = min(worst, float((ref & hidden[i]).sum() / ref.sum()))

    overreach, replayed_worst = score(rec, default, cfg)
    assert overreach == pytest.approx(hidden_px / ref_px, abs=1e-12)
    assert replayed_worst == pytest.approx(worst, abs=1e-12)

    # Other rules move only the carried frames, in the direction they should.
    none = Margins(0.0, 0.0)
    wide = Margins(0.0, 3.0, cfg.temporal.margin_xy)
    for i in rec.keyframes:
        assert np.array_equal(hidden_at(rec, i, none, cfg), hidden[i])
    assert score(rec, none, cfg)[0] < overreach < score(rec, wide, cfg)[0]
    assert score(rec, wide, cfg)[1] >= replayed_worst >= score(rec, none, cfg)[1]


def test_each_clip_is_summarized_with_its_own_best_rule(capsys: pytest.CaptureFixture[str]) -> None:
    # (overreach, worst frame) per clip: "a" is met by one rule, "b" by none, though each aim alone is.
    scored = {
        "default": [(1.40, 0.97), (1.45, 0.96)],
        "wide": [(1.49, 0.985), (1.62, 0.99)],
        "wider": [(1.70, 0.995), (1.80, 0.995)],
    }
    per_clip(scored, ["a", "b"])
    a, b = capsys.readouterr().out.splitlines()[1:]
    assert a == (
        "  a: least overreach with the worst frame at 98% or more 1.49; best worst frame within 1.5: 98.5%; "
        "rules meeting both: 1"
    )
    assert b == (
        "  b: least overreach with the worst frame at 98% or more 1.62; best worst frame within 1.5: 96.0%; "
        "rules meeting both: 0"
    )
