"""Chaos: kill -9 the service under a closed loop with the MuJoCo arm, then restart it.

Real processes and sockets: `jepa-planner serve` (tiny model, CPU) as a subprocess, two
simulated arms (4 Hz and 1 Hz) in this process through `ArmClient`. When the service dies, each
arm holds within its action timeout (0.5 s) of the last action it got and moves no more; when
the service comes back on the same data dir, the goal and both sessions are still there and
both arms move again (they re-make their links when heartbeat echoes stop).

Print the figures: .venv/bin/pytest -s -q tests/test_chaos_arm.py
"""
from __future__ import annotations

import threading
import time

import httpx

from bridge_kit import wait_until
from robot_bridge.arm import SafetyLimits
from robot_bridge.client import ArmClient
from test_api import FAST_PLANNER, png_bytes
from test_server_cli import free_port, serve, wait_for

RATES_HZ = {"chaos-4hz": 4.0, "chaos-1hz": 1.0}
MARGIN_S = 0.12   # wake-up and scheduling on a loaded, shared machine


class SimArmLoop(threading.Thread):
    """A MuJoCo arm and its `ArmClient`, made and run on their own thread (MuJoCo renders on the
    thread that made the arm), noting when each command came (monotonic time)."""

    def __init__(self, endpoint: str, robot_id: str, rate_hz: float):
        super().__init__(daemon=True)
        self.endpoint, self.robot_id, self.rate_hz = endpoint, robot_id, rate_hz
        self.calls: list[tuple[str, float]] = []
        self.lock = threading.Lock()
        self.client: ArmClient | None = None
        self.summary = None
        self.ready = threading.Event()
        self.start()

    def run(self) -> None:
        from robot_bridge.sim import SimArm, SimConfig

        loop = self

        class RecordingSimArm(SimArm):
            def move_to(self, target):
                with loop.lock:
                    loop.calls.append(("move", time.monotonic()))
                super().move_to(target)

            def hold(self):
                with loop.lock:
                    loop.calls.append(("hold", time.monotonic()))
                super().hold()

        arm = RecordingSimArm(SimConfig(image_height=32, image_width=32), seed=0)
        try:
            with ArmClient(arm, self.endpoint, self.robot_id, self.rate_hz, SafetyLimits()) as self.client:
                self.ready.set()
                self.summary = self.client.run()
        finally:
            self.ready.set()
            arm.close()

    def received(self) -> int:
        return self.client.stats().get("actions_received", 0) if self.client else 0

    def moves_after(self, moment: float) -> int:
        with self.lock:
            return sum(kind == "move" and t > moment for kind, t in self.calls)

    def finish(self):
        self.ready.wait(30)
        self.client.request_stop()
        self.join(30)
        assert not self.is_alive(), f"{self.robot_id}: the arm loop did not stop"
        return self.summary


def test_arms_hold_when_the_service_is_killed_and_resume_after_it_restarts(tmp_path):
    port, bridge_port = free_port(), free_port()
    args = ("--model", "tiny", "--device", "cpu", "--port", str(port), "--data-dir", str(tmp_path),
            "--bridge", f"tcp://127.0.0.1:{bridge_port}")
    url = f"http://127.0.0.1:{port}"
    process = serve(*args)
    arms: dict[str, SimArmLoop] = {}
    try:
        wait_for(f"{url}/readyz", 200, timeout=120)
        goal = httpx.post(f"{url}/v1/goals", files={"image": ("g.png", png_bytes(3), "image/png")}, timeout=60).json()
        sessions = {robot: httpx.post(f"{url}/v1/sessions", json={"robot_id": robot, "goal_id": goal["id"],
                                                                  "planner": FAST_PLANNER}, timeout=60).json()
                    for robot in RATES_HZ}
        arms = {robot: SimArmLoop(f"tcp://127.0.0.1:{bridge_port}", robot, rate) for robot, rate in RATES_HZ.items()}
        for arm in arms.values():
            wait_until(lambda: arm.received() >= 2, timeout=120)

        killed_at = time.monotonic()
        process.kill()                                       # kill -9, mid closed loop
        process.wait(timeout=30)
        time.sleep(1.0 + 0.5 + MARGIN_S)                     # a 1 Hz period, then the deadline
        after_kill = {}
        for robot, arm in arms.items():
            with arm.lock:
                holds = [t for kind, t in arm.calls if kind == "hold" and t > killed_at]
                late_moves = [t for kind, t in arm.calls if kind == "move" and t > killed_at + 0.5 + MARGIN_S]
            after_kill[robot] = (holds[0] - killed_at, arm.client.hold_latencies_s[-1], late_moves)

        restarted_at = time.monotonic()
        process = serve(*args)                               # same data dir, same ports
        wait_for(f"{url}/readyz", 200, timeout=120)
        goals = httpx.get(f"{url}/v1/goals", timeout=30).json()["items"]
        kept = {robot: httpx.get(f"{url}/v1/sessions/{session['id']}", timeout=30).json()
                for robot, session in sessions.items()}
        for arm in arms.values():
            wait_until(lambda: arm.moves_after(restarted_at) >= 2, timeout=120)
        resumed_after = {robot: time.monotonic() - restarted_at for robot in arms}
    finally:
        summaries = {robot: arm.finish() for robot, arm in arms.items()}
        process.terminate()
        process.communicate(timeout=60)
    for robot, (kill_to_hold, action_to_hold, late_moves) in after_kill.items():
        print(f"\n{robot}: first hold {kill_to_hold:.3f} s after kill -9, {action_to_hold:.3f} s after its last "
              f"action; moving again {resumed_after[robot]:.1f} s after the restart began; "
              f"reconnects {summaries[robot].stats.get('reconnects', 0)}")
        assert action_to_hold <= 0.5 + MARGIN_S and kill_to_hold <= 0.5 + MARGIN_S
        assert late_moves == [], f"{robot} moved after its last action went stale"
        assert summaries[robot].stats.get("reconnects", 0) >= 1
    assert goal["id"] in {item["id"] for item in goals}
    assert all(kept[robot]["status"] == "active" and kept[robot]["robot_id"] == robot for robot in RATES_HZ)
    assert all(kept[robot]["steps"] >= 2 for robot in RATES_HZ)   # the steps before the kill are kept too
