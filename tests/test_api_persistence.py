"""Goals, sessions and history survive a restart of the service on the same data directory."""
from __future__ import annotations

import httpx

from server.local_server import LocalServer
from server.serve_command import build_service
from server.settings import ServerSettings
from test_api import FAST_PLANNER, act, png_bytes


def start(data_dir) -> LocalServer:
    settings = ServerSettings(model="tiny", device="cpu", bridge="", planner=FAST_PLANNER, data_dir=data_dir)
    return LocalServer(build_service(settings))


def test_restart_keeps_goals_sessions_history_and_cached_latents(tmp_path):
    with start(tmp_path) as first:
        first.wait_ready()
        with httpx.Client(base_url=first.url, timeout=60) as client:
            goal = client.post("/v1/goals", files={"image": ("g.png", png_bytes(1), "image/png")},
                               data={"name": "kept"}).json()
            active = client.post("/v1/sessions", json={"robot_id": "arm-a", "goal_id": goal["id"]}).json()
            stopped = client.post("/v1/sessions", json={"robot_id": "arm-b", "goal_id": goal["id"]}).json()
            first_actions = [act(client, active["id"], seq=seq).json() for seq in (1, 2)]
            client.post(f"/v1/sessions/{stopped['id']}/stop")
            status_before = client.get(f"/v1/sessions/{active['id']}").json()
    latents = list((tmp_path / "latents").glob(f"{goal['id']}.*.npy"))
    assert len(latents) == 1
    latent_written = latents[0].stat().st_mtime_ns

    with start(tmp_path) as second:
        second.wait_ready()
        with httpx.Client(base_url=second.url, timeout=60) as client:
            assert client.get(f"/v1/goals/{goal['id']}").json() == goal
            assert client.get(goal["image_url"]).content == png_bytes(1)
            assert client.get(f"/v1/sessions/{active['id']}").json() == status_before
            assert client.get(f"/v1/sessions/{stopped['id']}").json()["status"] == "stopped"
            history = client.get(f"/v1/sessions/{active['id']}/steps").json()["items"]
            assert [(s["seq"], s["action"], s["energy"]) for s in history] == [
                (a["seq"], a["action"], a["energy"]) for a in first_actions]
            # The session resumes where it was: old sequence numbers stay stale, new ones plan.
            assert act(client, active["id"], seq=2).status_code == 409
            resumed = act(client, active["id"], seq=3)
            assert resumed.status_code == 200 and resumed.json()["step"] == 3
            # one active session per robot still holds after the restart
            assert client.post("/v1/sessions", json={"robot_id": "arm-a", "goal_id": goal["id"]}).status_code == 409
    # The goal latent was read from the cache, not encoded again.
    assert latents[0].stat().st_mtime_ns == latent_written


def test_one_sessions_failure_does_not_stall_another(tmp_path):
    """A session whose goal data vanished from disk fails its own acts (409 goal_broken, JSON, no
    internals) while another session keeps planning and the worker stays alive."""
    with start(tmp_path) as first:
        first.wait_ready()
        with httpx.Client(base_url=first.url, timeout=60) as client:
            goals = [client.post("/v1/goals", files={"image": ("g.png", png_bytes(s), "image/png")}).json()
                     for s in (1, 2)]
            broken, healthy = (client.post("/v1/sessions", json={"robot_id": f"arm-{i}", "goal_id": g["id"]}).json()
                               for i, g in enumerate(goals))
    for path in [*(tmp_path / "goals").glob(f"{goals[0]['id']}.*"), *(tmp_path / "latents").glob(f"{goals[0]['id']}.*")]:
        path.unlink()

    with start(tmp_path) as second:
        second.wait_ready()
        with httpx.Client(base_url=second.url, timeout=60) as client:
            for _ in range(2):
                failed = act(client, broken["id"])
                assert failed.status_code == 409
                assert failed.json()["error"]["code"] == "goal_broken"
                assert "Traceback" not in failed.text and str(tmp_path) not in failed.text
                assert act(client, healthy["id"]).status_code == 200
            assert client.get(f"/v1/sessions/{broken['id']}").json()["steps"] == 0


def test_a_restarted_service_goes_on_with_a_session_from_where_its_schedule_stood(tmp_path):
    """Sub-goals of two steps each: three acts, a restart, two more. After the restart the session is still on its
    second sub-goal with one step spent there, then moves to the third: it does not start the schedule over (a
    lift restarted mid-way would go back to its open-hand approach with the cube in hand)."""
    with start(tmp_path) as first:
        first.wait_ready()
        with httpx.Client(base_url=first.url, timeout=60) as client:
            goals = [client.post("/v1/goals", files={"image": ("g.png", png_bytes(seed), "image/png")}).json()["id"]
                     for seed in (1, 3, 4)]
            session = client.post("/v1/sessions", json={"robot_id": "arm-sched", "goal_ids": goals,
                                                        "subgoal_max_steps": 2}).json()["id"]
            before = [act(client, session, seq=seq).json()["goal_index"] for seq in (1, 2, 3)]
    assert before == [0, 0, 1]

    with start(tmp_path) as second:
        second.wait_ready()
        with httpx.Client(base_url=second.url, timeout=60) as client:
            after = [act(client, session, seq=seq).json()["goal_index"] for seq in (4, 5)]
            history = [step["goal_index"] for step in client.get(f"/v1/sessions/{session}/steps").json()["items"]]
    assert after == [1, 2]
    assert history == [0, 0, 1, 1, 2]


def test_a_restarted_service_keeps_holding_a_session_that_was_holding_at_its_goal(tmp_path):
    """A session holding at its goal (arrival_energy) keeps holding after a restart while the observation stays within
    arrival_release_energy, as it would have without the restart; a fresh planner would plan again."""
    goal_image, nearby = png_bytes(1), png_bytes(2)
    with start(tmp_path) as first:
        first.wait_ready()
        with httpx.Client(base_url=first.url, timeout=60) as client:
            goal = client.post("/v1/goals", files={"image": ("g.png", goal_image, "image/png")}).json()["id"]
            # A session that always holds reports the observed energy: how far `nearby` looks from the goal.
            probe = client.post("/v1/sessions", json={"robot_id": "arm-probe", "goal_id": goal,
                                                      "planner": {"arrival_energy": 1e6}}).json()["id"]
            probed = act(client, probe, image=nearby).json()
            assert probed["held"] is True
            distance = probed["energy"]
            assert distance > 0
            session = client.post("/v1/sessions", json={"robot_id": "arm-hold", "goal_id": goal, "planner": {
                "arrival_energy": distance / 2, "arrival_release_energy": distance * 2}}).json()["id"]
            at_goal = act(client, session, image=goal_image, seq=1).json()
            assert at_goal["held"] is True and at_goal["action"][:6] == [0.0] * 6

    with start(tmp_path) as second:
        second.wait_ready()
        with httpx.Client(base_url=second.url, timeout=60) as client:
            drifted = act(client, session, image=nearby, seq=2).json()
            history = client.get(f"/v1/sessions/{session}/steps").json()["items"]
    assert drifted["held"] is True, drifted
    assert [step["held"] for step in history] == [True, True]
