"""Plans slower than 5 s still move the arm: the real MuJoCo arm behind `ArmClient`, a real
`BridgeService` whose planning callback takes 5.5 s per observation (a slow engine in-process).

Before (issue 15): the heartbeat rode on observations, so a loop paced to a slow planner heard
nothing for 3 s, re-made its link every period and never applied an action.
"""
from __future__ import annotations

import pytest

from bridge_kit import StepPlanner
from robot_bridge.arm import SafetyLimits
from robot_bridge.client import ArmClient, Subscriber
from robot_bridge.service import BridgeService

PLAN_S = 5.5


class MovesBySeq(Subscriber):
    """Notes which plans (by seq) moved the arm; ends the run once `enough` plans arrived."""

    def __init__(self, enough: int):
        self.moved: set[int] = set()
        self.enough, self.client = enough, None

    def on_step(self, step):
        if step.command == "move":
            self.moved.add(step.action.seq)
        if self.client.stats().get("actions_received", 0) >= self.enough:
            self.client.request_stop()


@pytest.mark.parametrize("mode, rate_hz", [("blocking", 4.0), ("streaming", 0.25)])
def test_every_plan_of_a_slow_planner_moves_the_sim_arm(mode, rate_hz):
    """Streaming at 0.25 Hz (a 4 s period) is a demo paced to its planner; blocking is the paper's mode."""
    from robot_bridge.sim import SimArm, SimConfig

    planner = StepPlanner(step=0.02, delay_s=PLAN_S)
    arm = SimArm(SimConfig(image_height=32, image_width=32), seed=0)
    start = arm.observe().state
    moves = MovesBySeq(enough=2)
    try:   # the loop runs on this thread: MuJoCo renders on the thread that made the arm
        with BridgeService("tcp://127.0.0.1:*", planner, heartbeat_interval_s=0.5) as service, \
                ArmClient(arm, service.endpoint, "slow", rate_hz, SafetyLimits(), subscribers=[moves],
                          blocking=mode == "blocking", plan_deadline_s=30.0) as client:
            moves.client = client
            summary = client.run(duration_s=60.0)
            planned = service.stats()["actions_sent"]
        end = arm.observe().state
    finally:
        arm.close()
    stats = summary.stats
    print(f"\n{mode} at {rate_hz} Hz, {PLAN_S} s plans: {stats.get('actions_received')} actions received, "
          f"{len(moves.moved)} executed, {stats.get('reconnects', 0)} reconnects, rtt {stats.get('rtt_ms', 0):.1f} ms")
    received = summary.stats["actions_received"]
    assert received >= 2 and summary.stats.get("reconnects", 0) == 0
    assert len(moves.moved) == received, "every plan that reached the arm moved it"
    assert planned >= received and end[0] - start[0] > 0.015
