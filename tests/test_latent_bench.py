"""`jepa-planner bench post-train` runs end to end and reports both variants and the ViT-g estimate
(its numbers are printed, never asserted: the machine is shared)."""
from __future__ import annotations

import json

from server import cli
from world_model.config import PRESETS
from world_model.training.latent_bench import step_flops


def test_bench_reports_both_variants_and_the_giant_estimate(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "post-train", "--models", "demo", "--steps", "1", "--batch-size", "2", "--episodes", "2",
            "--length", "4", "--json", str(out)]
    assert cli.main(argv) == 0
    report = json.loads(out.read_text())
    assert [(r["model"], r["latent_cache"]) for r in report["results"]] == [("demo", False), ("demo", True)]
    assert all(r["steps_per_s"] > 0 and r["peak_rss_mb"] > 0 for r in report["results"])
    assert report["results"][1]["cache_build_s"] is not None
    assert 0 < report["vit_giant_estimate"]["encoder_flop_share"] < 1
    printed = capsys.readouterr().out
    assert "speed-up" in printed and "ac_vit_giant (estimate)" in printed
    assert cli.main(["bench", "post-train", "--models", "nope"]) == 2


def test_flop_model_grows_with_the_encoder():
    small = step_flops(PRESETS["demo"], 8, 4, 2)
    giant = step_flops(PRESETS["ac_vit_giant"], 8, 4, 2)
    assert giant["encoder"] > 1000 * small["encoder"]
    assert small["encoder"] / sum(small.values()) < giant["encoder"] / sum(giant.values())
