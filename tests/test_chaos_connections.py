"""Hostile HTTP clients against a real service: idle and slowloris connections past the descriptor
limit, trickled bodies, and log floods."""
from __future__ import annotations

import logging
import resource
import socket
import subprocess
import sys
import time

import httpx
import pytest

from server.log_limits import RepeatCollapsingFilter
from test_api import tiny_service
from test_server_cli import clean_env, free_port, wait_for

SERVICE_FD_LIMIT = 256  # the guard keeps 128 descriptors in reserve, so at most 128 connections


def _limit_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (SERVICE_FD_LIMIT, SERVICE_FD_LIMIT))


@pytest.fixture()
def limited_service(tmp_path):
    """`jepa-planner serve` under a 256-descriptor limit, with a 2 s header deadline."""
    port = free_port()
    log_path = tmp_path / "service.log"
    env = clean_env(JEPA_MODEL="tiny", JEPA_DEVICE="cpu", JEPA_BRIDGE="", JEPA_PORT=str(port),
                    JEPA_DATA_DIR=str(tmp_path / "data"), JEPA_HTTP_HEADER_TIMEOUT_S="2")
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "server.cli", "serve"], env=env, stdout=log,
                                   stderr=subprocess.STDOUT, preexec_fn=_limit_descriptors)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/healthz", 200)
        yield url, port, log_path
    finally:
        process.terminate()
        process.wait(30)


def _open(port: int, count: int, slowloris: bool) -> list[socket.socket]:
    held = []
    for _ in range(count):
        connection = socket.create_connection(("127.0.0.1", port), timeout=5)
        if slowloris:
            connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never ends its headers
        held.append(connection)
    return held


def _closed_by_peer(connection: socket.socket, wait_s: float) -> bool:
    """True once the service closes the connection (EOF or reset) within `wait_s`."""
    connection.settimeout(wait_s)
    try:
        while connection.recv(1024):
            pass
        return True
    except (socket.timeout, TimeoutError):
        return False
    except OSError:
        return True


def test_more_idle_and_slow_connections_than_descriptors_leave_healthz_answering(limited_service):
    url, port, log_path = limited_service
    held = _open(port, 150, slowloris=False) + _open(port, 150, slowloris=True)
    try:
        for _ in range(5):  # without the guard not one is even accepted
            assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        # The header deadline (2 s) closes every connection still holding on, oldest first.
        assert _closed_by_peer(held[-1], wait_s=6.0)
    finally:
        for connection in held:
            connection.close()
    assert log_path.stat().st_size < 100_000, log_path.read_text()[-2000:]


def test_a_trickled_body_gets_408_at_the_body_deadline(tmp_path):
    with tiny_service(tmp_path, http_body_timeout_s=1.0) as server:
        port = int(server.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            connection.sendall(b"POST /v1/goals HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                               b"Content-Length: 100000\r\n\r\n" + b"\x89PNG")
            started = time.monotonic()
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = connection.recv(4096)
                if not chunk:
                    break
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 408"), answer
            assert time.monotonic() - started < 5.0
        assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_repeated_log_messages_collapse_and_the_next_one_counts_the_dropped():
    now = [0.0]
    collapse = RepeatCollapsingFilter(burst=3, window_s=10.0, clock=lambda: now[0])

    def record(text: str) -> logging.LogRecord:
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, text, None, None)

    written = [collapse.filter(record("socket.accept() out of system resource")) for _ in range(100)]
    assert sum(written) == 3
    assert collapse.filter(record("something else"))  # other messages are independent
    now[0] = 10.0
    later = record("socket.accept() out of system resource")
    assert collapse.filter(later) and "97 identical messages dropped" in later.getMessage()
