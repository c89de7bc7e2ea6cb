"""ArmClient rules, driven by a scripted service on a raw ROUTER socket (real sockets, no mocks)."""
from __future__ import annotations

import time

import numpy as np
import pytest
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
        service.pump(lambda: client.rtt_ms is not None and service.last_seq >= 0)   # a heartbeat came back
    finally:
        summary = runner.finish()
        client.close()
        service.peer.close()
    assert summary.reason == "requested" and summary.stats["rtt_ms"] >= 0
    assert arm.calls[-1][0] == "hold"
    assert summary.stats["observations_sent"] >= 1 and arm.moves() == []


def near_action(seq: int, dx: float = 0.01) -> ActionMessage:
    target = np.array(START_POSE) + np.array([dx, 0, 0, 0, 0, 0, 0.0])
    return ActionMessage(delta=target - np.array(START_POSE), target=target, energy=1.0, seq=seq)


@pytest.mark.parametrize("rate_hz", [4.0, 1.0])
def test_arm_holds_within_the_action_timeout_of_its_last_action_at_any_rate(rate_hz):
    """One action, answered just after an observation, then silence: the arm moves, holds at the
    action's 0.5 s deadline (its own timer, not the next period end) and never moves on it again.
    Before: at 4 Hz the hold came 0.52-0.75 s after the action (re-applied at 0.5 s); at 1 Hz the
    action, applied only at the period end, was already stale and the arm never moved."""
    service, arm = ScriptedService(), PointArm(hz=rate_hz)
    client = ArmClient(arm, service.peer.endpoint, "arm-1", rate_hz, LIMITS)   # action_timeout 0.5 s
    runner = ClientThread(client)
    latencies = []
    try:
        for _ in range(2):
            seen = service.last_seq
            service.pump(lambda: service.last_seq > seen)      # an observation just came: answer at once
            sent_at = time.monotonic()
            service.send(near_action(service.last_seq))
            quiet_until = sent_at + 0.5 + 2.0 / rate_hz
            service.pump(lambda: time.monotonic() > quiet_until)
            after = [(kind, t) for kind, t, _ in arm.calls if t > sent_at]
            moves = [t for kind, t in after if kind == "move"]
            assert moves, f"the fresh action was never applied at {rate_hz} Hz"
            hold = next(t for kind, t in after if kind == "hold" and t > moves[0])
            assert not [t for t in moves if t > hold], "a stale target was applied again after the hold"
            latencies.append(hold - sent_at)
    finally:
        summary = runner.finish()
        client.close()
        service.peer.close()
    print(f"\n{rate_hz} Hz: hold {[round(x, 4) for x in latencies]} s after the action was sent "
          f"(client deadline holds {[round(x, 4) for x in client.hold_latencies_s]})")
    assert max(latencies) <= 0.5 + 0.12, latencies   # the deadline plus wake-up and load on a shared machine
    assert summary.stats["deadline_holds"] >= 2


def test_arm_measured_outside_the_box_takes_only_targets_that_bring_it_back():
    outside = np.array(START_POSE) + np.array([0, 0.35, 0, 0, 0, 0, 0.0])   # y = 0.35, the box ends at 0.3
    service, arm = ScriptedService(), PointArm(start=outside)
    client = ArmClient(arm, service.peer.endpoint, "arm-1", 50.0, LIMITS)
    runner = ClientThread(client)
    try:
        service.pump(lambda: service.last_seq >= 2)
        further = outside + np.array([0.01, 0.02, 0, 0, 0, 0, 0])           # along x but further out in y
        service.send(ActionMessage(further - outside, further, 1.0, seq=service.last_seq))
        service.pump(lambda: client.stats().get("holds_outside_limits", 0) >= 1)
        assert arm.moves() == [] and arm.calls[-1][0] == "hold"
        seen = service.last_seq
        service.pump(lambda: service.last_seq > seen)                       # a newer seq to answer
        back = outside - np.array([0, 0.1, 0, 0, 0, 0, 0])                   # towards the box
        service.send(ActionMessage(back - outside, back, 1.0, seq=service.last_seq))
        service.pump(lambda: len(arm.moves()) >= 1)
    finally:
        runner.finish()
        client.close()
        service.peer.close()
    assert arm.moves()[0][1] == pytest.approx(0.35 - LIMITS.max_translation_m)


def test_heartbeats_keep_a_slow_loop_linked_without_any_action():
    """At 0.25 Hz (a 4 s period, as when a demo paces itself to a slow planner) with no action ever:
    heartbeats go out on their own timer and their echoes keep the link. Before, the heartbeat
    rode on the observation, the link fell silent for 3 s and was re-made every period."""
    service, arm = ScriptedService(), PointArm()
    client = ArmClient(arm, service.peer.endpoint, "arm-1", 0.25, LIMITS)
    runner = ClientThread(client)
    try:
        started = time.monotonic()
        service.pump(lambda: time.monotonic() - started > 5.0)   # into the second period
        stats = client.stats()          # now: finishing waits for the period to end, unanswered
    finally:
        runner.finish()
        client.close()
        service.peer.close()
    assert stats.get("reconnects", 0) == 0 and service.hellos == 1
    assert stats["rtt_ms"] >= 0 and arm.moves() == []


class LaggingService(ScriptedService):
    """Answers everything `lag_s` late, as a service starved of CPU does."""

    def __init__(self, lag_s: float):
        super().__init__()
        self.lag_s, self.pending = lag_s, []

    def send(self, message) -> None:
        self.pending.append((time.monotonic() + self.lag_s, self.routing_id, message))

    def pump(self, until, timeout: float = 10.0) -> None:
        def flushed():
            now = time.monotonic()
            for due, routing_id, message in [entry for entry in self.pending if entry[0] <= now]:
                self.peer.send(routing_id, message)
            self.pending = [entry for entry in self.pending if entry[0] > now]
            return until()
        super().pump(flushed, timeout)


def test_a_service_that_answers_late_keeps_one_link_after_a_single_remake():
    """Echoes 4 s late against the default 3 s silence limit: the link is re-made once, then
    waits twice as long, hears the late echoes and stays. Before, it was re-made every 3 s and every late
    reply went to a socket already closed (seen with a niced service on a busy 2-core machine)."""
    service, arm = LaggingService(lag_s=4.0), PointArm()
    client = ArmClient(arm, service.peer.endpoint, "arm-1", 5.0, LIMITS)
    runner = ClientThread(client)
    try:
        started = time.monotonic()
        service.pump(lambda: time.monotonic() - started > 14.0, timeout=20.0)
        stats = client.stats()
    finally:
        runner.finish()
        client.close()
        service.peer.close()
    assert stats.get("reconnects", 0) == 1
    assert stats["rtt_ms"] >= 3900 and service.hellos >= 1   # the late echoes were heard
