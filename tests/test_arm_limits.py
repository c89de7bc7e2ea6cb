"""An arm announces its SafetyLimits in hello and the session plans within them (issue 11):
the executed move (after the arm's clamp) equals the planned delta."""
from __future__ import annotations

import math
import numpy as np
import pytest
import torch

from bridge_kit import ClientThread, PointArm, wait_until
from planner.config import PlannerConfig
from planner.controller import ArmLimits, RecedingHorizonController
from robot_bridge.arm import SafetyLimits
from robot_bridge.client import ArmClient, Subscriber
from robot_bridge.protocol import ErrorCode, HelloMessage, ProtocolError, decode, encode
from server.bridge_link import planner_limits_from_hello
from server.local_server import LocalServer
from server.serve_command import build_service
from server.settings import ServerSettings
from test_api import FAST_PLANNER, png_bytes
from test_planner_sanity import BlobWorld

ARM = SafetyLimits(workspace_low=(0.4, -0.1, 0.2), workspace_high=(0.6, 0.1, 0.4), max_translation_m=0.02,
                   max_rotation_rad=0.1)


def hello(**extra) -> HelloMessage:
    return HelloMessage(robot_id="arm-1", camera_height=32, camera_width=32, control_hz=4.0, **extra)


def test_hello_carries_the_limits_and_round_trips_them():
    message = decode(encode(hello(limits=ARM.to_hello())))
    assert SafetyLimits.from_hello(message.limits) == ARM


def test_a_hello_without_limits_has_no_limits_key_and_decodes_to_none():
    import msgpack

    assert "limits" not in msgpack.unpackb(encode(hello()))
    assert decode(encode(hello())).limits is None


@pytest.mark.parametrize("change, problem", [
    ({"workspace_low": [0.7, -0.1, 0.2]}, "below"),
    ({"workspace_high": [0.6, 0.1]}, "three finite numbers"),
    ({"workspace_low": [0.4, float("nan"), 0.2]}, "three finite numbers"),
    ({"workspace_high": [0.6, 0.1, 40.0]}, "from the base"),
    ({"max_translation_m": 0.0}, "positive"),
    ({"max_translation_m": 5.0}, "outside"),
    ({"max_rotation_rad": True}, "number"),
    ({"max_rotation_rad": None}, "number"),
])
def test_bad_limits_make_the_hello_an_invalid_field_error(change, problem):
    limits = {**ARM.to_hello(), **change}
    with pytest.raises(ProtocolError) as raised:
        decode(encode(hello(limits=limits)))
    assert raised.value.code is ErrorCode.INVALID_FIELD and problem in raised.value.message


def test_limits_that_are_not_a_map_are_refused():
    with pytest.raises(ProtocolError, match="limits"):
        decode(encode(hello(limits=[1, 2, 3])))


def planner_from(world, goal_xyz, **config):
    goal = world.render(torch.tensor(goal_xyz))
    return RecedingHorizonController(world, PlannerConfig(horizon=1, samples=64, topk=8, iterations=3, **config), goal)


def test_the_controller_plans_inside_the_arm_box_and_step_so_the_arm_clamp_changes_nothing():
    world = BlobWorld()
    limits = planner_limits_from_hello(hello(limits=ARM.to_hello()))
    assert limits == ArmLimits((0.4, -0.1, 0.2), (0.6, 0.1, 0.4), 0.02)
    controller = planner_from(world, (0.62, 0.08, 0.45))   # goal outside the arm's box, 15 cm away
    state = torch.tensor([0.5, 0.0, 0.3, math.pi, 0.0, 0.0, 0.0])   # gripper down: inside the default orientation range
    for _ in range(12):
        step = controller.step(world.render(state[:3]), state, arm_limits=limits)
        moved = float(step.action[:3].norm())
        assert moved <= 0.02 + 1e-6
        target = step.target_pose.double().numpy()
        assert (target[:3] >= np.array(ARM.workspace_low) - 1e-6).all()
        assert (target[:3] <= np.array(ARM.workspace_high) + 1e-6).all()
        executed = ARM.clamp(target, state.double().numpy())
        np.testing.assert_allclose(executed, target, atol=1e-6)   # the arm moves exactly as planned
        state = step.target_pose
    assert float(state[0]) > 0.58 and float(state[2]) > 0.38          # went to the box's corner nearest the goal


