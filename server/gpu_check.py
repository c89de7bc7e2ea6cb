"""`jepa-planner gpu-check` (`make gpu-check`): what a GPU machine must show, in one command.

With a CUDA device: the golden-fixture parity tests on CUDA (fp32 within 2e-4, fp64 within 1e-9),
the bf16 tolerance test on CUDA, `bench plan` on the released ViT-g architecture (`ac_vit_giant`,
random weights, bf16 as served) at 800 samples x 10 iterations, horizon 1 and 2, and `bench fleet`
at 1, 8 and 32 robots; then one JSON summary as the last line. Every step runs as a subprocess
with what is left of an 8-minute budget. Without CUDA it says so and exits 0 at once.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 480.0
PLAN_ARGS = ["--preset", "ac_vit_giant", "--samples", "800", "--iterations", "10", "--repeats", "1", "--bf16",
             "--no-baseline", "--device", "cuda"]
FLEET_ARGS = ["--preset", "demo", "--device", "cuda", "--samples", "128", "--iterations", "4", "--horizon", "1",
              "--rate-hz", "10", "--seconds", "5"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="total time for every step (default %(default)s)")
    parser.add_argument("--fleet-robots", default="1,8,32", help="robot counts for bench fleet (default %(default)s)")


def cuda_device() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


class Steps:
    """Runs each step as a subprocess within what is left of the budget; records what it showed."""

    def __init__(self, budget_s: float):
        self.deadline = time.monotonic() + budget_s
        self.results: dict[str, dict] = {}

    def run(self, name: str, command: list[str], env: dict[str, str] | None = None) -> dict:
        remaining = self.deadline - time.monotonic()
        if remaining < 5:
            result = {"ok": False, "skipped": "out of time"}
        else:
            started = time.monotonic()
            try:
                done = subprocess.run(command, cwd=REPO_ROOT, env={**os.environ, **(env or {})}, capture_output=True,
                                      text=True, timeout=remaining)
                lines = done.stdout.strip().splitlines()
                result = {"ok": done.returncode == 0, "returncode": done.returncode, "last_line": lines[-1] if lines else ""}
                if done.returncode != 0:
                    result["stderr_tail"] = done.stderr.strip().splitlines()[-5:]
            except subprocess.TimeoutExpired:
                result = {"ok": False, "skipped": "timed out"}
            result["seconds"] = round(time.monotonic() - started, 1)
        self.results[name] = result
        shown = result.get("last_line", result.get("skipped", ""))[:200]
        print(f"{name}: {'ok' if result['ok'] else 'FAILED'} ({result.get('seconds', 0)} s) {shown}", flush=True)
        return result


def json_tail(result: dict) -> dict | None:
    try:
        return json.loads(result.get("last_line", ""))
    except ValueError:
        return None


def run(args: argparse.Namespace) -> int:
    device = cuda_device()
    if device is None:
        print("gpu-check: no CUDA device here; nothing to check (GPU numbers stay unmeasured)")
        print(json.dumps({"cuda": False}))
        return 0
    started = time.monotonic()
    steps = Steps(args.budget_s)
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    on_cuda = {"JEPA_TEST_DEVICE": "cuda"}
    steps.run("parity_cuda", pytest + ["tests/test_world_model_parity.py"], on_cuda)
    steps.run("bf16_tolerance_cuda", pytest + ["tests/test_world_model.py", "-k", "bf16"], on_cuda)
    cli = [sys.executable, "-m", "server.cli"]
    plan = {}
    for horizon in (1, 2):
        result = steps.run(f"plan_vitg_h{horizon}", cli + ["bench", "plan", *PLAN_ARGS, "--horizon", str(horizon), "--json"])
        report = json_tail(result)
        plan[f"h{horizon}_s_per_action"] = report and report["s_per_action"]
        plan[f"h{horizon}_peak_fraction"] = report and report["peak_fraction"]
    fleet = {}
    for robots in [int(part) for part in args.fleet_robots.split(",") if part.strip()]:
        report = json_tail(steps.run(f"fleet_{robots}", cli + ["bench", "fleet", *FLEET_ARGS, "--robots", str(robots), "--json"]))
        fleet[robots] = report and {key: report[key] for key in (
            "plans_per_s", "plans_per_s_serial", "single_robot_plans_per_s", "p50_ms", "p99_ms", "p99_ms_serial",
            "fairness", "stale_plans")}
    summary = {
        "cuda": True, "device": device, "seconds": round(time.monotonic() - started, 1),
        "ok": all(result["ok"] for result in steps.results.values()),
        "parity_cuda": steps.results["parity_cuda"]["last_line"] if "last_line" in steps.results["parity_cuda"] else None,
        "bf16_tolerance_cuda": steps.results["bf16_tolerance_cuda"].get("last_line"),
        "plan_vitg_800x10_bf16": plan, "fleet_demo_128x4": fleet,
        "steps": {name: {key: value for key, value in result.items() if key != "last_line"}
                  for name, result in steps.results.items()},
    }
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1
