"""The one plan scheduler, through real uvicorn (HTTP) and real ZeroMQ sockets (the bridge), with the tiny
world model and genuinely slow plans: newest wins, fairness, deadlines and cancellation, the compute
budget, stop during a plan, and a restarted arm."""
from __future__ import annotations

import contextlib
import threading
import time

import httpx
import numpy as np
import pytest

from robot_bridge.client import BridgeConnection
from robot_bridge.protocol import ActionMessage, ErrorMessage, HoldMessage, StopMessage
from server.local_server import LocalServer
from server.serve_command import build_service
from server.settings import ServerSettings
from test_api import FAST_PLANNER, act, assert_error, png_bytes
from test_server_act_timeout import metric, wait_until_worker_idle
from test_server_bridge import observation, receive_one, say_hello

# ~0.4 s per plan on an idle 2-core EPYC (4 CEM iterations of 2048 samples; 256 samples took ~50 ms there,
# faster than the 20 Hz stream below, so nothing was ever superseded).
HEAVY_PLANNER = {"samples": 2048, "iterations": 4, "horizon": 1}
# 64 iterations of 8192 samples: ~30 s on that CPU if nothing stops it (256 samples ended within 0.5 s).
ENDLESS_PLANNER = {"samples": 8192, "iterations": 64, "horizon": 1}
BUDGET = 8192 * 64 * 1 * 9   # the tiny model has 9 tokens per frame: ENDLESS_PLANNER is the most allowed


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    settings = ServerSettings(model="tiny", device="cpu", bridge="tcp://127.0.0.1:*", planner=FAST_PLANNER,
                              data_dir=tmp_path_factory.mktemp("scheduler-data"), plan_budget=BUDGET)
    with LocalServer(build_service(settings), with_bridge=True) as running:
        running.wait_ready()
        yield running


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as http:
        yield http


def new_session(client, robot_id: str, planner: dict | None = None, seed: int = 1) -> str:
    goal = client.post("/v1/goals", files={"image": ("g.png", png_bytes(seed), "image/png")}).json()["id"]
    response = client.post("/v1/sessions", json={"robot_id": robot_id, "goal_id": goal, "planner": planner or {}})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def in_background(function):
    """Run `function()` on a thread; returns (thread, result list)."""
    result: list = []
    thread = threading.Thread(target=lambda: result.append(function()), daemon=True)
    thread.start()
    return thread, result


