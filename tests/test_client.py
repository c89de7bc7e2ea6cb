"""ArmClient rules, driven by a scripted service on a raw ROUTER socket (real sockets, no mocks)."""
from __future__ import annotations

import time

import numpy as np
import zmq

from bridge_kit import START_POSE, ClientThread, PointArm, RawPeer
from robot_bridge.arm import SafetyLimits
from robot_bridge.client import ArmClient, Subscriber
from robot_bridge.protocol import (
    ActionMessage,
    ErrorCode,
    ErrorMessage,
    HeartbeatMessage,
    HelloMessage,
    HoldMessage,
    ObservationMessage,
    WelcomeMessage,
    decode,
)

LIMITS = SafetyLimits(workspace_low=(0.3, -0.3, 0.05), workspace_high=(0.7, 0.3, 0.6), max_translation_m=0.02)


class ScriptedService:
    """Reads what the arm sends and remembers it; the test decides what to answer."""

    def __init__(self):
        self.peer = RawPeer("tcp://127.0.0.1:*", zmq.ROUTER, bind=True, router_handover=1)
        self.routing_id = b""
        self.hellos, self.last_seq = 0, -1

    def pump(self, until, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not until():
            assert time.monotonic() < deadline, "the arm did not send what was expected"
            if not self.peer.socket.poll(20):
                continue
            self.routing_id, frame = self.peer.receive()
            message = decode(frame)
            if isinstance(message, HelloMessage):
                self.hellos += 1
                self.send(WelcomeMessage(message.robot_id, 65536, 0.5))
            elif isinstance(message, HeartbeatMessage):
                self.send(message)
            elif isinstance(message, ObservationMessage):
                self.last_seq = message.seq

    def send(self, message) -> None:
        self.peer.send(self.routing_id, message)


class Broken(Subscriber):
    def on_step(self, step):
        raise RuntimeError("a recorder bug")


class Steps(Subscriber):
    def __init__(self):
        self.records = []

    def on_step(self, step):
        self.records.append(step)


def far_action(seq: int) -> ActionMessage:
    target = np.array(START_POSE) + np.array([1.0, 0, 0, 0, 0, 0, 0.0])   # 1 m away, outside the box
    return ActionMessage(delta=target - np.array(START_POSE), target=target, energy=3.0, seq=seq)


def test_client_applies_only_newer_clamped_commands_and_recovers_from_a_forgotten_hello():
    service, arm, steps = ScriptedService(), PointArm(), Steps()
    client = ArmClient(arm, service.peer.endpoint, "arm-1", 50.0, LIMITS, action_timeout=0.3,
                       subscribers=[Broken(), steps])
    runner = ClientThread(client)
    try:
        service.pump(lambda: service.last_seq >= 3)
        answered = service.last_seq
        service.send(far_action(answered))
        service.pump(lambda: len(arm.moves()) >= 4)
        moves = arm.moves()
        x = [START_POSE[0]] + [target[0] for target in moves]
        assert np.allclose(np.diff(x)[:4], 0.02), "a 1 m request moves one 2 cm step per period"
        assert max(target[0] for target in moves) <= 0.7 + 1e-12        # never past the box

        service.send(far_action(answered - 1))                           # older than the one applied
        service.pump(lambda: client.stats().get("commands_out_of_order", 0) >= 1)

        service.send(HoldMessage("goal reached", seq=service.last_seq))   # newer: hold now
        held_from = len(steps.records)
        service.pump(lambda: sum(s.command == "hold" for s in steps.records[held_from:]) >= 3)
        service.send(far_action(answered))                               # the old action may not come back
        service.pump(lambda: client.stats().get("commands_out_of_order", 0) >= 2)

        service.send(ErrorMessage(ErrorCode.HELLO_REQUIRED.value, "service restarted", service.last_seq))
        service.pump(lambda: service.hellos >= 2)
        service.send(far_action(service.last_seq))
        service.pump(lambda: steps.records[-1].command == "move")
    finally:
        summary = runner.finish()
        client.close()
        service.peer.close()
    assert summary.stats["error.hello_required"] == 1
    after_hold = [s.command for s in steps.records[held_from:]]
    first_hold = after_hold.index("hold")
    assert "move" not in after_hold[first_hold:first_hold + 3]
    assert all(s.action.seq > answered for s in steps.records[held_from:] if s.command == "move")


def test_client_reports_rtt_and_leaves_the_arm_holding_on_exit():
    service, arm = ScriptedService(), PointArm()
    client = ArmClient(arm, service.peer.endpoint, "arm-1", 50.0, LIMITS)
    runner = ClientThread(client)
    try:
        service.pump(lambda: client.rtt_ms is not None)   # a heartbeat went out and came back
    finally:
        summary = runner.finish()
        client.close()
        service.peer.close()
    assert summary.reason == "requested" and summary.stats["rtt_ms"] >= 0
    assert arm.calls[-1][0] == "hold"
    assert summary.stats["observations_sent"] >= 1 and arm.moves() == []
