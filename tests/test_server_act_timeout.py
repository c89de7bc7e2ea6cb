"""The act deadline (JEPA_ACT_TIMEOUT_S), against a real uvicorn server with the tiny world model
and genuinely slow plans: a late act answers 504 and leaves its session as if it never came."""
from __future__ import annotations

import threading
import time

import httpx
import pytest

from server.settings import SettingsError, load_settings
from test_api import act, assert_error, png_bytes, tiny_service

# 4096 rollouts per plan: about a second on a busy 2-core CPU, and never near TIGHT_DEADLINE_S anywhere.
SLOW_PLANNER = {"samples": 1024, "iterations": 4, "horizon": 1}
TIGHT_DEADLINE_S = 0.02
GENEROUS_DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with tiny_service(tmp_path_factory.mktemp("act-timeout-data"), act_timeout_s=GENEROUS_DEADLINE_S) as running:
        yield running


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http


def metric(client: httpx.Client, sample: str) -> float:
    """The value of one Prometheus sample, e.g. 'jepa_act_timeouts_total{source="http"}'."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{sample} not in /metrics")


def wait_until_worker_idle(client: httpx.Client, timeout: float = 60.0) -> None:
    """Until the abandoned plan has run out on the worker (the queue gauge reads 0)."""
    deadline = time.monotonic() + timeout
    while metric(client, "jepa_worker_queue_depth") != 0:
        assert time.monotonic() < deadline, "the model worker never went idle"
        time.sleep(0.05)


def test_late_act_is_504_and_its_plan_is_discarded(server, client):
    goals = [client.post("/v1/goals", files={"image": ("g.png", png_bytes(seed), "image/png")}).json()["id"]
             for seed in (40, 41, 42)]
    # One step per sub-goal: where the schedule stands shows whether a discarded plan moved it.
    slow = client.post("/v1/sessions", json={"robot_id": "arm-slow", "goal_ids": goals, "subgoal_max_steps": 1,
                                             "planner": SLOW_PLANNER}).json()["id"]
    fast = client.post("/v1/sessions", json={"robot_id": "arm-fast", "goal_id": goals[0]}).json()["id"]
    first = act(client, slow, seq=1)
    assert first.status_code == 200 and first.json()["goal_index"] == 0, first.text

    busy = client.post("/v1/sessions", json={"robot_id": "arm-busy", "goal_id": goals[0],
                                             "planner": SLOW_PLANNER}).json()["id"]
    # The setting is read per act, so the operator's deadline can be tightened on the live server.
    server.service.settings.act_timeout_s = TIGHT_DEADLINE_S
    try:
        running_late = act(client, slow, seq=2)  # its plan stops at the next CEM iteration after the deadline
    finally:
        server.service.settings.act_timeout_s = GENEROUS_DEADLINE_S
    occupying = threading.Thread(target=act, args=(client, busy))  # holds the device, within its deadline
    occupying.start()
    deadline = time.monotonic() + 30
    while metric(client, "jepa_worker_queue_depth") < 1:
        assert time.monotonic() < deadline, "the busy plan never started"
        time.sleep(0.01)
    server.service.settings.act_timeout_s = TIGHT_DEADLINE_S
    try:
        queued_behind = act(client, fast, seq=1)  # waits behind that plan past its deadline: never planned
    finally:
        server.service.settings.act_timeout_s = GENEROUS_DEADLINE_S
    occupying.join(60)
    for response in (running_late, queued_behind):
        message = assert_error(response, 504, "act_timeout")["message"]
        assert f"{TIGHT_DEADLINE_S:g} s" in message and "JEPA_ACT_TIMEOUT_S" in message
    assert metric(client, 'jepa_act_timeouts_total{source="http"}') == 2

    wait_until_worker_idle(client)
    slow_status = client.get(f"/v1/sessions/{slow}").json()
    assert (slow_status["steps"], slow_status["last_seq"], slow_status["goal_index"]) == (1, 1, 0)
    assert [step["seq"] for step in client.get(f"/v1/sessions/{slow}/steps").json()["items"]] == [1]
    fast_status = client.get(f"/v1/sessions/{fast}").json()
    assert (fast_status["steps"], fast_status["last_seq"]) == (0, None)

    # The same observations again are not stale (nothing was recorded for them), and the schedule
    # goes on from where it stood: one step on goal 0 done, so goal 1 (goal 2 had the discarded
    # plan's step counted).
    retried = act(client, slow, seq=2)
    assert retried.status_code == 200, retried.text
    assert (retried.json()["step"], retried.json()["seq"], retried.json()["goal_index"]) == (2, 2, 1)
    assert act(client, fast, seq=1).status_code == 200
    assert metric(client, 'jepa_actions_total{source="http"}') == 4   # slow x2, busy, fast
    assert metric(client, 'jepa_act_timeouts_total{source="http"}') == 2


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_act_timeout_setting_must_be_a_positive_number_of_seconds(monkeypatch, value):
    monkeypatch.delenv("JEPA_CONFIG", raising=False)
    monkeypatch.setenv("JEPA_ACT_TIMEOUT_S", value)
    with pytest.raises(SettingsError, match="act_timeout_s"):
        load_settings()


def test_act_timeout_setting_from_the_environment(monkeypatch):
    monkeypatch.delenv("JEPA_CONFIG", raising=False)
    assert load_settings().act_timeout_s == 30.0  # the documented default
    monkeypatch.setenv("JEPA_ACT_TIMEOUT_S", "2.5")
    assert load_settings().act_timeout_s == 2.5
