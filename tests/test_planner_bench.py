"""`jepa-planner bench plan`: the reference-style baseline really is our planner's reference (same
plan from the same noise), and the report prints and returns the numbers it measured."""
from __future__ import annotations

import json

import torch

from planner.bench import ReferenceStylePlanner, predictor_flops
from planner.cem import CEM
from planner.config import PlannerConfig
from planner.noise import SeededNoise
from planner.objective import GoalObjective
from server.cli import main
from world_model import PRESETS, load_world_model

BENCH_ARGS = {"samples": 12, "horizon": 2, "iterations": 2, "topk": 3}


def test_bench_plan_reports_what_it_ran_and_measured(capsys):
    code = main([
        "bench", "plan", "--preset", "tiny", "--device", "cpu", "--repeats", "1", "--json",
        *(item for name, value in BENCH_ARGS.items() for item in (f"--{name}", str(value))),
    ])
    assert code == 0
    *printed, last = capsys.readouterr().out.strip().splitlines()
    result = json.loads(last)
    assert {name: result[name] for name in BENCH_ARGS} == BENCH_ARGS
    assert (result["device"], result["bf16"]) == ("cpu", False)
    for key in ("baseline_s_per_action", "s_per_action", "speedup", "predictor_gflops", "matmul_gflops", "peak_fraction"):
        assert result[key] > 0, key
    # same noise, same semantics: both planners score the same first-iteration candidates alike
    assert result["first_iteration_energy_max_abs_diff"] < 1e-4
    # the human lines show the measured numbers of the JSON, each on its planner's line
    baseline_line = next(line for line in printed if line.startswith("baseline"))
    ours_line = next(line for line in printed if line.startswith("ours"))
    assert f"{result['baseline_s_per_action']:.3f} s/action" in baseline_line
    assert f"{result['baseline_imagined_frames_per_s']:.0f} imagined frames/s" in baseline_line
    assert f"{result['s_per_action']:.3f} s/action" in ours_line
    assert f"{result['imagined_frames_per_s']:.0f} imagined frames/s" in ours_line
    assert any(line.startswith(f"speedup {result['speedup']:.1f}x") for line in printed)


def test_the_baseline_and_ours_make_the_same_plan_from_the_same_seeded_noise():
    # The trained demo model: its energies separate the candidates (a random model's near-ties
    # would let float rounding reorder the top-k and the plans part for no real reason).
    model = load_world_model("demo", device="cpu")
    frames = torch.randn(2, model.tokens_per_frame, model.embed_dim, generator=torch.Generator().manual_seed(0))
    context, goal = torch.nn.functional.layer_norm(frames, (model.embed_dim,)).unbind(0)
    state = torch.tensor([0.58, -0.002, 0.25, -3.07, 0.03, -1.91, 0.5])
    config = PlannerConfig(horizon=2, samples=16, iterations=3, topk=4)

    ours = CEM(config, SeededNoise(1)).solve(GoalObjective(model, context, state, goal))
    baseline = ReferenceStylePlanner(config, SeededNoise(1)).solve(model, context[None], state, goal[None])

    assert len(ours.iteration_energies) == len(baseline.iteration_energies) == config.iterations
    for our_energies, baseline_energies in zip(ours.iteration_energies, baseline.iteration_energies):
        torch.testing.assert_close(our_energies, baseline_energies, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.actions, baseline.actions, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.state.mean, baseline.state.mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.state.std, baseline.state.std, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.energy, baseline.energy, atol=1e-5, rtol=0)


def test_predictor_flops_count_grows_with_history_and_samples():
    config = PRESETS["tiny"].predictor
    one = predictor_flops(config, samples=1, horizon=1)
    assert predictor_flops(config, samples=4, horizon=1) == 4 * one
    # the second step attends over two frames, so it costs more than the first
    assert predictor_flops(config, samples=1, horizon=2) > 2 * one
