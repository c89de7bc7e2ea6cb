"""`jepa-planner bench world-model` through the real CLI dispatcher."""
from __future__ import annotations

import json

import pytest

from server.cli import main


def test_bench_prints_json_last_line(capsys):
    code = main(["bench", "world-model", "--preset", "tiny", "--samples", "4", "--horizon", "2", "--repeats", "1", "--images", "2", "--json"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    for key in ("encode_ms", "rollout_samples_per_s_cached", "rollout_samples_per_s_full", "cache_speedup"):
        assert result[key] > 0, key
    assert result["cache_speedup"] == pytest.approx(result["rollout_samples_per_s_cached"] / result["rollout_samples_per_s_full"])
    assert any(line.startswith("cache speedup") for line in lines[:-1])


def test_bench_rejects_horizon_beyond_the_model(capsys):
    assert main(["bench", "world-model", "--preset", "tiny", "--horizon", "9", "--repeats", "1"]) == 2
    assert "exceeds" in capsys.readouterr().out
