"""`jepa-planner bench batch`: step_together vs a loop of controller.step, same plans, consistent report."""
from __future__ import annotations

import json

import pytest

from server.cli import main


def test_bench_batch_reports_both_ways_per_session_count_and_their_plans_agree(capsys):
    code = main(["bench", "batch", "--preset", "demo", "--device", "cpu", "--sessions", "1,3", "--samples", "8",
                 "--topk", "3", "--iterations", "2", "--repeats", "1", "--json"])
    assert code == 0
    *printed, last = capsys.readouterr().out.strip().splitlines()
    result = json.loads(last)
    assert (result["samples"], result["iterations"], result["topk"], result["device"]) == (8, 2, 3, "cpu")
    assert [row["sessions"] for row in result["results"]] == [1, 3]
    for row in result["results"]:
        assert row["plans_per_s"] == pytest.approx(row["sessions"] / row["together_s"])
        assert row["loop_plans_per_s"] == pytest.approx(row["sessions"] / row["loop_s"])
        assert row["speedup"] == pytest.approx(row["loop_s"] / row["together_s"])
        assert row["plans_max_abs_diff"] < 1e-5  # the trained demo model: same noise, same plans
        line = next(line for line in printed if line.strip().startswith(f"{row['sessions']} sessions"))
        assert f"{row['plans_per_s']:8.1f} plans/s" in line and f"{row['speedup']:.2f}x" in line


def test_bench_batch_refuses_a_bad_session_list(capsys):
    assert main(["bench", "batch", "--sessions", "4,x"]) == 2
    assert "--sessions must be positive integers" in capsys.readouterr().out
