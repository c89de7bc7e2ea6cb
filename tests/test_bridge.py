"""Bridge service and arm client over real ZeroMQ sockets on loopback."""
from __future__ import annotations

import time

import numpy as np
import pytest
import zmq

from bridge_kit import START_POSE, ClientThread, PointArm, RawPeer, StepPlanner, hello, observation, wait_until
from robot_bridge.arm import SafetyLimits
from robot_bridge.client import ArmClient, BridgeConnection, Subscriber
from robot_bridge.protocol import (
    ActionMessage,
    ErrorCode,
    ErrorMessage,
    HeartbeatMessage,
    HoldMessage,
    ImagePayload,
    ObservationMessage,
    WelcomeMessage,
)
from robot_bridge.security import InsecureEndpoint
from robot_bridge.service import BridgeService

LOOPBACK = "tcp://127.0.0.1:*"
LIMITS = SafetyLimits(max_translation_m=0.05)


class StepLog(Subscriber):
    def __init__(self):
        self.steps = []

    def on_step(self, step):
        self.steps.append(step)


def test_arm_and_service_exchange_observations_and_actions():
    planner = StepPlanner(step=0.01)
    arm, log = PointArm(), StepLog()
    with BridgeService(LOOPBACK, planner) as service, \
            ArmClient(arm, service.endpoint, "arm-1", 50.0, LIMITS, subscribers=[log]) as client:
        summary = client.run(max_steps=25)
        stats = service.stats()
    assert summary.reason == "max_steps" and summary.steps == 25
    assert stats["hellos"] == 1 and stats["actions_sent"] >= 10
    seqs = [seq for _, seq, _ in planner.seen]
    assert seqs == sorted(set(seqs)), "planned observations must be strictly increasing"
    assert {(robot, shape) for robot, _, shape in planner.seen} == {("arm-1", (32, 32, 3))}
    moves = [step for step in log.steps if step.command == "move"]
    assert len(moves) >= 10
    for step in moves:   # each applied target is the clamped target of an action answering a sent observation
        np.testing.assert_allclose(step.target, LIMITS.clamp(step.action.target, step.observation.state))
        assert step.action.seq <= step.seq
    assert arm.state[0] > START_POSE[0] + 0.05


def test_sim_arm_follows_actions_through_the_bridge():
    from robot_bridge.sim import SimArm, SimConfig

    arm = SimArm(SimConfig(image_height=48, image_width=48), seed=0)
    start = arm.observe().state
    planner = StepPlanner(step=0.02)

    class StopWhenAdvanced(Subscriber):   # 12 periods used to be the budget; on a loaded machine plans lag
        def on_step(self, step):
            if step.observation.state[0] - start[0] > 0.06 and client.stats().get("moves", 0) >= 6:
                client.request_stop()

    try:
        with BridgeService(LOOPBACK, planner) as service, \
                ArmClient(arm, service.endpoint, "sim0", 20.0, LIMITS, subscribers=[StopWhenAdvanced()]) as client:
            summary = client.run(duration_s=20.0)
        end = arm.observe().state
    finally:
        arm.close()
    assert summary.stats["moves"] >= 6
    assert {shape for _, _, shape in planner.seen} == {(48, 48, 3)}
    assert end[0] - start[0] > 0.06, f"the simulated arm did not advance along +x: {start[:3]} -> {end[:3]}"
    assert np.abs(end[1:3] - start[1:3]).max() < 0.02


def test_arm_holds_when_the_service_goes_silent():
    planner = StepPlanner()
    arm, log = PointArm(), StepLog()
    timeout = 0.2
    with BridgeService(LOOPBACK, planner) as service, \
            ArmClient(arm, service.endpoint, "arm-1", 50.0, LIMITS, action_timeout=timeout, subscribers=[log]) as client:
        runner = ClientThread(client)
        wait_until(lambda: len(arm.moves()) >= 5)
        planner.gate.clear()                                    # the service stops answering
        silent_since = len(log.steps)
        wait_until(lambda: sum(s.command == "hold" for s in log.steps[silent_since:]) >= 5)
        planner.gate.set()
        runner.finish()
    after = log.steps[silent_since:]
    first_hold = next(i for i, step in enumerate(after) if step.command == "hold")
    assert all(step.command == "hold" for step in after[first_hold:first_hold + 5])
    reaction = after[first_hold].action_age_s
    print(f"\nhold reaction: {reaction * 1000:.0f} ms after the last action (timeout {timeout * 1000:.0f} ms, "
          f"control period {1000 / 50:.0f} ms)")
    assert reaction > timeout, "the arm must keep following a fresh action until the timeout"


