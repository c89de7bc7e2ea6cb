"""`jepa-planner bench fleet`: N simulated robots streaming to a real service over the real bridge.

A client of the service, like an arm (torch-free): it starts `jepa-planner serve` as a subprocess
on free ports with a temporary data directory, uploads one goal image and opens one session per
robot over HTTP, then runs N `ArmClient`s (real ZeroMQ DEALER sockets) whose arms send synthetic
frames at `--rate-hz` and apply the plans they get back. It measures, in one invocation:

- the fleet with the service's default cross-robot batching (`JEPA_PLAN_BATCH_MAX` unset),
- the same fleet with `JEPA_PLAN_BATCH_MAX=1` (one session at a time: the baseline),
- one robot alone, streaming at `--single-rate-hz` (default 100) so that its plans come back to back:
  `single_robot_plans_per_s` is the service's single-robot peak.

A plan counts once, when its action first reaches the robot; its latency runs from the
observation's timestamp to that moment. Only plans arriving after every robot got its first one
(the warm-up: model kernels, each session's planner) and before the end are counted. A plan is
stale when its observation was older than `--stale-ms` (default: the arm client's action timeout)
on arrival, or when the arm discarded it as older than a command it already had.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .arm import Arm, Observation
from .client import ArmClient, StepRecord, Subscriber
from .replay import create_session
from .service_process import ServiceError, ServiceProcess

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
BATCH_ENV = "JEPA_PLAN_BATCH_MAX"  # the service's cap on sessions per planning round; 1 = one at a time
START_POSE = (0.5, 0.0, 0.3, 3.14, 0.0, 0.0, 0.0)
READY_TIMEOUT_S = 600.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--robots", type=int, default=4, help="simulated robots (default %(default)s)")
    parser.add_argument("--preset", default="demo", help="the service's model: preset or weights file (default %(default)s)")
    parser.add_argument("--device", default=None, help="the service's device (default: its own, auto)")
    parser.add_argument("--samples", type=int, default=16, help="planner samples per session (default %(default)s)")
    parser.add_argument("--iterations", type=int, default=1, help="planner iterations (default %(default)s)")
    parser.add_argument("--horizon", type=int, default=1, help="planner horizon (default %(default)s)")
    parser.add_argument("--rate-hz", type=float, default=10.0, help="each robot's observation rate (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run (default %(default)s)")
    parser.add_argument("--single-rate-hz", type=float, default=100.0,
                        help="the lone robot's observation rate, fast enough to keep the planner busy (default %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="the service's CPU threads for torch (OMP_NUM_THREADS)")
    parser.add_argument("--image-size", type=int, default=64, help="camera frame side in pixels (default %(default)s)")
    parser.add_argument("--stale-ms", type=float, default=500.0,
                        help="a plan whose observation is older than this on arrival is stale (default %(default)s)")
    parser.add_argument("--replicas", type=int, default=0,
                        help="plan on K model replicas on a local Ray Serve (the service's --replicas; needs the [ray] "
                             "extra); 0: in the service process (default)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")


# -- the simulated robots -----------------------------------------------------------------------

class SyntheticArm(Arm):
    """A point that jumps to each target, seen as a bright square moving over a fixed noise texture."""

    def __init__(self, seed: int, size: int, hz: float):
        self._size, self._hz = size, hz
        self._background = (np.random.default_rng(seed).random((size, size, 3)) * 96).astype(np.uint8)
        self.state = np.array(START_POSE, dtype=np.float64)
        self._lock = threading.Lock()

    @property
    def camera_size(self) -> tuple[int, int]:
        return self._size, self._size

    @property
    def control_hz(self) -> float:
        return self._hz

    def observe(self) -> Observation:
        with self._lock:
            state = self.state.copy()
        image = self._background.copy()
        side = max(2, self._size // 8)
        row = int(np.clip((state[0] - 0.25) / 0.55, 0, 1) * (self._size - side))
        col = int(np.clip((state[1] + 0.45) / 0.9, 0, 1) * (self._size - side))
        image[row:row + side, col:col + side] = (255, 200, 50)
        return Observation(image=image, state=state, timestamp=time.time())

    def move_to(self, target: np.ndarray) -> None:
        with self._lock:
            self.state = np.asarray(target, dtype=np.float64).copy()

    def hold(self) -> None:
        pass


class PlanLog(Subscriber):
    """Every distinct plan a robot received: (arrival wall time, latency s) by its observation seq."""

    def __init__(self) -> None:
        self.sent_at: dict[int, float] = {}
        self.plans: list[tuple[float, float]] = []
        self._seen: set[int] = set()
        self._lock = threading.Lock()

    def on_step(self, step: StepRecord) -> None:
        now = time.time()
        if step.seq is not None:
            self.sent_at[step.seq] = step.observation.timestamp
        action = step.action
        if action is None or action.seq in self._seen or action.seq not in self.sent_at or step.action_age_s is None:
            return
        self._seen.add(action.seq)
        arrived = now - step.action_age_s
        with self._lock:
            self.plans.append((arrived, arrived - self.sent_at[action.seq]))

    def between(self, start: float, end: float) -> list[float]:
        """Latencies (s) of the plans that arrived in [start, end)."""
        with self._lock:
            return [latency for arrived, latency in self.plans if start <= arrived < end]


@dataclass
class FleetRun:
    robots: int
    seconds: float
    plans_per_robot: list[int]
    latencies_ms: list[float]
    discarded: int  # commands the arms dropped as older than one they already had
    holds: int
    stale_ms: float
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def plans(self) -> int:
        return sum(self.plans_per_robot)

    @property
    def plans_per_s(self) -> float:
        return self.plans / self.seconds

    @property
    def stale_plans(self) -> int:
        return sum(latency > self.stale_ms for latency in self.latencies_ms) + self.discarded

    def percentile_ms(self, q: float) -> float | None:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else None


def run_fleet(endpoint: str, robot_ids: list[str], rate_hz: float, seconds: float, image_size: int,
              stale_ms: float, warmup_timeout_s: float = 300.0) -> FleetRun:
    """Stream from every robot at once; measure `seconds` after each robot has had its first plan."""
    logs = [PlanLog() for _ in robot_ids]
    clients = [ArmClient(SyntheticArm(seed, image_size, rate_hz), endpoint, robot_id, rate_hz=rate_hz,
                         image_format="raw", subscribers=[log])
               for seed, (robot_id, log) in enumerate(zip(robot_ids, logs))]
    threads = [threading.Thread(target=client.run, daemon=True) for client in clients]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + warmup_timeout_s
        while not all(log.plans for log in logs):
            if time.monotonic() > deadline or not all(thread.is_alive() for thread in threads):
                waiting = [robot for robot, log in zip(robot_ids, logs) if not log.plans]
                raise RuntimeError(f"no plan within {warmup_timeout_s:g} s for {', '.join(waiting)}")
            time.sleep(0.02)
        start = time.time()
        time.sleep(seconds)
        end = time.time()
    finally:
        for client in clients:
            client.request_stop()
        for thread in threads:
            thread.join(10.0)
        stats = [client.stats() for client in clients]
        for client in clients:
            client.close()
    per_robot = [log.between(start, end) for log in logs]
    errors: dict[str, int] = {}
    for counts in stats:
        for name, value in counts.items():
            if name.startswith("error."):
                errors[name] = errors.get(name, 0) + int(value)
    return FleetRun(
        robots=len(robot_ids), seconds=end - start, plans_per_robot=[len(latencies) for latencies in per_robot],
        latencies_ms=[1000.0 * latency for latencies in per_robot for latency in latencies],
        discarded=sum(int(counts.get("commands_out_of_order", 0)) for counts in stats),
        holds=sum(int(counts.get("holds_received", 0)) for counts in stats), stale_ms=stale_ms, errors=errors)


# -- the service --------------------------------------------------------------------------------

REPLICAS_ENV = "JEPA_REPLICAS"  # the service's planning replicas on Ray Serve; 0 = plan in the service process


def service_env(batch_max: int | None, replicas: int = 0) -> dict[str, str]:
    """The service's environment: this one, with the batch cap set (or its default when None) and its replicas."""
    env = {key: value for key, value in os.environ.items() if key not in (BATCH_ENV, REPLICAS_ENV)}
    if batch_max is not None:
        env[BATCH_ENV] = str(batch_max)
    if replicas:
        env[REPLICAS_ENV] = str(replicas)
    return env


