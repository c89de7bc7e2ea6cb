"""Scale-out on Ray Serve: a real local Ray on loopback with two CPU planning replicas (tiny model,
random weights from one seed), behind the real front door (uvicorn + the ZeroMQ bridge).

One service for the whole file (Ray and two replicas take ~30 s to start on a loaded 2-core machine);
the replica kill comes last.
"""
from __future__ import annotations

import json
import os
import threading
import time

import httpx
import numpy as np
import pytest

from server.ray_backend import RAY_ENV  # noqa: E402

os.environ.update(RAY_ENV)   # before ray is imported, as `serve --replicas` does (server.ray_backend.import_ray)
ray = pytest.importorskip("ray", reason="ray[serve] is not installed (make test installs it: make ray-deps)")
pytest.importorskip("ray.serve", reason="ray is installed without Serve: pip install -e '.[ray]'")

from bridge_kit import ClientThread, PointArm, wait_until  # noqa: E402
from robot_bridge.client import ArmClient  # noqa: E402
from server.local_server import LocalServer  # noqa: E402
from server.serve_command import build_service  # noqa: E402
from server.settings import ServerSettings  # noqa: E402
from test_api import FAST_PLANNER, STATE, png_bytes  # noqa: E402

PLANNER = {**FAST_PLANNER, "samples": 16, "topk": 4, "iterations": 2, "horizon": 2, "seed": 7}


@pytest.fixture(scope="module")
def front_door(tmp_path_factory):
    settings = ServerSettings(model="tiny", random_init_seed=0, device="cpu", bridge="tcp://127.0.0.1:*",
                              planner=PLANNER, data_dir=tmp_path_factory.mktemp("ray-data"), replicas=2,
                              act_timeout_s=60.0)
    with LocalServer(build_service(settings), with_bridge=True) as running:
        running.wait_ready(timeout=300)
        yield running


@pytest.fixture(scope="module")
def http(front_door):
    with httpx.Client(base_url=front_door.url, timeout=120) as client:
        yield client


def new_session(http, robot_id: str, goal_seed: int) -> str:
    goal = http.post("/v1/goals", files={"image": ("g.png", png_bytes(goal_seed), "image/png")})
    assert goal.status_code == 201, goal.text
    session = http.post("/v1/sessions", json={"robot_id": robot_id, "goal_id": goal.json()["id"]})
    assert session.status_code == 201, session.text
    return session.json()["id"]


def act(http, session_id: str, image_seed: int) -> httpx.Response:
    return http.post(f"/v1/sessions/{session_id}/act", files={"image": ("o.png", png_bytes(image_seed), "image/png")},
                     data={"state": json.dumps(STATE)})


def engine_of(front_door):
    return front_door.service.worker.model


def planner_of(front_door, session_id: str):
    return front_door.service.sessions._live[session_id].planner


def identities(front_door) -> list[dict]:
    return [replica.handle.identity.remote().result(timeout_s=60) for replica in engine_of(front_door).pool.replicas]


def test_sessions_are_pinned_and_spread_and_plan_what_the_local_engine_plans(front_door, http):
    engine = engine_of(front_door)
    assert engine.info()["backend"] == "ray" and len(engine.pool.replicas) == 2
    first, second = new_session(http, "ray-a", 11), new_session(http, "ray-b", 12)
    actions = {first: [], second: []}
    for image_seed in (21, 22, 23):   # three steps: the warm start and noise position carry over
        for session_id in (first, second):
            response = act(http, session_id, image_seed)
            assert response.status_code == 200, response.text
            actions[session_id].append(response.json()["action"])

    keys = {session_id: planner_of(front_door, session_id).key for session_id in (first, second)}
    placement = engine.pool.placement()
    assert {placement[keys[first]], placement[keys[second]]} == {0, 1}   # spread over both replicas
    planned = [identity["planned"] for identity in identities(front_door)]
    for session_id, key in keys.items():   # pinned: every plan of a session was made by its one replica
        assert planned[placement[key]].get(key) == 3 and key not in planned[1 - placement[key]]

    # The same plans from the front door's own copy of the model, planned here, with the same seed.
    local = engine.local
    registry = front_door.service.sessions

    def plan_locally(_engine, session_id):
        record = registry.get(session_id)
        planner = local.new_session_planner([front_door.service.goals.latent(local, record.goal_ids[0])],
                                            record.planner, record.schedule)
        steps = []
        for image_seed in (21, 22, 23):
            from server.images import decode_image

            pixels = decode_image(png_bytes(image_seed), 10**7).pixels
            steps.append(planner.step(local.encode(pixels), STATE).action)
        return steps

    for session_id in (first, second):
        expected = front_door.service.worker.call_blocking(plan_locally, session_id)
        np.testing.assert_allclose(actions[session_id], expected, rtol=0, atol=1e-5)
    assert not np.allclose(actions[first], actions[second])   # the two sessions' goals differ
    for session_id in (first, second):   # the next test places its own sessions on empty replicas
        assert http.post(f"/v1/sessions/{session_id}/stop").status_code == 200


