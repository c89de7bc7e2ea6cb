"""`jepa-planner bench scheduler`: what one heavy robot does to another, and how fast SIGTERM ends a long plan.

Starts a real `jepa-planner serve` subprocess and, over HTTP:
1. a victim session acts alone (its baseline latency);
2. a heavy session acts from several concurrent clients at once while the victim acts again: the victim's
   latency shows how long it waits behind the heavy robot's plans;
3. a heavy act is in flight when the service gets SIGTERM: time to exit, the act's answer, steps recorded.
`--serve-from DIR` runs the service from another checkout (e.g. main) with the same client, for before/after.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

EXIT_OK, EXIT_FAILURE = 0, 1
STATE = [0.5, 0.0, 0.3, 3.14, 0.0, 0.0, 0.0]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="demo", help="preset or checkpoint (default %(default)s)")
    parser.add_argument("--heavy", default="256x10x4", help="heavy planner SAMPLESxITERATIONSxHORIZON (default %(default)s, "
                                                            "the default budget on the demo model)")
    parser.add_argument("--victim", default="128x4x1", help="victim planner (default %(default)s, the demo's)")
    parser.add_argument("--heavy-clients", type=int, default=3, help="concurrent heavy acts (default %(default)s)")
    parser.add_argument("--victim-acts", type=int, default=5, help="timed victim acts (default %(default)s)")
    parser.add_argument("--budget", type=int, default=None, help="JEPA_PLAN_BUDGET for the service")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the service (default %(default)s)")
    parser.add_argument("--serve-from", default=None, help="checkout whose `server.cli serve` to run (default: this one)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def run(args: argparse.Namespace) -> int:
    import httpx

    heavy, victim = _planner(args.heavy), _planner(args.victim)
    report: dict = {"model": args.model, "heavy": args.heavy, "victim": args.victim,
                    "heavy_clients": args.heavy_clients, "serve_from": args.serve_from or "this checkout"}
    with tempfile.TemporaryDirectory(prefix="jepa-bench-sched-") as data_dir:
        process, url = _serve(args, data_dir)
        try:
            with httpx.Client(base_url=url, timeout=900) as http:
                goal = http.post("/v1/goals", files={"image": ("g.png", _png(1), "image/png")}).json()["id"]
                sessions = {}
                for name, planner in (("heavy", heavy), ("victim", victim)):
                    created = http.post("/v1/sessions", json={"robot_id": f"bench-{name}", "goal_id": goal,
                                                              "planner": planner})
                    if created.status_code != 201:
                        print(f"bench scheduler: the {name} session was refused: {created.text}")
                        return EXIT_FAILURE
                    sessions[name] = created.json()["id"]
                _act(http, sessions["victim"])  # warm-up (builds the controller)
                alone = [_timed_act(http, sessions["victim"])[0] for _ in range(3)]
                contended, heavy_plan_ms = _victim_under_load(url, sessions, args)
            report.update(_shutdown_during_plan(process, url, sessions["heavy"], data_dir))
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    report.update({
        "victim_alone_p50_ms": round(statistics.median(alone), 1),
        "victim_under_heavy_p50_ms": round(statistics.median(contended), 1) if contended else None,
        "victim_under_heavy_max_ms": round(max(contended), 1) if contended else None,
        "victim_acts_ok": len(contended), "victim_acts": args.victim_acts,
        "heavy_plan_ms_median": round(statistics.median(heavy_plan_ms), 1) if heavy_plan_ms else None,
    })
    print(f"service from {report['serve_from']}, model {args.model}, heavy {args.heavy} x {args.heavy_clients} "
          f"concurrent clients, victim {args.victim}")
    print(f"heavy plan (median plan_ms): {report['heavy_plan_ms_median']} ms")
    print(f"victim act alone: p50 {report['victim_alone_p50_ms']} ms; while the heavy robot acts: "
          f"p50 {report['victim_under_heavy_p50_ms']} ms, max {report['victim_under_heavy_max_ms']} ms "
          f"({len(contended)}/{args.victim_acts} answered 200)")
    print(f"SIGTERM during a heavy plan: exit after {report['shutdown_s']} s (code {report['exit_code']}), the act "
          f"answered {report['act_status']} ({report['act_content_type']}), steps recorded for it: "
          f"{report['steps_recorded_for_it']}")
    if args.json:
        print(json.dumps(report))
    return EXIT_OK


def _planner(text: str) -> dict:
    samples, iterations, horizon = (int(v) for v in text.lower().split("x"))
    return {"samples": samples, "iterations": iterations, "horizon": horizon, "topk": min(10, samples)}


def _serve(args, data_dir: str):
    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JEPA_")}
    env.update(JEPA_ACT_TIMEOUT_S="900", OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    if args.budget is not None:
        env["JEPA_PLAN_BUDGET"] = str(args.budget)
    root = Path(args.serve_from).resolve() if args.serve_from else Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = str(root)
    if args.serve_from:
        env["PYTHONDONTWRITEBYTECODE"] = "1"   # leave the other checkout as it was
    process = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--model", args.model, "--device", "cpu",
                                "--port", str(port), "--bridge", "", "--data-dir", data_dir, "--log-level", "warning"],
                               cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"the service exited: {process.communicate()[0][-2000:]}")
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("the service never became ready")


def _act(http, session: str, seq: int | None = None):
    data = {"state": json.dumps(STATE)}
    if seq is not None:
        data["seq"] = str(seq)
    return http.post(f"/v1/sessions/{session}/act", data=data, files={"image": ("o.png", _png(2), "image/png")})


def _timed_act(http, session: str) -> tuple[float, object]:
    started = time.perf_counter()
    response = _act(http, session)
    return (time.perf_counter() - started) * 1000.0, response


def _victim_under_load(url: str, sessions: dict, args) -> tuple[list[float], list[float]]:
    import httpx

    stop = threading.Event()
    heavy_plan_ms: list[float] = []

    def heavy_client() -> None:
        with httpx.Client(base_url=url, timeout=900) as http:
            while not stop.is_set():
                response = _act(http, sessions["heavy"])
                if response.status_code == 200:
                    heavy_plan_ms.append(response.json()["plan_ms"])

    clients = [threading.Thread(target=heavy_client, daemon=True) for _ in range(args.heavy_clients)]
    for client in clients:
        client.start()
    latencies = []
    try:
        time.sleep(1.0)
        with httpx.Client(base_url=url, timeout=900) as http:
            for _ in range(args.victim_acts):
                elapsed, response = _timed_act(http, sessions["victim"])
                if response.status_code == 200:
                    latencies.append(elapsed)
    finally:
        stop.set()
        for client in clients:
            client.join(900)
    return latencies, heavy_plan_ms


def _shutdown_during_plan(process, url: str, session: str, data_dir: str) -> dict:
    import httpx

    answer: list = []
    before = httpx.get(f"{url}/v1/sessions/{session}").json()["steps"]
    acting = threading.Thread(target=lambda: answer.append(_act(httpx.Client(base_url=url, timeout=900), session)))
    acting.start()
    time.sleep(1.0)  # inside the plan
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
    shutdown_s = time.monotonic() - signalled
    acting.join(60)
    from .storage import Storage

    storage = Storage(Path(data_dir))
    try:
        after = len(storage.list_steps(session, limit=100000, offset=0))
    finally:
        storage.close()
    response = answer[0] if answer else None
    return {"shutdown_s": round(shutdown_s, 2), "exit_code": process.returncode,
            "act_status": getattr(response, "status_code", "no answer"),
            "act_content_type": response.headers.get("content-type", "") if response is not None else "",
            "steps_recorded_for_it": after - before}


def _png(seed: int, size: int = 64) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()