def test_stop_holds_at_once_and_ends_the_loop():
    planner = StepPlanner()
    arm = PointArm()
    with BridgeService(LOOPBACK, planner) as service, \
            ArmClient(arm, service.endpoint, "arm-1", 50.0, LIMITS) as client:
        runner = ClientThread(client)
        wait_until(lambda: len(arm.moves()) >= 5)
        sent_at = time.monotonic()
        service.send_stop("arm-1", "operator pressed stop")
        runner.thread.join(5.0)
        summary = runner.finish()
    assert summary.reason == "stop" and summary.stats["stops"] == 1
    after = [(kind, t) for kind, t, _ in arm.calls if t >= sent_at]
    stop_hold = next(i for i, (kind, _) in enumerate(after) if kind == "hold")
    assert all(kind == "hold" for kind, _ in after[stop_hold:])
    print(f"\nstop reaction: {(after[stop_hold][1] - sent_at) * 1000:.1f} ms from send_stop to Arm.hold")


def test_service_plans_only_the_newest_observation_per_robot():
    planner = StepPlanner(delay_s=0.06)   # slower than the 50 Hz stream
    with BridgeService(LOOPBACK, planner) as service, \
            ArmClient(PointArm(), service.endpoint, "arm-1", 50.0, LIMITS) as client:
        client.run(max_steps=30)
        wait_until(lambda: service.stats()["observations_planned"] + service.stats()["observations_dropped_stale"]
                   >= service.stats()["observations_received"] - 1)
        stats = service.stats()
    seqs = [seq for _, seq, _ in planner.seen]
    assert seqs == sorted(set(seqs))
    assert stats["observations_dropped_stale"] > 0
    assert stats["observations_received"] - stats["observations_planned"] - stats["observations_dropped_stale"] in (0, 1)


def test_two_robots_are_served_independently():
    planner = StepPlanner()
    arms = {"left": PointArm(), "right": PointArm()}
    with BridgeService(LOOPBACK, planner) as service:
        clients = {name: ArmClient(arm, service.endpoint, name, 50.0, LIMITS) for name, arm in arms.items()}
        runners = [ClientThread(client, max_steps=15) for client in clients.values()]
        for runner in runners:
            runner.thread.join(10)
        for client in clients.values():
            client.close()
        assert service.stats()["hellos"] == 2
    assert {robot for robot, _, _ in planner.seen} == {"left", "right"}
    assert all(len(arm.moves()) >= 5 for arm in arms.values())


@pytest.fixture
def service_with_raw_peer():
    planner = StepPlanner()
    with BridgeService(LOOPBACK, planner) as service:
        peer = RawPeer(service.endpoint, routing_id=b"raw-1")
        yield service, peer, planner
        peer.close()


def test_protocol_rules_are_enforced_with_error_replies(service_with_raw_peer):
    service, peer, _ = service_with_raw_peer

    def reply_to(message):
        peer.send(message)
        return peer.receive_message()

    assert reply_to(observation(0)).code == ErrorCode.HELLO_REQUIRED.value
    welcome = reply_to(hello("raw-1"))
    assert isinstance(welcome, WelcomeMessage) and welcome.robot_id == "raw-1"
    with RawPeer(service.endpoint) as other:   # a second live connection claiming raw-1
        other.send(hello("raw-1"))
        refused = other.receive_message()
    assert refused.code == ErrorCode.ROBOT_ID_MISMATCH.value and "in use" in refused.message
    notice = peer.receive_message()                                 # the holder is told, and keeps the robot
    assert notice.code == ErrorCode.ROBOT_ID_MISMATCH.value and "keeps it" in notice.message
    action = reply_to(observation(5))
    assert isinstance(action, ActionMessage) and action.seq == 5 and action.planning_ms >= 0
    stale = reply_to(observation(5))
    assert stale.code == ErrorCode.OUT_OF_ORDER.value and stale.seq == 5
    assert reply_to(observation(3)).code == ErrorCode.OUT_OF_ORDER.value
    wrong_size = reply_to(observation(6, size=16))
    assert wrong_size.code == ErrorCode.BAD_IMAGE.value and wrong_size.seq == 6
    header = ImagePayload.from_array(np.zeros((32, 32, 3), np.uint8), "jpeg").data
    truncated = ImagePayload("jpeg", header[: header.index(b"\xff\xda") + 2], 32, 32)
    corrupt = reply_to(ObservationMessage(7, 0.0, truncated, np.array(START_POSE)))
    assert corrupt.code == ErrorCode.BAD_IMAGE.value and corrupt.seq == 7
    echo = reply_to(HeartbeatMessage(42.5))
    assert isinstance(echo, HeartbeatMessage) and echo.timestamp == 42.5
    assert reply_to(ActionMessage(np.zeros(7), np.zeros(7), 0.0)).code == ErrorCode.UNEXPECTED_TYPE.value
    assert isinstance(reply_to(observation(8)), ActionMessage)   # still serving after all of that
    assert service.error_counts()[ErrorCode.OUT_OF_ORDER.value] == 2


