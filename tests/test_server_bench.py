"""`jepa-planner bench server` runs end to end and ends with its JSON summary line."""
from __future__ import annotations

import json
import subprocess
import sys


def test_bench_server_json_summary():
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "bench", "server", "--model", "tiny", "--device", "cpu", "--sessions", "2",
         "--requests", "2", "--samples", "8", "--iterations", "1", "--image-size", "64", "--json"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["sessions"] == 2 and summary["requests"] == 4 and summary["errors"] == 0
    for key in ("p50_ms", "p90_ms", "p99_ms", "plan_ms", "single_session_p50_ms", "throughput_rps"):
        assert summary[key] > 0, key
    assert summary["p50_ms"] <= summary["p99_ms"]
    assert any(line.startswith("bare planning") for line in lines)
