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


def test_blocks_bench_loads_a_written_random_checkpoint_and_times_one_block_each(tmp_path, capsys):
    path = tmp_path / "random.pt"
    assert main(["bench", "world-model", "--preset", "tiny", "--write-random", str(path)]) == 0
    assert main(["bench", "world-model", "--blocks", "--preset", str(path), "--samples", "2", "--repeats", "1", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["encoder_block_tokens"] == 9 and result["predictor_block_tokens"] == 2 * 11
    for key in ("load_s", "load_peak_rss_mb", "encoder_block_ms", "predictor_block_ms"):
        assert result[key] > 0, key
    assert any(line.startswith("predictor block") for line in lines[:-1])


def test_write_random_refuses_a_non_world_model_preset(tmp_path, capsys):
    assert main(["bench", "world-model", "--preset", "vit_large", "--write-random", str(tmp_path / "x.pt")]) == 2
    assert "action-conditioned" in capsys.readouterr().out
    assert not (tmp_path / "x.pt").exists()