def test_planner_replies_and_failures_reach_the_arm():
    replies = iter([HoldMessage("goal reached"), ErrorMessage(ErrorCode.NO_SESSION.value, "no session for raw-1"),
                    RuntimeError("model exploded"), "not a message",
                    ActionMessage(np.zeros(7), np.full(7, np.nan), 0.0)])

    def plan(robot_id, obs):
        reply = next(replies)
        if isinstance(reply, Exception):
            raise reply
        return reply

    with BridgeService(LOOPBACK, plan) as service:
        peer = RawPeer(service.endpoint, routing_id=b"raw-1")
        peer.send(hello("raw-1"))
        peer.receive_message()
        got = []
        for seq in range(5):
            peer.send(observation(seq))
            got.append(peer.receive_message())
        peer.close()
        stats = service.stats()
    assert isinstance(got[0], HoldMessage) and got[0].seq == 0 and got[0].reason == "goal reached"
    assert (got[1].code, got[1].seq) == (ErrorCode.NO_SESSION.value, 1)
    assert got[2].code == ErrorCode.PLANNER_ERROR.value and "model exploded" in got[2].message
    assert got[3].code == ErrorCode.PLANNER_ERROR.value and got[4].code == ErrorCode.PLANNER_ERROR.value
    assert stats["planner_errors"] == 3 and stats["holds_sent"] == 1


def test_arm_says_hello_again_when_the_service_restarts():
    arm = PointArm()
    first = BridgeService(LOOPBACK, StepPlanner()).start()
    endpoint = first.endpoint
    client = ArmClient(arm, endpoint, "arm-1", 50.0, LIMITS, action_timeout=0.2)
    runner = ClientThread(client)
    try:
        wait_until(lambda: len(arm.moves()) >= 3)
        first.close()
        with BridgeService(endpoint, StepPlanner()) as second:
            wait_until(lambda: second.stats()["actions_sent"] >= 3)
            assert second.stats()["hellos"] == 1
    finally:
        runner.finish()
        client.close()
    assert runner.summary.stats["error.hello_required"] >= 1


@pytest.mark.parametrize("endpoint", ["tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://192.168.1.20:5555",
                                      "tcp://eth0:5555"])
def test_network_endpoints_refuse_to_run_without_curve(endpoint):
    with pytest.raises(InsecureEndpoint):
        BridgeService(endpoint, StepPlanner())
    with pytest.raises(InsecureEndpoint):
        BridgeConnection(endpoint, "arm-1")


def test_a_busy_endpoint_fails_at_start():
    with BridgeService(LOOPBACK, StepPlanner()) as service:
        with pytest.raises(zmq.ZMQError):
            BridgeService(service.endpoint, StepPlanner()).start()


def test_sim_arm_command_runs_as_a_process_over_curve_and_stops_cleanly_on_sigint(tmp_path):
    import json
    import os
    import shutil
    import signal
    import subprocess
    import sys

    from robot_bridge.keys import generate_key_pair
    from robot_bridge.security import ServerKeys

    for name in ("service", "sim0"):
        generate_key_pair(tmp_path, name)
    (tmp_path / "arms").mkdir()
    shutil.copy(tmp_path / "sim0.key", tmp_path / "arms" / "sim0.key")
    planner = StepPlanner(step=0.01)
    with BridgeService(LOOPBACK, planner, keys=ServerKeys(tmp_path / "service.key_secret", tmp_path / "arms")) as service:
        process = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "sim-arm", "--endpoint", service.endpoint, "--robot-id", "sim0",
             "--image-size", "32", "--rate", "20", "--server-key", str(tmp_path / "service.key"),
             "--client-key", str(tmp_path / "sim0.key_secret")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "MUJOCO_GL": "egl"})
        try:
            wait_until(lambda: service.stats()["actions_sent"] >= 8 or process.poll() is not None, timeout=60)
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 0, err[-2000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["reason"] == "requested" and summary["stats"]["moves"] >= 3
    assert {robot for robot, _, _ in planner.seen} == {"sim0"}


@pytest.mark.parametrize("rate_hz", [0.05, 2000.0, float("nan"), 0.0])
def test_an_arm_client_refuses_a_rate_the_service_would_refuse_in_its_hello(rate_hz):
    """The service answers a hello outside 0.1..1000 Hz with an invalid-field error and never welcomes the arm;
    a client built that way waited silently (seen: an eval paced to 0.08 Hz). It is refused when built."""
    with pytest.raises(ValueError, match="the service would refuse this arm's hello"):
        ArmClient(PointArm(), "ipc:///tmp/jepa-never-connected", "arm-rate", rate_hz, LIMITS)