def test_a_session_whose_front_door_planner_was_lost_goes_on_from_its_recorded_schedule(front_door, http):
    """What a restarted front door does: the session's planner is built again at its next act, from the steps on
    record (sub-goal, steps spent on it) rather than from its first sub-goal, and the replica plans from there."""
    goals = [http.post("/v1/goals", files={"image": ("g.png", png_bytes(seed), "image/png")}).json()["id"]
             for seed in (51, 52, 53)]
    session = http.post("/v1/sessions", json={"robot_id": "ray-sched", "goal_ids": goals, "subgoal_max_steps": 2})
    assert session.status_code == 201, session.text
    session_id = session.json()["id"]
    before = [act(http, session_id, 60 + i).json()["goal_index"] for i in range(3)]
    front_door.service.sessions._live[session_id].planner = None   # as after a restart: built at the next act
    after = [act(http, session_id, 63 + i).json()["goal_index"] for i in range(2)]
    assert (before, after) == ([0, 0, 1], [1, 2])
    assert http.post(f"/v1/sessions/{session_id}/stop").status_code == 200


def test_a_killed_replica_s_sessions_continue_on_the_other_without_an_error(front_door, http):
    engine = engine_of(front_door)
    bridge_sessions = {robot: new_session(http, robot, 30 + index) for index, robot in enumerate(("ray-arm-0", "ray-arm-1"))}
    http_session = new_session(http, "ray-http", 40)
    clients = [ArmClient(PointArm(size=32, hz=10.0), front_door.bridge.endpoint, robot, rate_hz=10.0)
               for robot in bridge_sessions]
    threads: list[ClientThread] = []
    statuses: list[int] = []
    errors: list[str] = []
    stop_http = threading.Event()

    def http_loop() -> None:   # repeated HTTP acts while the replica dies
        seed = 100
        while not stop_http.is_set():
            response = act(http, http_session, seed)
            statuses.append(response.status_code)
            if response.status_code != 200:
                errors.append(response.text)
            seed += 1

    actor = threading.Thread(target=http_loop, daemon=True)
    steps = lambda session_id: http.get(f"/v1/sessions/{session_id}").json()["steps"]  # noqa: E731
    actor.start()
    try:
        # The HTTP session is placed first (replica 0), the arms then go one to each replica: the victim,
        # the HTTP session's replica, holds one session of each kind.
        wait_until(lambda: steps(http_session) >= 1, timeout=120, interval=0.1)
        threads += [ClientThread(client) for client in clients]
        all_sessions = [*bridge_sessions.values(), http_session]
        wait_until(lambda: all(steps(s) >= 3 for s in all_sessions), timeout=120, interval=0.2)

        victim_index = engine.pool.placement()[planner_of(front_door, http_session).key]
        moved = [s for s in all_sessions if engine.pool.placement()[planner_of(front_door, s).key] == victim_index]
        assert len(moved) == 2 and set(moved) & set(bridge_sessions.values())   # spread: 2 + 1
        victim = identities(front_door)[victim_index]
        before = {s: steps(s) for s in all_sessions}
        ray.kill(ray.get_actor(victim["actor_name"], namespace="serve"), no_restart=True)

        wait_until(lambda: all(steps(s) >= before[s] + 4 for s in all_sessions), timeout=120, interval=0.2)
    finally:
        stop_http.set()
        actor.join(120)
        summaries = [thread.finish(timeout=30) for thread in threads]
    wait_until(lambda: front_door.service.scheduler.depth == 0, timeout=60)
    stats = [client.stats() for client in clients]
    for client in clients:
        client.close()

    assert not errors and statuses and set(statuses) == {200}, errors[:3]
    for counts in stats:
        assert not {name: value for name, value in counts.items() if name.startswith("error.")}, counts
    assert all(summary is not None for summary in summaries)
    survivor = 1 - victim_index
    placement = engine.pool.placement()
    # Usually the victim's sessions move to the survivor (its call fails, or no replica takes it within 3 s);
    # on a quiet machine Serve's replacement replica can come up first and take them: a new process with
    # empty caches, so either way another process planned them from the state the front door sent.
    replaced = engine.pool.replicas[victim_index].instance != victim["instance"]
    for session_id in moved:
        planner = planner_of(front_door, session_id)
        assert placement[planner.key] == survivor or replaced
        # Its state moved with it: the sub-goal position went on instead of starting afresh.
        assert planner.state.steps_on_goal == steps(session_id) and planner.state.warm_start is not None