def goal_frame(seed: int, size: int) -> np.ndarray:
    """Where robot `seed`'s goal is: its arm's frame with the square somewhere else."""
    arm = SyntheticArm(seed, size, 1.0)
    arm.move_to(np.array([0.4 + 0.02 * (seed % 10), 0.1 - 0.02 * (seed % 10), *START_POSE[2:]]))
    return arm.observe().image


def measure(args: argparse.Namespace, batch_max: int | None, data_dir: Path, with_single: bool) -> dict[str, FleetRun]:
    """One service: (optionally) one robot alone, then the whole fleet."""
    planner = {"samples": args.samples, "iterations": args.iterations, "horizon": args.horizon,
               "topk": min(10, args.samples)}
    robot_ids = [f"fleet-{index}" for index in range(args.robots)]
    runs = {}
    with ServiceProcess(args.preset, device=args.device, threads=args.threads, env=service_env(batch_max, args.replicas),
                        data_dir=data_dir, load_timeout_s=READY_TIMEOUT_S) as service:
        for seed, robot_id in enumerate(robot_ids):
            create_session(service.url, None, robot_id, goal_frame(seed, args.image_size), planner)
        common = dict(rate_hz=args.rate_hz, seconds=args.seconds, image_size=args.image_size, stale_ms=args.stale_ms)
        if with_single:
            runs["single"] = run_fleet(service.bridge_endpoint, robot_ids[:1], **{**common, "rate_hz": args.single_rate_hz})
        runs["fleet"] = run_fleet(service.bridge_endpoint, robot_ids, **common)
    return runs


