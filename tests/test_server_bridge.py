"""HTTP and the ZeroMQ bridge share one model and one session registry inside one service."""
from __future__ import annotations

import time

import httpx
import numpy as np
import pytest

from robot_bridge.client import BridgeConnection
from robot_bridge.protocol import (ActionMessage, ErrorMessage, HelloMessage, HoldMessage, ImagePayload,
                                   ObservationMessage, StopMessage, WelcomeMessage)
from server.local_server import LocalServer
from server.serve_command import build_service
from server.settings import ServerSettings
from test_api import FAST_PLANNER, png_bytes
from test_server_act_timeout import SLOW_PLANNER, TIGHT_DEADLINE_S, metric, wait_until_worker_idle

STATE = np.array([0.5, 0.0, 0.3, 3.14, 0.0, 0.0, 0.0])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    settings = ServerSettings(model="tiny", device="cpu", bridge="tcp://127.0.0.1:*", planner=FAST_PLANNER,
                              data_dir=tmp_path_factory.mktemp("bridge-data"))
    with LocalServer(build_service(settings), with_bridge=True) as running:
        running.wait_ready()
        yield running


def receive_one(arm: BridgeConnection, kind, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in arm.receive(0.1):
            if isinstance(message, kind):
                return message
    raise AssertionError(f"no {kind.__name__} within {timeout} s")


def say_hello(arm: BridgeConnection) -> WelcomeMessage:
    """Send hello until welcomed: the arm socket queues nothing until its connection is up."""
    hello = HelloMessage(robot_id=arm.robot_id, camera_height=32, camera_width=32, control_hz=5.0)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        arm.send(hello)
        for message in arm.receive(0.2):
            if isinstance(message, WelcomeMessage):
                return message
    raise AssertionError("never welcomed")


def observation(seq: int) -> ObservationMessage:
    pixels = (np.random.default_rng(seq).random((32, 32, 3)) * 255).astype(np.uint8)
    return ObservationMessage(seq=seq, timestamp=time.time(), image=ImagePayload.from_array(pixels), state=STATE)


def test_arm_on_the_bridge_is_planned_by_the_http_created_session(server):
    http = httpx.Client(base_url=server.url, timeout=60)
    with BridgeConnection(server.bridge.endpoint, "arm-zmq") as arm:
        assert say_hello(arm).session is None
        arm.send(observation(1))
        assert receive_one(arm, ErrorMessage).code == "no_session"

        goal = http.post("/v1/goals", files={"image": ("g.png", png_bytes(1), "image/png")}).json()
        session = http.post("/v1/sessions", json={"robot_id": "arm-zmq", "goal_id": goal["id"]}).json()
        assert say_hello(arm).session["session_id"] == session["id"]

        arm.send(observation(1))
        action = receive_one(arm, ActionMessage)
        assert action.seq == 1 and np.isfinite(action.delta).all() and np.isfinite(action.energy)
        assert np.allclose(action.target[:3], STATE[:3] + action.delta[:3], atol=1e-5)

        status = http.get(f"/v1/sessions/{session['id']}").json()
        assert status["steps"] == 1 and status["last_action"] == pytest.approx(action.delta.tolist())
        history = http.get(f"/v1/sessions/{session['id']}/steps").json()["items"]
        assert [(s["source"], s["seq"]) for s in history] == [("bridge", 1)]
        metrics = http.get("/metrics").text
        assert "jepa_bridge_connections 1.0" in metrics
        assert 'jepa_actions_total{source="bridge"} 1.0' in metrics

        # Stopping the session over HTTP tells the arm to stop.
        http.post(f"/v1/sessions/{session['id']}/stop")
        assert "stopped" in receive_one(arm, StopMessage).reason
        arm.send(observation(2))
        assert receive_one(arm, ErrorMessage).code == "no_session"
    http.close()


def test_an_arm_holding_at_its_goal_gets_zero_deltas_marked_held_over_the_bridge(server):
    """arrival_energy set: while the observation is that close to the goal the arm gets `action`s marked held, with a
    zero delta, and the step history says so; off the goal it gets planned actions marked not held."""
    http = httpx.Client(base_url=server.url, timeout=60)
    with BridgeConnection(server.bridge.endpoint, "arm-held") as arm:
        say_hello(arm)
        goal = http.post("/v1/goals", files={"image": ("g.png", png_bytes(1), "image/png")}).json()
        session = http.post("/v1/sessions", json={"robot_id": "arm-held", "goal_id": goal["id"],
                                                  "planner": {"arrival_energy": 1e6}}).json()
        say_hello(arm)
        arm.send(observation(1))
        held = receive_one(arm, ActionMessage)
        assert held.held is True and np.all(held.delta == 0)
        http.post(f"/v1/sessions/{session['id']}/stop")
        other = http.post("/v1/sessions", json={"robot_id": "arm-held", "goal_id": goal["id"]}).json()
        say_hello(arm)
        arm.send(observation(2))
        planned = receive_one(arm, ActionMessage)
        assert planned.held is False and np.any(planned.delta != 0)
    assert [s["held"] for s in http.get(f"/v1/sessions/{session['id']}/steps").json()["items"]] == [True]
    assert [s["held"] for s in http.get(f"/v1/sessions/{other['id']}/steps").json()["items"]] == [False]


def test_plan_past_the_bridge_deadline_is_a_hold_and_is_not_recorded(server):
    http = httpx.Client(base_url=server.url, timeout=60)
    goal = http.post("/v1/goals", files={"image": ("g.png", png_bytes(2), "image/png")}).json()
    session = http.post("/v1/sessions", json={"robot_id": "arm-late", "goal_id": goal["id"],
                                              "planner": SLOW_PLANNER}).json()
    settings = server.service.settings
    generous, settings.bridge_plan_timeout_s = settings.bridge_plan_timeout_s, TIGHT_DEADLINE_S
    try:
        with BridgeConnection(server.bridge.endpoint, "arm-late") as arm:
            say_hello(arm)
            arm.send(observation(1))
            hold = receive_one(arm, HoldMessage)
    finally:
        settings.bridge_plan_timeout_s = generous
    assert hold.seq == 1 and f"{TIGHT_DEADLINE_S:g} s" in hold.reason and "discarded" in hold.reason
    assert metric(http, 'jepa_act_timeouts_total{source="bridge"}') == 1

    wait_until_worker_idle(http)  # the plan ran out and was thrown away
    status = http.get(f"/v1/sessions/{session['id']}").json()
    assert (status["steps"], status["last_seq"], status["last_action"]) == (0, None, None)
    assert http.get(f"/v1/sessions/{session['id']}/steps").json()["items"] == []
    http.post(f"/v1/sessions/{session['id']}/stop")
    http.close()