def wait_for_depth(client, depth: float, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while metric(client, "jepa_worker_queue_depth") < depth:
        assert time.monotonic() < deadline, f"the plan queue never reached {depth}"
        time.sleep(0.01)


def received_within(arm: BridgeConnection, seconds: float) -> list:
    """Every message the arm receives in the next `seconds`."""
    received = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        received += arm.receive(0.1)
    return received


@contextlib.contextmanager
def arm_with_a_running_plan(endpoint: str, client, robot_id: str):
    """An arm on the bridge whose first observation is being planned (a plan that takes tens of seconds)."""
    with BridgeConnection(endpoint, robot_id) as arm:
        say_hello(arm)
        arm.send(observation(1))
        wait_for_depth(client, 1)
        time.sleep(0.3)   # the plan is running
        yield arm


def test_a_plan_over_the_budget_is_refused_at_creation_naming_the_budget(client):
    goal = client.post("/v1/goals", files={"image": ("g.png", png_bytes(3), "image/png")}).json()["id"]
    response = client.post("/v1/sessions", json={"robot_id": "arm-greedy", "goal_id": goal,
                                                  "planner": {"samples": 8192, "iterations": 64, "horizon": 4}})
    message = assert_error(response, 422, "over_budget")["message"]
    assert f"{BUDGET:,}" in message and "JEPA_PLAN_BUDGET" in message
    assert client.get("/v1/sessions", params={"robot_id": "arm-greedy"}).json()["items"] == []


def test_newest_wins_over_http_the_older_pending_act_is_409_and_never_planned(client):
    heavy = new_session(client, "arm-nw-heavy", ENDLESS_PLANNER, seed=4)
    light = new_session(client, "arm-nw-light", seed=5)
    busy, busy_result = in_background(lambda: act(client, heavy))
    wait_for_depth(client, 1)  # the heavy plan holds the device
    older, older_result = in_background(lambda: act(client, light, seq=1))
    wait_for_depth(client, 2)
    newer, newer_result = in_background(lambda: act(client, light, seq=2))
    older.join(60)
    client.post(f"/v1/sessions/{heavy}/stop")   # frees the device: its plan ends at the next CEM iteration
    newer.join(60)
    busy.join(60)
    assert_error(busy_result[0], 409, "session_stopped")
    newer = newer_result[0]
    assert newer.status_code == 200 and newer.json()["seq"] == 2, newer.text
    assert "superseded" in assert_error(older_result[0], 409, "stale_observation")["message"]
    assert [s["seq"] for s in client.get(f"/v1/sessions/{light}/steps").json()["items"]] == [2]


def test_a_light_session_never_waits_behind_more_than_one_heavy_plan(server, client):
    """The heavy robot keeps three acts in flight at once (as a client with retries might): with newest-wins
    only one of them waits, and a round plans its cheapest plan first. So while a light act waits, at most
    two heavy plans finish: the one running when it reached the scheduler, and one that started while the
    light request was still crossing HTTP (a FIFO queue would make it wait for every queued heavy act: 3-4)."""
    heavy = new_session(client, "arm-fair-heavy", HEAVY_PLANNER, seed=6)
    light = new_session(client, "arm-fair-light", seed=7)
    answered: list[float] = []       # when each heavy plan came back (200 only)
    stop = threading.Event()

    def heavy_stream():
        with httpx.Client(base_url=client.base_url, timeout=120) as http:
            while not stop.is_set():
                if act(http, heavy).status_code == 200:
                    answered.append(time.monotonic())

    streams = [threading.Thread(target=heavy_stream, daemon=True) for _ in range(3)]
    for stream in streams:
        stream.start()
    waits = []
    try:
        wait_for_depth(client, 2)
        for _ in range(3):
            sent = time.monotonic()
            assert act(client, light).status_code == 200
            got = time.monotonic()
            waits.append(sum(sent < t < got for t in answered))
            time.sleep(0.05)
    finally:
        stop.set()
        for stream in streams:
            stream.join(60)
    print(f"\nheavy plans answered while each light act waited: {waits}")
    assert max(waits) <= 2, waits
    assert max(server.service.scheduler.planned_per_round) >= 2   # heavy and light shared rounds
    assert metric(client, 'jepa_stale_observations_dropped_total{source="http"}') > 0  # heavy acts superseded


def test_a_running_plan_is_cancelled_at_its_deadline_between_iterations(server, client):
    session = new_session(client, "arm-deadline", ENDLESS_PLANNER, seed=8)
    settings = server.service.settings
    generous, settings.act_timeout_s = settings.act_timeout_s, 0.5
    try:
        started = time.monotonic()
        late = act(client, session, seq=1)
        answered_after = time.monotonic() - started
    finally:
        settings.act_timeout_s = generous
    assert_error(late, 504, "act_timeout")
    wait_until_worker_idle(client, timeout=10)
    idle_after = time.monotonic() - started
    print(f"\n504 after {answered_after:.2f} s, device free after {idle_after:.2f} s (deadline 0.5 s)")
    assert idle_after < 15, "the plan ran on instead of stopping at its deadline"
    status = client.get(f"/v1/sessions/{session}").json()
    assert (status["steps"], status["last_seq"]) == (0, None)


def test_stop_during_a_bridge_plan_sends_nothing_after_stop_and_records_no_step(server, client):
    session = new_session(client, "arm-stop", ENDLESS_PLANNER, seed=9)
    with arm_with_a_running_plan(server.bridge.endpoint, client, "arm-stop") as arm:
        assert client.post(f"/v1/sessions/{session}/stop").status_code == 200
        received = received_within(arm, 3)
    kinds = [type(message) for message in received]
    assert StopMessage in kinds, kinds
    assert not any(isinstance(message, ActionMessage) for message in received), kinds
    assert all(isinstance(message, (StopMessage, HoldMessage, ErrorMessage)) for message in received)
    wait_until_worker_idle(client, timeout=10)
    assert client.get(f"/v1/sessions/{session}").json()["steps"] == 0
    assert client.get(f"/v1/sessions/{session}/steps").json()["items"] == []


def test_a_restarted_arm_never_receives_a_plan_made_for_its_old_connection(server, client):
    session = new_session(client, "arm-restart", ENDLESS_PLANNER, seed=10)
    old = BridgeConnection(server.bridge.endpoint, "arm-restart")
    say_hello(old)
    old.send(observation(7))   # planned for this connection...
    wait_for_depth(client, 1)
    old.close()                # ...which dies; the arm restarts with the same robot id and counts from 1
    with BridgeConnection(server.bridge.endpoint, "arm-restart") as new:
        say_hello(new)
        wait_until_worker_idle(client, timeout=15)   # the old connection's plan was cancelled
        received = received_within(new, 1)
        assert not any(isinstance(m, ActionMessage) for m in received), [type(m) for m in received]
        assert client.get(f"/v1/sessions/{session}/steps").json()["items"] == []   # nor recorded
        # The new connection's own numbering (from 1) is planned as usual (here by a quicker session).
        client.post(f"/v1/sessions/{session}/stop")
        new_session(client, "arm-restart", seed=10)
        new.send(observation(1))
        action = receive_one(new, ActionMessage, timeout=60)
    assert action.seq == 1


def test_newest_wins_over_the_bridge_through_the_scheduler(server, client):
    session = new_session(client, "arm-stream", HEAVY_PLANNER, seed=11)
    dropped_before = server.bridge.stats()["observations_dropped_stale"]
    with BridgeConnection(server.bridge.endpoint, "arm-stream") as arm:
        say_hello(arm)
        for seq in range(1, 13):   # 20 Hz, much faster than the planner
            arm.send(observation(seq))
            time.sleep(0.05)
        actions = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (actions and actions[-1].seq == 12):
            actions += [m for m in arm.receive(0.1) if isinstance(m, ActionMessage)]
    seqs = [a.seq for a in actions]
    assert seqs == sorted(set(seqs)) and seqs[-1] == 12 and len(seqs) < 12, seqs
    assert server.bridge.stats()["observations_dropped_stale"] - dropped_before == 12 - len(seqs)
    history = client.get(f"/v1/sessions/{session}/steps", params={"limit": 100}).json()["items"]
    assert [s["seq"] for s in history] == seqs
    client.post(f"/v1/sessions/{session}/stop")


def test_shutting_down_during_a_bridge_plan_answers_the_arm_with_a_hold_and_records_no_step(tmp_path):
    """What SIGTERM does first (PlanningService.begin_shutdown) while an arm's plan runs: the arm is told to hold,
    with the reason, and gets no action; nothing is recorded. Its own service: shutting down is for good."""
    settings = ServerSettings(model="tiny", device="cpu", bridge="tcp://127.0.0.1:*", planner=FAST_PLANNER,
                              data_dir=tmp_path, plan_budget=BUDGET)
    with LocalServer(build_service(settings), with_bridge=True) as running:
        running.wait_ready()
        with httpx.Client(base_url=running.url, timeout=60) as client:
            session = new_session(client, "arm-term", ENDLESS_PLANNER, seed=12)
            with arm_with_a_running_plan(running.bridge.endpoint, client, "arm-term") as arm:
                running.service.begin_shutdown()
                hold = receive_one(arm, HoldMessage, timeout=5)
                received = received_within(arm, 1)
            assert hold.seq == 1 and "shutting down" in hold.reason
            assert not any(isinstance(message, ActionMessage) for message in received), received
            assert client.get(f"/v1/sessions/{session}/steps").json()["items"] == []


def test_budget_and_batch_settings_from_the_environment(monkeypatch):
    from server.settings import DEFAULT_PLAN_BUDGET, SettingsError, load_settings

    monkeypatch.delenv("JEPA_CONFIG", raising=False)
    defaults = load_settings()
    assert (defaults.plan_budget, defaults.plan_batch_max) == (DEFAULT_PLAN_BUDGET, 32)
    monkeypatch.setenv("JEPA_PLAN_BUDGET", "5000000")
    monkeypatch.setenv("JEPA_PLAN_BATCH_MAX", "1")
    assert (load_settings().plan_budget, load_settings().plan_batch_max) == (5_000_000, 1)
    monkeypatch.setenv("JEPA_PLAN_BATCH_MAX", "0")
    with pytest.raises(SettingsError, match="plan_batch_max"):
        load_settings()
