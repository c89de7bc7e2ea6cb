"""`jepa-planner serve` as a real subprocess: refusals, readiness, clean shutdown on SIGTERM/SIGINT."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("JEPA_")}
    env.update(extra)
    return env


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "server.cli", "serve", *args], env=env or clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(url: str, status: int, timeout: float = 60.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=2)
            if response.status_code == status:
                return response
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} never answered {status}")


def test_refuses_a_network_bind_without_an_api_key(tmp_path):
    result = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--host", "0.0.0.0", "--data-dir",
                             str(tmp_path)], env=clean_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "API key" in result.stdout and "Traceback" not in result.stdout + result.stderr


def test_bad_config_file_is_a_usage_error(tmp_path):
    config = tmp_path / "jepa.toml"
    config.write_text('port = "not a port"\n')
    result = subprocess.run([sys.executable, "-m", "server.cli", "serve"], env=clean_env(JEPA_CONFIG=str(config)),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "port" in result.stdout and "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_serves_then_shuts_down_cleanly_on_signal(tmp_path, stop_signal):
    port = free_port()
    process = serve("--model", "tiny", "--device", "cpu", "--port", str(port), "--data-dir", str(tmp_path),
                    "--bridge", f"tcp://127.0.0.1:{free_port()}")
    try:
        assert wait_for(f"http://127.0.0.1:{port}/readyz", 200).json()["model"] == "tiny"
    finally:
        process.send_signal(stop_signal)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "Application shutdown complete" in output and "Traceback" not in output
    assert (tmp_path / "jepa.sqlite3").is_file()


def test_unloadable_model_fails_readiness_with_the_reason_while_health_stays_up(tmp_path):
    port = free_port()
    process = serve("--model", str(tmp_path / "missing.safetensors"), "--port", str(port), "--bridge", "",
                    "--data-dir", str(tmp_path), env=clean_env(JEPA_DEVICE="cpu"))
    try:
        not_ready = wait_for(f"http://127.0.0.1:{port}/readyz", 503).json()["error"]
        assert not_ready["code"] == "model_unavailable" and "missing.safetensors" in not_ready["message"]
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/v1/model").json()["state"] == "failed"
    finally:
        process.terminate()
        process.communicate(timeout=60)
    assert process.returncode == 0
