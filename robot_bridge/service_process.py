"""The planning service as its arm-side clients see it: a separate `jepa-planner serve` process and its HTTP API.

Evaluations and benchmarks are clients of the service, like a lab's arm and operator: they start (or
are pointed at) a real service, upload goal images, open sessions over HTTP and drive arms over
ZeroMQ. Nothing here imports torch, so it also runs from a simulator's own environment.
"""
from __future__ import annotations

import ctypes
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]


class ServiceError(RuntimeError):
    """The service could not be started or did not answer as expected."""


class RejectedSettings(ValueError):
    """The service refused the session asked for (e.g. an invalid planner setting): a usage error."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ends_with_this_process():
    """A `preexec_fn` that has the kernel send the service SIGTERM when the process that started it dies,
    however it dies (SIGKILL, a killed eval or sweep): otherwise the service lives on as an orphan, holding its
    ports and a CPU. Linux only (prctl PR_SET_PDEATHSIG); None elsewhere. Resolved here, in the parent,
    so the forked child only makes two system calls."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent, pr_set_pdeathsig = os.getpid(), 1

    def set_death_signal() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)
        if os.getppid() != parent:   # the parent died before the prctl took effect
            os._exit(1)

    return set_death_signal


def service_python() -> str:
    """A Python with torch and the service: this one when it has torch, else the project's `.venv`
    (the robosuite environment has no torch); `JEPA_SERVICE_PYTHON` overrides both."""
    if os.environ.get("JEPA_SERVICE_PYTHON"):
        return os.environ["JEPA_SERVICE_PYTHON"]
    try:
        import torch  # noqa: F401
    except ImportError:
        return str(REPO_ROOT / ".venv" / "bin" / "python")
    return sys.executable


class ServiceProcess:
    """`with ServiceProcess(model=...) as service:` a real `jepa-planner serve` on free loopback ports,
    with its own data directory (a temporary one unless given) and `serve.log` there. `env` is the
    service's whole environment (default: this process's). The service ends with the thread that
    started it (on Linux, even when that process is killed)."""

    def __init__(self, model: str = "demo", *, random_init_seed: int | None = None, device: str | None = None,
                 threads: int | None = None, dtype: str | None = None, env: dict[str, str] | None = None,
                 data_dir: Path | None = None, load_timeout_s: float = 300.0):
        self.model, self.random_init_seed, self.device, self.dtype = model, random_init_seed, device, dtype
        self.threads, self.env, self.data_dir, self.load_timeout_s = threads, env, data_dir, load_timeout_s
        self.url = self.bridge_endpoint = ""
        self.log_path: Path | None = None
        self._process: subprocess.Popen | None = None
        self._scratch: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> "ServiceProcess":
        if self.data_dir is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="jepa-service-")
            self.data_dir = Path(self._scratch.name)
        port, bridge_port = _free_port(), _free_port()
        self.url, self.bridge_endpoint = f"http://127.0.0.1:{port}", f"tcp://127.0.0.1:{bridge_port}"
        command = [service_python(), "-m", "server.cli", "serve", "--model", self.model, "--port", str(port),
                   "--bridge", self.bridge_endpoint, "--data-dir", str(self.data_dir), "--log-level", "warning"]
        if self.device:
            command += ["--device", self.device]
        if self.dtype:
            command += ["--dtype", self.dtype]
        if self.random_init_seed is not None:
            command += ["--random-init", str(self.random_init_seed)]
        env = dict(os.environ if self.env is None else self.env)
        if self.threads:
            env["OMP_NUM_THREADS"] = str(self.threads)  # torch's intra-op threads for planning
        self.log_path = self.data_dir / "serve.log"
        self._log = self.log_path.open("wb")
        self._process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
                                         preexec_fn=_ends_with_this_process())
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def log_tail(self, characters: int = 1500) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-characters:].strip()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.load_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ServiceError(f"the service exited ({self._process.returncode}) before it was ready: "
                                   + self.log_tail())
            try:
                ready = httpx.get(f"{self.url}/readyz", timeout=2)
            except httpx.HTTPError:
                ready = None
            if ready is not None and ready.status_code == 200:
                return
            if ready is not None and ready.status_code == 503 and "failed" in ready.text:
                raise ServiceError(f"the model did not load: {ready.text}")
            time.sleep(0.2)
        raise ServiceError(f"the service was not ready within {self.load_timeout_s:.0f} s: {self.log_tail()}")

    def __exit__(self, *exc_info) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self.log_path is not None:
            self._log.close()
        if self._scratch is not None:
            self._scratch.cleanup()


class ServiceClient:
    """The HTTP calls an evaluation makes: model info, goals, sessions, one timed act."""

    def __init__(self, url: str, api_key: str | None = None):
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx.Client(base_url=url, timeout=120, headers=headers)

    def close(self) -> None:
        self.http.close()

    def model_info(self) -> dict:
        return self._json(self.http.get("/v1/model"))

    def upload_goal(self, image: np.ndarray, name: str) -> str:
        response = self.http.post("/v1/goals", files={"image": ("goal.png", io.BytesIO(png_bytes(image)), "image/png")},
                                  data={"name": name})
        return self._json(response)["id"]

    def create_session(self, body: dict) -> dict:
        response = self.http.post("/v1/sessions", json=body)
        if response.status_code == 422:
            raise RejectedSettings(f"the service refused the session settings: {response.json()['error']['message']}")
        return self._json(response)

    def stop_session(self, session_id: str) -> dict | None:
        response = self.http.post(f"/v1/sessions/{session_id}/stop")
        return response.json() if response.is_success else None

    def act_seconds(self, session_id: str, image: np.ndarray, state: np.ndarray, seq: int) -> float:
        """One HTTP act; the service's own total time for it, in seconds."""
        response = self.http.post(f"/v1/sessions/{session_id}/act",
                                  files={"image": ("frame.png", io.BytesIO(png_bytes(image)), "image/png")},
                                  data={"state": json.dumps([float(v) for v in state]), "seq": str(seq)})
        return self._json(response)["total_ms"] / 1000.0

    @staticmethod
    def _json(response: httpx.Response) -> dict:
        if not response.is_success:
            raise ServiceError(f"{response.request.method} {response.request.url.path}: {response.status_code} "
                               f"{response.text[:500]}")
        return response.json()


def png_bytes(image: np.ndarray) -> bytes:
    import imageio.v3 as iio

    return iio.imwrite("<bytes>", image, extension=".png")