def summary(args: argparse.Namespace, batched: FleetRun, serial: FleetRun, single: FleetRun) -> dict:
    def fairness(run: FleetRun) -> float | None:
        fewest = min(run.plans_per_robot)
        return max(run.plans_per_robot) / fewest if fewest else None

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    return {
        "robots": args.robots, "preset": args.preset, "samples": args.samples, "iterations": args.iterations,
        "horizon": args.horizon, "replicas": args.replicas, "rate_hz": args.rate_hz, "single_rate_hz": args.single_rate_hz,
        "seconds": args.seconds, "threads": args.threads, "image_size": args.image_size, "stale_ms": args.stale_ms,
        "plans": batched.plans, "plans_serial": serial.plans,
        "plans_per_s": rounded(batched.plans_per_s), "plans_per_s_serial": rounded(serial.plans_per_s),
        "single_robot_plans_per_s": rounded(single.plans_per_s),
        "p50_ms": rounded(batched.percentile_ms(50)), "p99_ms": rounded(batched.percentile_ms(99)),
        "p50_ms_serial": rounded(serial.percentile_ms(50)), "p99_ms_serial": rounded(serial.percentile_ms(99)),
        "fairness": rounded(fairness(batched)), "fairness_serial": rounded(fairness(serial)),
        "plans_most": max(batched.plans_per_robot), "plans_fewest": min(batched.plans_per_robot),
        "plans_per_robot": batched.plans_per_robot, "plans_per_robot_serial": serial.plans_per_robot,
        "stale_plans": batched.stale_plans, "stale_plans_serial": serial.stale_plans,
        "holds": batched.holds, "holds_serial": serial.holds,
        "errors": batched.errors, "errors_serial": serial.errors,
    }


def run(args: argparse.Namespace) -> int:
    if args.robots < 1 or args.replicas < 0 or args.seconds <= 0 or args.rate_hz <= 0 or args.single_rate_hz <= 0 or args.image_size < 8:
        print("bench fleet: --robots must be >= 1, --replicas >= 0, --seconds, --rate-hz and --single-rate-hz > 0, "
              "--image-size >= 8")
        return EXIT_USAGE
    try:
        with tempfile.TemporaryDirectory(prefix="jepa-fleet-") as scratch:
            batched_dir, serial_dir = Path(scratch, "batched"), Path(scratch, "serial")
            batched_dir.mkdir()
            serial_dir.mkdir()
            batched = measure(args, None, batched_dir, with_single=True)
            serial = measure(args, 1, serial_dir, with_single=False)
    except (RuntimeError, ServiceError) as error:
        print(f"bench fleet: {error}")
        return EXIT_FAILURE
    result = summary(args, batched["fleet"], serial["fleet"], batched["single"])

    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.0f} ms"

    where = f" on {args.replicas} Ray Serve replica(s)" if args.replicas else ""
    print(f"service model {args.preset}{where}: {args.samples} samples x {args.iterations} iterations, horizon {args.horizon}; "
          f"{args.robots} robots at {args.rate_hz:g} Hz, {args.image_size}px frames, {args.seconds:g} s measured")
    print(f"{f'one robot alone at {args.single_rate_hz:g} Hz:':38s} {result['single_robot_plans_per_s']:.1f} plans/s")
    for label, key in (("batched (service default):", ""), (f"one at a time ({BATCH_ENV}=1):", "_serial")):
        print(f"{label:38s} {result['plans_per_s' + key]:.1f} plans/s, p50 {ms(result['p50_ms' + key])}, "
              f"p99 {ms(result['p99_ms' + key])}, plans per robot {result['plans_per_robot' + key]}, "
              f"stale {result['stale_plans' + key]}")
    if args.json:
        print(json.dumps(result))
    return EXIT_OK
