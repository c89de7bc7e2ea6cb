"""`jepa-planner serve --replicas` as a real process (a local Ray on loopback, one CPU replica)."""
from __future__ import annotations

import signal
import time

import httpx
import pytest

from test_server_cli import clean_env, free_port, serve, wait_for

pytest.importorskip("ray.serve", reason="ray[serve] is not installed (make test installs it: make ray-deps)")


def test_serve_with_replicas_exits_cleanly_on_sigterm(tmp_path):
    """`jepa-planner serve --replicas 1` as a real process: ready with the Ray backend, and SIGTERM ends it
    with exit code 0 within seconds, starting no second Ray on the way out (Ray's own signal handler had
    aborted it, rc 134; a Ray started on the model worker took ~30 s to shut down)."""
    port = free_port()
    process = serve("--replicas", "1", "--model", "tiny", "--bridge", "", "--port", str(port), "--data-dir",
                    str(tmp_path), "--log-level", "info", env=clean_env())
    try:
        wait_for(f"http://127.0.0.1:{port}/readyz", 200, timeout=240)
        model = httpx.get(f"http://127.0.0.1:{port}/v1/model", timeout=10).json()
        assert model["backend"] == "ray" and [r["up"] for r in model["replicas"]] == [True]
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, output[-2000:]
    assert time.monotonic() - started < 20
    assert output.count("Started a local Ray instance") == 1 and "SIGTERM received" not in output, output[-2000:]
