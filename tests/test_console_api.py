"""The API pieces the operator console reads, against a real uvicorn service with its real ZeroMQ
bridge and an arm speaking the protocol over a real socket: robots, their latest frame, a goal taken
from it, the emergency stop of everything, the live session stream (SSE), and the page itself."""
from __future__ import annotations

import io
import json
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from robot_bridge.client import BridgeConnection
from robot_bridge.protocol import ActionMessage, ImagePayload, ObservationMessage, StopMessage
from server.local_server import LocalServer
from server.serve_command import build_service
from server.settings import ServerSettings
from test_api import FAST_PLANNER, assert_error, png_bytes
from test_server_bridge import receive_one, say_hello

API_KEY = "console-test-key"
KEY = {"X-API-Key": API_KEY}
STATE = np.array([0.5, 0.0, 0.3, 3.14, 0.0, 0.0, 0.0])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    settings = ServerSettings(model="tiny", device="cpu", bridge="tcp://127.0.0.1:*", planner=FAST_PLANNER,
                              data_dir=tmp_path_factory.mktemp("console-data"), api_key=API_KEY)
    with LocalServer(build_service(settings), with_bridge=True) as running:
        running.wait_ready()
        yield running


@pytest.fixture()
def http(server):
    with httpx.Client(base_url=server.url, timeout=60, headers=KEY) as client:
        yield client


def frame(seq: int) -> np.ndarray:
    return (np.random.default_rng(seq).random((32, 32, 3)) * 255).astype(np.uint8)


def observation(seq: int) -> ObservationMessage:
    # raw pixels: the frame the service hands back must be exactly these
    return ObservationMessage(seq=seq, timestamp=time.time(), image=ImagePayload.from_array(frame(seq), "raw"),
                              state=STATE + seq * 0.001)