def test_without_arm_limits_the_same_plan_would_be_clamped_by_the_arm():
    """The failure the announcement fixes: the planner's default maxnorm (7.5 cm per axis) exceeds the arm's step."""
    world = BlobWorld()
    controller = planner_from(world, (0.62, 0.08, 0.45))
    state = torch.tensor([0.5, 0.0, 0.3, math.pi, 0.0, 0.0, 0.0])   # gripper down: inside the default orientation range
    target = controller.step(world.render(state[:3]), state).target_pose.double().numpy()
    executed = ARM.clamp(target, state.double().numpy())
    assert np.linalg.norm(executed[:3] - target[:3]) > 0.005


def test_an_arm_box_outside_the_planner_box_is_a_clear_error():
    world = BlobWorld()
    controller = planner_from(world, (0.5, 0.0, 0.3), workspace_min=(0.2, -0.6, 0.02), workspace_max=(0.9, 0.6, 0.9))
    far = ArmLimits((1.0, 1.0, 1.0), (1.2, 1.2, 1.2), 0.02)
    state = torch.tensor([0.5, 0.0, 0.3, math.pi, 0.0, 0.0, 0.0])   # gripper down: inside the default orientation range
    with pytest.raises(ValueError, match="do not overlap"):
        controller.step(world.render(state[:3]), state, arm_limits=far)


class Clamps(Subscriber):
    def __init__(self):
        self.corrections, self.steps = [], []

    def on_step(self, step):
        if step.action is not None:
            self.corrections.append(float(np.abs(step.target - step.action.target).max()))
            self.steps.append(float(np.linalg.norm(step.action.delta[:3])))


def test_over_the_real_bridge_the_service_plans_within_the_announced_limits(tmp_path):
    """A tiny model on a real service: an arm announcing a 1 cm step gets actions of at most 1 cm that
    its clamp leaves unchanged (the arm holds still, so planned and executed states coincide)."""
    import httpx

    settings = ServerSettings(model="tiny", device="cpu", bridge="tcp://127.0.0.1:*",
                              planner={**FAST_PLANNER, "maxnorm": 0.075}, data_dir=tmp_path)
    limits = SafetyLimits(workspace_low=(0.3, -0.2, 0.1), workspace_high=(0.7, 0.2, 0.5), max_translation_m=0.01)
    with LocalServer(build_service(settings), with_bridge=True) as server:
        server.wait_ready()
        http = httpx.Client(base_url=server.url, timeout=60)
        goal = http.post("/v1/goals", files={"image": ("g.png", png_bytes(3), "image/png")}).json()
        http.post("/v1/sessions", json={"robot_id": "limited", "goal_id": goal["id"]}).raise_for_status()

        class StillArm(PointArm):       # never moves: every plan starts from the state the arm clamps from
            def move_to(self, target):
                with self._lock:
                    self.calls.append(("move", 0.0, np.asarray(target).copy()))

        clamps = Clamps()
        client = ArmClient(StillArm(hz=10.0), server.bridge.endpoint, "limited", limits=limits, subscribers=[clamps])
        runner = ClientThread(client)
        try:
            wait_until(lambda: len(clamps.corrections) >= 5, timeout=60)
        finally:
            runner.finish()
            client.close()
    assert max(clamps.steps) <= 0.01 + 1e-6
    assert max(clamps.steps) > 0.005                       # the planner did want to move (7.5 cm maxnorm)
    assert max(clamps.corrections) < 1e-6
