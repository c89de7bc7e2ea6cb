"""`jepa-planner bench plan`: runs end to end, both planners produce the same plan, JSON last line."""
from __future__ import annotations

import json

from planner.bench import predictor_flops
from server.cli import main
from world_model import PRESETS


def test_bench_plan_prints_json_and_the_baseline_agrees_with_ours(capsys):
    code = main([
        "bench", "plan", "--preset", "tiny", "--device", "cpu", "--samples", "12", "--horizon", "2",
        "--iterations", "2", "--topk", "3", "--repeats", "1", "--json",
    ])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    for key in ("baseline_s_per_action", "s_per_action", "speedup", "predictor_gflops", "matmul_gflops", "peak_fraction"):
        assert result[key] > 0, key
    # same noise, same semantics: both planners score the same first-iteration candidates alike
    assert result["first_iteration_energy_max_abs_diff"] < 1e-4
    assert result["speedup"] == result["baseline_s_per_action"] / result["s_per_action"]
    assert any("speedup" in line for line in lines[:-1])


def test_predictor_flops_count_grows_with_history_and_samples():
    config = PRESETS["tiny"].predictor
    one = predictor_flops(config, samples=1, horizon=1)
    assert predictor_flops(config, samples=4, horizon=1) == 4 * one
    # the second step attends over two frames, so it costs more than the first
    assert predictor_flops(config, samples=1, horizon=2) > 2 * one