def wait_for_robot(http: httpx.Client, robot_id: str, seq: int, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        robots = {r["robot_id"]: r for r in http.get("/v1/robots").json()["items"]}
        if robots.get(robot_id, {}).get("last_seq") == seq:
            return robots[robot_id]
        time.sleep(0.02)
    raise AssertionError(f"robot {robot_id} never showed observation {seq}")


def pixels_of(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_page_loads_without_the_key_but_no_data_does(server):
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        page = anonymous.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert 'src="/console/app.js"' in page.text and "default-src 'self'" in page.headers["content-security-policy"]
        script = anonymous.get("/console/app.js")
        assert script.status_code == 200 and "X-API-Key" in script.text
        assert_error(anonymous.get("/console/..%2Fapp.py"), 404)
        assert_error(anonymous.get("/console/missing.js"), 404)
        for path in ("/v1/robots", "/v1/robots/arm-x/frame", "/v1/sessions/0123/events"):
            assert_error(anonymous.get(path), 401, "unauthorized")
        assert_error(anonymous.post("/v1/sessions/stop-all"), 401, "unauthorized")
        assert_error(anonymous.post("/v1/goals/from-robot/arm-x"), 401, "unauthorized")


def test_connected_robot_its_latest_frame_and_a_goal_taken_from_it(server, http):
    assert_error(http.get("/v1/robots/arm-frame"), 404, "not_found")
    with BridgeConnection(server.bridge.endpoint, "arm-frame") as arm:
        say_hello(arm)
        robot = http.get("/v1/robots/arm-frame").json()
        assert (robot["connected"], robot["last_seq"], robot["frame_url"]) == (True, None, None)
        assert_error(http.get("/v1/robots/arm-frame/frame"), 404, "no_observation")
        assert_error(http.post("/v1/goals/from-robot/arm-frame"), 404, "no_observation")

        for seq in (1, 2):
            arm.send(observation(seq))
        robot = wait_for_robot(http, "arm-frame", 2)
        assert robot["state"] == pytest.approx((STATE + 0.002).tolist())
        assert robot["camera_height"] == 32 and robot["last_observation_at"] and robot["active_session_id"] is None

        latest = http.get(robot["frame_url"])
        assert latest.headers["content-type"] == "image/png" and latest.headers["x-seq"] == "2"
        assert np.array_equal(pixels_of(latest.content), frame(2))

        goal = http.post("/v1/goals/from-robot/arm-frame", params={"name": "where arm-frame is"})
        assert goal.status_code == 201, goal.text
        goal = goal.json()
        assert goal["name"] == "where arm-frame is" and goal["image_format"] == "png"
        assert goal["metadata"]["source"] == "robot" and goal["metadata"]["seq"] == 2
        assert np.array_equal(pixels_of(http.get(goal["image_url"]).content), frame(2))
    assert_error(http.post("/v1/goals/from-robot/nobody"), 404, "not_found")


def read_events(response: httpx.Response, until) -> list[tuple[str, dict, str | None]]:
    """Parse an SSE stream into (event, data, id) until `until(events)` is true or the stream ends."""
    events, fields = [], {}
    for line in response.iter_lines():
        if line == "":
            if "data" in fields:
                events.append((fields.get("event", "message"), json.loads(fields["data"]), fields.get("id")))
                if until(events):
                    break
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value
    return events


def test_session_events_stream_steps_and_the_robot_then_end_when_the_session_stops(server, http):
    goal = http.post("/v1/goals", files={"image": ("g.png", png_bytes(3), "image/png")}).json()
    session = http.post("/v1/sessions", json={"robot_id": "arm-live", "goal_id": goal["id"]}).json()
    assert_error(http.get("/v1/sessions/" + "0" * 32 + "/events"), 404, "not_found")
    with BridgeConnection(server.bridge.endpoint, "arm-live") as arm:
        say_hello(arm)
        with http.stream("GET", f"/v1/sessions/{session['id']}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            for seq in (1, 2, 3):
                arm.send(observation(seq))
                receive_one(arm, ActionMessage)
            events = read_events(stream, lambda got: sum(kind == "step" for kind, _, _ in got) == 3
                                 and any(kind == "robot" and data["last_seq"] == 3 for kind, data, _ in got))
        steps = [(data["step"], data["seq"], event_id) for kind, data, event_id in events if kind == "step"]
        assert steps == [(1, 1, "1"), (2, 2, "2"), (3, 3, "3")]
        assert all(np.isfinite(data["energy"]) and data["plan_ms"] > 0 for kind, data, _ in events if kind == "step")
        assert events[0][0] == "session" and events[0][1]["id"] == session["id"]
        robots = [data for kind, data, _ in events if kind == "robot"]
        assert all(robot["robot_id"] == "arm-live" and robot["connected"] for robot in robots)
        seqs = [robot["last_seq"] for robot in robots if robot["last_seq"] is not None]
        assert seqs == sorted(set(seqs)) and seqs[-1] == 3  # sent on change only
        assert robots[-1]["state"] == pytest.approx((STATE + 0.003).tolist())

        # A reconnecting reader resumes after the last step it saw; the stream ends once the session stops.
        http.post(f"/v1/sessions/{session['id']}/stop")
        assert "stopped" in receive_one(arm, StopMessage).reason
    with http.stream("GET", f"/v1/sessions/{session['id']}/events", headers={"Last-Event-ID": "2"}) as stream:
        events = read_events(stream, lambda got: False)
    assert [data["step"] for kind, data, _ in events if kind == "step"] == [3]
    assert [data["status"] for kind, data, _ in events if kind == "session"] == ["stopped"]


def test_stop_all_stops_every_session_and_sends_stop_to_every_connected_arm(server, http):
    goal = http.post("/v1/goals", files={"image": ("g.png", png_bytes(4), "image/png")}).json()
    with BridgeConnection(server.bridge.endpoint, "arm-a") as busy, \
            BridgeConnection(server.bridge.endpoint, "arm-b") as idle:
        say_hello(busy), say_hello(idle)
        sessions = [http.post("/v1/sessions", json={"robot_id": robot, "goal_id": goal["id"]}).json()["id"]
                    for robot in ("arm-a", "arm-offline")]
        result = http.post("/v1/sessions/stop-all")
        assert result.status_code == 200, result.text
        result = result.json()
        assert set(sessions) <= set(result["stopped_sessions"])
        assert {"arm-a", "arm-b"} <= set(result["robots_stopped"])
        assert receive_one(busy, StopMessage) and receive_one(idle, StopMessage)
    assert http.get("/v1/sessions", params={"status": "active"}).json()["items"] == []
    assert http.post("/v1/sessions/stop-all").json()["stopped_sessions"] == []


def test_a_frame_whose_jpeg_body_is_corrupt_is_a_clear_conflict_not_a_server_error(server, http):
    whole = ImagePayload.from_array(frame(5), "jpeg")
    # The header (and so the size) is intact, the body cut in half: the bridge admits it, decoding fails.
    broken = ImagePayload(format="jpeg", data=whole.data[: len(whole.data) // 2], height=32, width=32)
    with BridgeConnection(server.bridge.endpoint, "arm-broken") as arm:
        say_hello(arm)
        arm.send(ObservationMessage(seq=1, timestamp=time.time(), image=broken, state=STATE))
        wait_for_robot(http, "arm-broken", 1)
        assert "does not decode" in assert_error(http.get("/v1/robots/arm-broken/frame"), 409, "frame_undecodable")["message"]
        assert_error(http.post("/v1/goals/from-robot/arm-broken"), 409, "frame_undecodable")
