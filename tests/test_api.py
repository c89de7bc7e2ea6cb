"""The HTTP API against a real uvicorn server on a free loopback port, with the tiny world model."""
from __future__ import annotations

import io
import json
import statistics
import struct
import threading
import time
import uuid
import zlib
from contextlib import contextmanager
from typing import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from server.local_server import LocalServer
from server.serve_command import build_service
from server.settings import ServerSettings

FAST_PLANNER = {"samples": 8, "topk": 2, "iterations": 1, "horizon": 1}
STATE = [0.5, 0.0, 0.3, 3.14, 0.0, 0.0, 0.0]
UPLOAD_LIMIT = 256 * 1024


def png_bytes(seed: int, size: int = 64) -> bytes:
    pixels = (np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR declaring width x height, with a tiny compressed body:
    the shape of a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")


@contextmanager
def tiny_service(data_dir, **settings) -> Iterator[LocalServer]:
    """A real uvicorn service on a free port with the tiny model and a fast planner, ready to plan."""
    with LocalServer(build_service(ServerSettings(model="tiny", device="cpu", bridge="", planner=FAST_PLANNER,
                                                  data_dir=data_dir, **settings))) as running:
        running.wait_ready()
        yield running


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with tiny_service(tmp_path_factory.mktemp("api-data"), max_upload_bytes=UPLOAD_LIMIT) as running:
        yield running


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http


@pytest.fixture()
def goal_id(client) -> str:
    response = client.post("/v1/goals", files={"image": ("goal.png", png_bytes(1), "image/png")})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def act(client, session_id, image=None, state=STATE, seq=None):
    data = {"state": json.dumps(state) if not isinstance(state, str) else state}
    if seq is not None:
        data["seq"] = str(seq)
    return client.post(f"/v1/sessions/{session_id}/act",
                       files={"image": ("obs.png", image if image is not None else png_bytes(2), "image/png")}, data=data)


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["message"] and "Traceback" not in error["message"]
    if code is not None:
        assert error["code"] == code
    return error


def test_operator_flow_upload_create_act_status_stop(client):
    upload = client.post("/v1/goals", files={"image": ("goal.png", png_bytes(7), "image/png")},
                         data={"name": "red cube left", "metadata": json.dumps({"task": "reach"})})
    assert upload.status_code == 201
    goal = upload.json()
    assert goal["name"] == "red cube left" and goal["metadata"] == {"task": "reach"}
    assert (goal["width"], goal["height"], goal["image_format"]) == (64, 64, "png")
    assert client.get(f"/v1/goals/{goal['id']}").json() == goal
    assert goal["id"] in [g["id"] for g in client.get("/v1/goals").json()["items"]]
    image = client.get(goal["image_url"])
    assert image.status_code == 200 and image.content == png_bytes(7) and image.headers["content-type"] == "image/png"

    created = client.post("/v1/sessions", json={"robot_id": "arm-flow", "goal_id": goal["id"]})
    assert created.status_code == 201
    session = created.json()
    assert session["status"] == "active" and session["steps"] == 0 and session["goal_ids"] == [goal["id"]]
    assert session["planner"]["samples"] == FAST_PLANNER["samples"]

    actions = []
    for seq in range(1, 4):
        response = act(client, session["id"], png_bytes(10 + seq), seq=seq)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["step"] == seq and body["seq"] == seq and len(body["action"]) == 7
        assert all(np.isfinite(body["action"])) and np.isfinite(body["energy"]) and body["plan_ms"] > 0
        # The target is the current pose moved by the action (xyz), within the planner's step limit.
        assert np.allclose(np.array(body["target_pose"][:3]) - STATE[:3], body["action"][:3], atol=1e-5)
        assert max(abs(v) for v in body["action"][:3]) <= 0.075 + 1e-6
        actions.append(body)

    status = client.get(f"/v1/sessions/{session['id']}").json()
    assert status["steps"] == 3 and status["last_seq"] == 3
    assert status["last_action"] == actions[-1]["action"] and status["last_energy"] == actions[-1]["energy"]
    assert status["last_plan_ms"] == pytest.approx(actions[-1]["plan_ms"])
    history = client.get(f"/v1/sessions/{session['id']}/steps").json()["items"]
    assert [s["seq"] for s in history] == [1, 2, 3] and all(s["source"] == "http" for s in history)

    stopped = client.post(f"/v1/sessions/{session['id']}/stop")
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    assert_error(act(client, session["id"]), 409, "session_stopped")
    assert session["id"] in [s["id"] for s in client.get("/v1/sessions", params={"status": "stopped"}).json()["items"]]

    assert client.delete(f"/v1/goals/{goal['id']}").status_code == 204
    assert_error(client.get(f"/v1/goals/{goal['id']}"), 404, "not_found")
    assert_error(client.get(goal["image_url"]), 404)


def test_goal_as_raw_body_and_jpeg(client):
    buffer = io.BytesIO()
    Image.fromarray(np.full((40, 80, 3), 90, np.uint8)).save(buffer, "JPEG")
    response = client.post("/v1/goals", params={"name": "raw"}, content=buffer.getvalue(),
                           headers={"content-type": "image/jpeg"})
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "raw" and response.json()["image_format"] == "jpeg"
    assert (response.json()["width"], response.json()["height"]) == (80, 40)


def test_sub_goal_schedule_advances_after_max_steps(client):
    goals = [client.post("/v1/goals", files={"image": ("g.png", png_bytes(s), "image/png")}).json()["id"]
             for s in (30, 31)]
    assert_error(client.post("/v1/sessions", json={"robot_id": "arm-sched", "goal_ids": goals}), 422)
    session = client.post("/v1/sessions", json={"robot_id": "arm-sched", "goal_ids": goals,
                                                "subgoal_max_steps": 2}).json()
    indices = [act(client, session["id"]).json()["goal_index"] for _ in range(4)]
    assert indices == [0, 0, 1, 1]
    client.post(f"/v1/sessions/{session['id']}/stop")


def test_one_active_session_per_robot_and_goal_in_use(client, goal_id):
    first = client.post("/v1/sessions", json={"robot_id": "arm-busy", "goal_id": goal_id}).json()
    assert_error(client.post("/v1/sessions", json={"robot_id": "arm-busy", "goal_id": goal_id}), 409, "robot_busy")
    assert_error(client.delete(f"/v1/goals/{goal_id}"), 409, "goal_in_use")
    client.post(f"/v1/sessions/{first['id']}/stop")
    assert client.post("/v1/sessions", json={"robot_id": "arm-busy", "goal_id": goal_id}).status_code == 201


@pytest.fixture()
def session_id(client, goal_id) -> str:
    robot = f"arm-{uuid.uuid4().hex[:12]}"
    response = client.post("/v1/sessions", json={"robot_id": robot, "goal_id": goal_id})
    assert response.status_code == 201, response.text
    yield response.json()["id"]
    client.post(f"/v1/sessions/{response.json()['id']}/stop")


@pytest.mark.parametrize("state, code", [
    ("[NaN, 0, 0, 0, 0, 0, 0]", "invalid_state"),
    ("[Infinity, 0, 0, 0, 0, 0, 0]", "invalid_state"),
    ("[1e999, 0, 0, 0, 0, 0, 0]", "invalid_state"),
    ([0.5, 0.0, 0.3], "invalid_state"),
    ([0.0] * 8, "invalid_state"),
    ('["a", 0, 0, 0, 0, 0, 0]', "invalid_state"),
    ("[true, 0, 0, 0, 0, 0, 0]", "invalid_state"),
    ('{"x": 1}', "invalid_state"),
    ("not json", "invalid_state"),
])
def test_bad_state_is_422_and_changes_nothing(client, session_id, state, code):
    assert_error(act(client, session_id, state=state), 422, code)
    assert client.get(f"/v1/sessions/{session_id}").json()["steps"] == 0


@pytest.mark.parametrize("image, status, code", [
    (b"definitely not an image", 415, "unsupported_media_type"),
    (b"GIF89a" + b"\0" * 64, 415, "unsupported_media_type"),
    (b"", 422, "invalid_image"),
    (png_bytes(3)[:60], 422, "invalid_image"),   # truncated PNG
    (png_header_only(60000, 60000), 422, "image_too_large"),   # decompression bomb: 3.6 gigapixels declared
    (png_header_only(8, 8), 422, "invalid_image"),   # too small to plan from
])
def test_bad_image_is_rejected_before_decoding(client, session_id, image, status, code):
    assert_error(act(client, session_id, image=image), status, code)
    assert_error(client.post("/v1/goals", files={"image": ("g.png", image, "image/png")}), status, code)
    assert client.get(f"/v1/sessions/{session_id}").json()["steps"] == 0


def test_oversized_uploads_are_413_whether_declared_or_streamed(client, session_id):
    too_big = b"\x89PNG" + b"\0" * (UPLOAD_LIMIT + 10)
    assert_error(client.post("/v1/goals", content=too_big, headers={"content-type": "image/png"}), 413, "payload_too_large")
    assert_error(act(client, session_id, image=too_big), 413, "payload_too_large")

    def chunked():  # no Content-Length: the limit must hold while the body streams in
        for _ in range(2 * UPLOAD_LIMIT // 16384):
            yield b"\0" * 16384
    assert_error(client.post("/v1/goals", content=chunked(), headers={"content-type": "image/png"}),
                 413, "payload_too_large")
    assert client.get("/healthz").status_code == 200


def test_stale_observation_is_dropped_with_409(client, session_id):
    assert act(client, session_id, seq=5).status_code == 200
    assert_error(act(client, session_id, seq=5), 409, "stale_observation")
    assert_error(act(client, session_id, seq=4), 409, "stale_observation")
    assert act(client, session_id, seq=6).status_code == 200
    assert client.get(f"/v1/sessions/{session_id}").json()["steps"] == 2
    metrics = client.get("/metrics").text
    assert 'jepa_stale_observations_dropped_total{source="http"} 2.0' in metrics


@pytest.mark.parametrize("method, path, body, status", [
    ("GET", "/v1/goals/0123456789abcdef0123456789abcdef", None, 404),
    ("GET", "/v1/goals/nope/image", None, 404),
    ("DELETE", "/v1/goals/nope", None, 404),
    ("GET", "/v1/sessions/nope", None, 404),
    ("GET", "/v1/sessions/nope/steps", None, 404),
    ("POST", "/v1/sessions/nope/stop", None, 404),
    ("POST", "/v1/sessions", {"robot_id": "arm-x", "goal_id": "nope"}, 404),
    ("POST", "/v1/sessions", {"robot_id": "arm-x"}, 422),
    ("POST", "/v1/sessions", {"robot_id": "bad id with spaces", "goal_id": "x"}, 422),
    ("POST", "/v1/sessions", {"robot_id": "arm-x", "goal_id": "x", "extra": 1}, 422),
    ("GET", "/v1/no-such-route", None, 404),
    ("PUT", "/v1/goals", None, 405),
    ("GET", "/v1/goals?limit=0", None, 422),
])
def test_unknown_ids_and_bad_requests_are_json_errors(client, method, path, body, status):
    assert_error(client.request(method, path, json=body), status)


def test_unknown_session_act_is_404(client):
    assert_error(act(client, "nope"), 404, "not_found")


def test_bad_planner_override_and_upload_forms(client, goal_id):
    error = assert_error(client.post("/v1/sessions", json={"robot_id": "arm-p", "goal_id": goal_id,
                                                          "planner": {"samples": 10**9}}), 422, "invalid_planner")
    assert "samples" in error["message"]
    assert_error(client.post("/v1/sessions", json={"robot_id": "arm-p", "goal_id": goal_id,
                                                  "planner": {"maxnorm": -1}}), 422, "invalid_planner")
    too_long = assert_error(client.post("/v1/sessions", json={"robot_id": "arm-p", "goal_id": goal_id,
                                                              "planner": {"horizon": 30}}), 422, "invalid_planner")
    assert "horizon" in too_long["message"]
    assert_error(client.post("/v1/goals", content=b"{}", headers={"content-type": "application/json"}), 415)
    assert_error(client.post("/v1/goals", files={"other": ("g.png", png_bytes(1), "image/png")}), 422, "missing_image")
    assert_error(client.post("/v1/goals", files={"image": ("g.png", png_bytes(1), "image/png")},
                             data={"metadata": "[1, 2]"}), 422, "invalid_metadata")
    assert_error(client.post("/v1/goals", files={"image": ("g.png", png_bytes(1), "image/png")},
                             data={"metadata": '{"x": NaN}'}), 422, "invalid_metadata")


def test_model_info_health_and_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "model": "tiny"}
    info = client.get("/v1/model").json()
    assert info["state"] == "ready" and info["tokens_per_frame"] > 0 and info["device"] == "cpu"
    assert info["planner_defaults"] == FAST_PLANNER
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in ("jepa_http_requests_total", "jepa_http_request_seconds_bucket", "jepa_planning_seconds_bucket",
                 "jepa_plan_energy_bucket", "jepa_stale_observations_dropped_total", "jepa_bridge_connections",
                 "jepa_model_ready 1.0"):
        assert name in metrics.text
    assert 'route="/v1/sessions/{session_id}/act"' in metrics.text  # templates, not raw ids


def test_twenty_concurrent_clients_while_health_stays_responsive(server, client, goal_id):
    robots = 20
    sessions = [client.post("/v1/sessions", json={"robot_id": f"arm-c{i}", "goal_id": goal_id}).json()["id"]
                for i in range(robots)]
    results: dict[str, list[int]] = {sid: [] for sid in sessions}
    images = [png_bytes(100 + i) for i in range(robots)]
    done = threading.Event()

    def robot(index: int, session: str) -> None:
        with httpx.Client(base_url=server.url, timeout=120) as own:
            for seq in range(1, 3):
                results[session].append(act(own, session, images[index], seq=seq).status_code)

    threads = [threading.Thread(target=robot, args=(i, sid)) for i, sid in enumerate(sessions)]
    health_ms: list[float] = []

    def watch_health() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as own:
            while not done.is_set():
                started = time.perf_counter()
                assert own.get("/healthz").status_code == 200
                health_ms.append((time.perf_counter() - started) * 1000)
                time.sleep(0.02)

    watcher = threading.Thread(target=watch_health)
    watcher.start()
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    done.set()
    watcher.join()

    assert all(codes == [200, 200] for codes in results.values()), results
    for sid in sessions:
        status = client.get(f"/v1/sessions/{sid}").json()
        assert status["steps"] == 2 and status["last_seq"] == 2
        client.post(f"/v1/sessions/{sid}/stop")
    assert len(health_ms) >= 3
    print(f"\n{robots} robots x 2 acts in {elapsed:.2f} s; /healthz during load: n={len(health_ms)} "
          f"median {statistics.median(health_ms):.1f} ms, max {max(health_ms):.1f} ms")
