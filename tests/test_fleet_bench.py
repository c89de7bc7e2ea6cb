"""`jepa-planner bench fleet`: a real service subprocess, real bridge clients; the report is
consistent with itself (speed is printed, never asserted)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from server.cli import main


@pytest.mark.slow
def test_fleet_bench_runs_two_robots_batched_and_one_at_a_time_and_reports_consistently(capsys):
    rate_hz, seconds = 10.0, 2.0
    code = main(["bench", "fleet", "--preset", "tiny", "--robots", "2", "--seconds", str(seconds),
                 "--rate-hz", str(rate_hz), "--threads", "1", "--json"])
    printed = capsys.readouterr().out.strip().splitlines()
    assert code == 0, "\n".join(printed)
    result = json.loads(printed[-1])
    assert (result["robots"], result["preset"], result["samples"]) == (2, "tiny", 16)
    for suffix in ("", "_serial"):
        per_robot = result["plans_per_robot" + suffix]
        assert len(per_robot) == 2 and min(per_robot) > 0, per_robot   # every robot was served
        assert result["plans" + suffix] == sum(per_robot)
        # counted over the measured window: a robot cannot get more plans than it sent observations
        assert result["plans_per_s" + suffix] <= 2 * rate_hz * 1.25
        assert result["plans_per_s" + suffix] == pytest.approx(result["plans" + suffix] / seconds, rel=0.25)
        assert 0 < result["p50_ms" + suffix] <= result["p99_ms" + suffix]
        assert 0 <= result["stale_plans" + suffix] <= result["plans" + suffix] + 2 * rate_hz * seconds
        assert result["errors" + suffix] == {}
        assert result["fairness" + suffix] == pytest.approx(max(per_robot) / min(per_robot), abs=1e-3)
    assert (result["plans_most"], result["plans_fewest"]) == (max(result["plans_per_robot"]), min(result["plans_per_robot"]))
    assert 0 < result["single_robot_plans_per_s"] <= result["single_rate_hz"] * 1.25
    # the human lines show the JSON's numbers
    assert any(f"{result['plans_per_s']:.1f} plans/s" in line and line.startswith("batched") for line in printed)
    assert any(f"{result['plans_per_s_serial']:.1f} plans/s" in line and line.startswith("one at a time") for line in printed)


def test_fleet_bench_is_a_torch_free_arm_side_client():
    probe = "import sys, robot_bridge.fleet_bench; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", probe], check=True)


def test_fleet_bench_refuses_bad_options(capsys):
    assert main(["bench", "fleet", "--robots", "0"]) == 2
    assert "--robots must be >= 1" in capsys.readouterr().out
