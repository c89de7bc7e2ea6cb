"""`jepa-planner bench hardening`: the service against hostile clients, as a separate real process.

  slow-connections  open N idle and N slowloris connections to a `jepa-planner serve` run under a
                    1,024-descriptor limit, then time /healthz from fresh connections; also the
                    bytes the service logged meanwhile.
  upload-rss        K concurrent uploads of a PNG at the service's pixel limit (a few hundred KB
                    that decode to the largest accepted image); the service's peak RSS (VmHWM).

Both print one line per figure and, with --json, one JSON object last.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

EXIT_OK, EXIT_FAILURE = 0, 1
SERVICE_FD_LIMIT = 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", choices=["slow-connections", "upload-rss"])
    parser.add_argument("--connections", type=int, default=1100,
                        help="slow-connections: connections held open, half idle, half slowloris (default %(default)s)")
    parser.add_argument("--probes", type=int, default=20, help="slow-connections: timed /healthz requests")
    parser.add_argument("--uploads", type=int, default=8, help="upload-rss: concurrent uploads (default %(default)s)")
    parser.add_argument("--side", type=int, default=None,
                        help="upload-rss: image side in pixels (default: the largest square the service accepts)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def run(args: argparse.Namespace) -> int:
    if args.scenario == "slow-connections":
        report = _slow_connections(args.connections, args.probes)
    else:
        report = _upload_rss(args.uploads, args.side)
    for key, value in report.items():
        print(f"{key}: {value}")
    if args.json:
        print(json.dumps(report))
    return EXIT_OK


@contextmanager
def _service(data_dir: Path, log_path: Path, **env: str) -> Iterator[tuple[str, int]]:
    """`jepa-planner serve` (tiny model, no bridge) as a child process limited to 1,024 descriptors."""
    port = _free_port()
    environment = {**os.environ, "JEPA_MODEL": "tiny", "JEPA_DEVICE": "cpu", "JEPA_BRIDGE": "",
                   "JEPA_DATA_DIR": str(data_dir), "JEPA_PORT": str(port), "JEPA_API_KEY": "", **env}

    def limit_descriptors() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (SERVICE_FD_LIMIT, SERVICE_FD_LIMIT))

    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "server.cli", "serve"], env=environment, stdout=log,
                                   stderr=subprocess.STDOUT, preexec_fn=limit_descriptors)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process)
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(url: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("the service did not become ready")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _slow_connections(count: int, probes: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="jepa-bench-slow-") as folder:
        log_path = Path(folder) / "service.log"
        with _service(Path(folder) / "data", log_path) as (url, _):
            host, port = "127.0.0.1", int(url.rsplit(":", 1)[1])
            quiet, _ = _probe_healthz(url, probes)
            held: list[socket.socket] = []
            opened = refused = 0
            for index in range(count):
                try:
                    connection = socket.create_connection((host, port), timeout=2)
                except OSError:
                    refused += 1
                    continue
                if index % 2:  # slowloris: a request line and never the end of the headers
                    try:
                        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                    except OSError:
                        pass
                held.append(connection)
                opened += 1
            stop = threading.Event()
            trickler = threading.Thread(target=_trickle, args=(held, stop), daemon=True)
            trickler.start()
            time.sleep(1.0)
            latencies, failures = _probe_healthz(url, probes)
            stop.set()
            trickler.join()
            still_open = sum(_is_open(connection) for connection in held)
            for connection in held:
                connection.close()
        log_bytes = log_path.stat().st_size
    return {
        "healthz_p50_ms_without_slow_connections": round(statistics.median(quiet), 1) if quiet else None,
        "connections_opened": opened, "connections_refused_at_connect": refused,
        "connections_still_open_at_end": still_open,
        "healthz_ok": f"{len(latencies)}/{probes}",
        "healthz_p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "healthz_max_ms": round(max(latencies), 1) if latencies else None,
        "healthz_failures": failures, "service_log_bytes": log_bytes,
    }


def _probe_healthz(url: str, probes: int) -> tuple[list[float], int]:
    """(latencies in ms of the answered probes, failures), each probe on a fresh connection."""
    import httpx

    latencies, failures = [], 0
    for _ in range(probes):
        started = time.perf_counter()
        try:
            ok = httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            ok = False
        if ok:
            latencies.append((time.perf_counter() - started) * 1000)
        else:
            failures += 1
        time.sleep(0.1)
    return latencies, failures


def _trickle(connections: list[socket.socket], stop: threading.Event) -> None:
    """Every slowloris connection sends one more header line per second."""
    while not stop.wait(1.0):
        for index, connection in enumerate(connections):
            if index % 2:
                try:
                    connection.send(b"X-a: b\r\n")
                except OSError:
                    pass


def _is_open(connection: socket.socket) -> bool:
    try:
        connection.setblocking(False)
        return connection.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def _upload_rss(uploads: int, side: int | None) -> dict:
    import httpx
    import numpy as np
    from PIL import Image

    from .settings import load_settings

    side = side or int(load_settings().max_image_pixels ** 0.5)
    # A smooth gradient: compresses to little, decodes to side x side x 3 bytes.
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    pixels = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], ramp[None, ::-1]), axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    png = buffer.getvalue()
    del pixels
    with tempfile.TemporaryDirectory(prefix="jepa-bench-rss-") as folder:
        with _service(Path(folder) / "data", Path(folder) / "service.log") as (url, pid):
            before = _status_kib(pid, "VmRSS")
            statuses: list[int] = []

            def upload() -> None:
                try:
                    response = httpx.post(f"{url}/v1/goals", files={"image": ("g.png", png, "image/png")}, timeout=300)
                    statuses.append(response.status_code)
                except httpx.HTTPError:
                    statuses.append(0)

            threads = [threading.Thread(target=upload) for _ in range(uploads)]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            seconds = time.perf_counter() - started
            time.sleep(1.0)
            return {
                "image": f"{side}x{side} PNG, {len(png)} bytes", "uploads": uploads,
                "answers": {str(code): statuses.count(code) for code in sorted(set(statuses))},
                "seconds": round(seconds, 2),
                "rss_before_mib": round(before / 1024, 1),
                "peak_rss_mib": round(_status_kib(pid, "VmHWM") / 1024, 1),
                "rss_after_mib": round(_status_kib(pid, "VmRSS") / 1024, 1),
            }


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")
