"""robot_bridge.service_process: the `jepa-planner serve` process that evaluations and benchmarks start."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from robot_bridge.service_process import REPO_ROOT

STARTS_A_SERVICE = """
import time
from robot_bridge.service_process import ServiceProcess
service = ServiceProcess("tiny", device="cpu").__enter__()
print(service._process.pid, flush=True)
time.sleep(600)
"""


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"   # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_the_service_ends_when_the_process_that_started_it_is_killed():
    """An eval or sweep killed with SIGKILL (no finally, no __exit__) leaves no service behind holding
    its ports and a CPU."""
    client = subprocess.Popen([sys.executable, "-c", STARTS_A_SERVICE], stdout=subprocess.PIPE, text=True,
                              cwd=REPO_ROOT)
    service_pid = None
    try:
        service_pid = int(client.stdout.readline())
        assert running(service_pid)
        client.send_signal(signal.SIGKILL)
        client.wait(timeout=10)
        deadline = time.monotonic() + 30   # its SIGTERM shutdown takes about a second
        while running(service_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not running(service_pid), "the service outlived the process that started it"
    finally:
        if client.poll() is None:
            client.kill()
        if service_pid is not None and running(service_pid):
            os.kill(service_pid, signal.SIGKILL)


@pytest.mark.parametrize("dtype", ["bfloat16", None])
def test_the_service_computes_in_the_dtype_it_was_started_with(dtype):
    from robot_bridge.service_process import ServiceClient, ServiceProcess

    with ServiceProcess("tiny", device="cpu", dtype=dtype) as service:
        client = ServiceClient(service.url, None)
        try:
            assert client.model_info()["dtype"] == (dtype or "float32")
        finally:
            client.close()
