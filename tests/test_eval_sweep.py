"""`jepa-planner eval-sweep`: budgets, episode counts, intervals, the claim verdict, and a tiny sweep end to
end through a real `jepa-planner serve` process, ZeroMQ and MuJoCo (then resumed)."""
from __future__ import annotations

import json

import pytest

from robot_bridge.evaluation.sweep import Budget, claim, parse_episodes, plan_cells, wilson_interval
from server import cli


def test_budgets_parse_with_horizon_2_by_default_and_an_optional_episode_cap():
    assert Budget.parse("400x10") == Budget(400, 10, 2, None)
    assert Budget.parse("800x10h1:3") == Budget(800, 10, 1, 3)
    assert Budget.parse("64x2h2").name == "64x2h2" and Budget.parse("64x2h2").rollout_cost == 256
    for bad in ("400", "400x10h", "4x10", "400x0", "400x10:0", "ten x two"):
        with pytest.raises(ValueError):
            Budget.parse(bad)


def test_episode_counts_per_task_and_capped_per_budget():
    assert parse_episodes(["6"], ["reach", "push"]) == {"reach": 6, "push": 6}
    assert parse_episodes(["6", "push=2"], ["reach", "push"]) == {"reach": 6, "push": 2}
    with pytest.raises(ValueError, match="push"):
        parse_episodes(["reach=4"], ["reach", "push"])
    with pytest.raises(ValueError, match="lift"):
        parse_episodes(["4", "lift=2"], ["reach", "push"])
    cells = plan_cells(["reach"], ["cold-cem", "warm-cem"], [Budget(400, 10, 2, 2), Budget(64, 2)], {"reach": 5})
    # cheapest budget first, every planner at each budget; the cap applies to its budget only
    assert [(c.planner, c.budget.name, c.episodes) for c in cells] == [
        ("cold-cem", "64x2h2", 5), ("warm-cem", "64x2h2", 5), ("cold-cem", "400x10h2", 2), ("warm-cem", "400x10h2", 2)]
    assert cells[0].planner_settings()["warm_start"] is False and cells[1].planner_settings()["warm_start"] is True
    assert cells[0].planner_settings()["topk"] == 10 and cells[0].planner_settings()["momentum_std"] == 0.15


def test_wilson_interval_known_values():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    for trials in range(1, 31):  # the ends are exact, so a plot's error bars are never negative
        assert wilson_interval(trials, trials)[1] == 1.0 and wilson_interval(0, trials)[0] == 0.0


def _cell(planner, budget, successes, episodes, seconds):
    low, high = wilson_interval(successes, episodes)
    return {"task": "reach", "planner": planner, "budget": budget, "episodes": episodes, "successes": successes,
            "success_rate": successes / episodes, "wilson_low": low, "wilson_high": high, "mean_plan_s": seconds}


def test_the_claim_compares_the_best_cell_within_a_tenth_of_the_reference_time():
    reference = _cell("cold-cem", "400x10h2", 8, 10, 5.0)
    fast_good = _cell("warm-icem", "64x2h2", 9, 10, 0.2)
    slow_better = _cell("warm-cem", "256x5h2", 10, 10, 2.0)  # more than a tenth of 5 s: not a candidate
    verdict = claim([reference, fast_good, slow_better])["reach"]
    assert verdict["holds"] and verdict["best_within_limit"]["budget"] == "64x2h2"
    assert verdict["time_limit_s"] == pytest.approx(0.5)
    fast_bad = _cell("warm-icem", "64x2h2", 5, 10, 0.2)
    assert not claim([reference, fast_bad, slow_better])["reach"]["holds"]
    assert claim([fast_bad]) == {}  # no reference, nothing claimed
    nothing = _cell("cold-cem", "400x10h2", 0, 2, 5.0)
    assert claim([nothing, fast_bad])["reach"]["holds"] is True  # better than the reference
    assert claim([nothing, _cell("warm-cem", "64x2h2", 0, 4, 0.2)])["reach"]["holds"] is None  # 0/2 vs 0/4: nothing


def test_a_tiny_sweep_runs_through_the_service_writes_table_json_plot_and_resumes(tmp_path, capsys):
    out, media = tmp_path / "qpc", tmp_path / "media"
    common = ["eval-sweep", "--model", "tiny", "--random-init", "--tasks", "reach", "--budgets", "12x1h1",
              "--episodes", "1", "--steps", "2", "--seed", "3", "--out", str(out), "--media", str(media), "--threads", "1"]
    assert cli.main([*common, "--planners", "cold-cem"]) == 0
    saved = json.loads((out / "quality_per_compute.json").read_text())
    (cell,) = saved["cells"]
    assert (cell["planner"], cell["budget"], cell["episodes"]) == ("cold-cem", "12x1h1", 1)
    assert cell["planner_settings"]["warm_start"] is False and cell["mean_plan_s"] > 0
    assert cell["wilson_low"] <= cell["success_rate"] <= cell["wilson_high"]
    assert (out / "quality_per_compute.png").stat().st_size > 0
    assert "| reach | cold-cem | 12 x 1, H1 | 1 |" in (out / "quality_per_compute.md").read_text()
    assert (media / "reach-cold-cem-12x1h1" / "summary.json").exists()
    capsys.readouterr()
    # Resumed with one more planner: only the new cell runs, the saved one is kept as it was.
    assert cli.main([*common, "--planners", "cold-cem", "warm-icem", "--resume"]) == 0
    assert "2 cells (1 already measured), 1 episodes to run" in capsys.readouterr().out
    cells = json.loads((out / "quality_per_compute.json").read_text())["cells"]
    assert [c["planner"] for c in cells] == ["cold-cem", "warm-icem"] and cells[0] == cell
    # Nothing left to measure: the table is written again without starting a service.
    (out / "quality_per_compute.md").unlink()
    assert cli.main([*common, "--planners", "warm-icem", "--resume", "--model", "missing.safetensors"]) == 0
    assert "| reach | warm-icem | 12 x 1, H1 | 1 |" in (out / "quality_per_compute.md").read_text()


def test_bad_arguments_are_usage_errors(tmp_path, capsys):
    assert cli.main(["eval-sweep", "--budgets", "400by10", "--out", str(tmp_path)]) == 2
    assert "400by10" in capsys.readouterr().err
    assert cli.main(["eval-sweep", "--tasks", "lift", "--out", str(tmp_path)]) == 2
    assert "lift" in capsys.readouterr().err
    assert cli.main(["eval-sweep", "--episodes", "reach=2", "--out", str(tmp_path)]) == 2
    assert "push" in capsys.readouterr().err
