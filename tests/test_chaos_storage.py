"""Broken disks and hostile uploads against a real service: deep metadata, a full disk, a truncated
latent cache, a missing goal image, a damaged or corrupt database."""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

from test_api import act, assert_error, png_bytes, tiny_service
from test_server_cli import clean_env


def upload(client: httpx.Client, seed: int = 1, **data: str) -> httpx.Response:
    return client.post("/v1/goals", files={"image": ("goal.png", png_bytes(seed), "image/png")}, data=data)


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_deeply_nested_metadata_is_422_stores_nothing_and_listing_survives_old_bad_rows(tmp_path):
    with tiny_service(tmp_path) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        assert upload(client).status_code == 201
        for metadata, words in [(nested(300), "deeper"), ({str(k): k for k in range(300)}, "keys"),
                                ({"text": "x" * 20_000}, "larger")]:
            error = assert_error(upload(client, metadata=json.dumps(metadata)), 422, "invalid_metadata")
            assert words in error["message"]
        assert len(client.get("/v1/goals").json()["items"]) == 1
        assert len(list((tmp_path / "goals").iterdir())) == 1
        # Rows stored before the bounds existed (or damaged on disk) are left out, not a 500.
        bad_ids = [uuid.uuid4().hex, uuid.uuid4().hex]
        with contextlib.closing(sqlite3.connect(tmp_path / "jepa.sqlite3")) as db, db:
            for goal_id, metadata in zip(bad_ids, (json.dumps(nested(300)), "{not json")):
                db.execute("INSERT INTO goals VALUES (?, 0, NULL, 'png', 64, 64, 1, '', ?)", (goal_id, metadata))
        listing = client.get("/v1/goals")
        assert listing.status_code == 200 and len(listing.json()["items"]) == 1
        for goal_id in bad_ids:  # each can still be looked at (without its metadata) and deleted
            assert client.get(f"/v1/goals/{goal_id}").json()["metadata"] == {}
            assert client.delete(f"/v1/goals/{goal_id}").status_code == 204


def test_a_truncated_latent_cache_is_re_encoded_from_the_goal_image(tmp_path):
    with tiny_service(tmp_path) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        goal_id = upload(client).json()["id"]
    (latent_file,) = (tmp_path / "latents").glob(f"{goal_id}.*.npy")
    original = np.load(latent_file)
    latent_file.write_bytes(latent_file.read_bytes()[: latent_file.stat().st_size // 2])
    with tiny_service(tmp_path) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        session = client.post("/v1/sessions", json={"robot_id": "arm-1", "goal_id": goal_id}).json()
        assert act(client, session["id"]).status_code == 200
    np.testing.assert_allclose(np.load(latent_file), original, rtol=1e-5, atol=1e-6)


def test_a_missing_goal_image_is_goal_broken_on_session_creation_act_and_fetch(tmp_path):
    with tiny_service(tmp_path) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        goal_id = upload(client).json()["id"]
        session_id = client.post("/v1/sessions", json={"robot_id": "arm-1", "goal_id": goal_id}).json()["id"]
    for leftover in [*(tmp_path / "goals").glob(f"{goal_id}.*"), *(tmp_path / "latents").glob(f"{goal_id}.*")]:
        leftover.unlink()
    with tiny_service(tmp_path) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        error = assert_error(act(client, session_id), 409, "goal_broken")
        assert goal_id in error["message"] and "missing" in error["message"]
        assert_error(client.post("/v1/sessions", json={"robot_id": "arm-2", "goal_id": goal_id}), 409, "goal_broken")
        assert_error(client.get(f"/v1/goals/{goal_id}/image"), 409, "goal_broken")
        assert client.get(f"/v1/goals/{goal_id}").status_code == 200  # still there, so it can be deleted


def test_readyz_reports_a_damaged_goals_table(tmp_path):
    with tiny_service(tmp_path) as server:
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        with contextlib.closing(sqlite3.connect(tmp_path / "jepa.sqlite3")) as db:
            db.execute("ALTER TABLE goals DROP COLUMN metadata")
        error = assert_error(httpx.get(f"{server.url}/readyz"), 503, "storage_unhealthy")
        assert "metadata" in error["message"]


@pytest.mark.parametrize("damage", ["garbage header", "truncated"])
def test_a_corrupt_database_at_start_exits_with_one_line_naming_the_file(tmp_path, damage):
    with tiny_service(tmp_path) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        assert upload(client).status_code == 201
    database = tmp_path / "jepa.sqlite3"
    data = database.read_bytes()
    database.write_bytes(b"\x07" * 100 + data[100:] if damage == "garbage header" else data[:1500])
    result = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--data-dir", str(tmp_path), "--bridge", "",
                             "--model", "tiny", "--port", "0"], env=clean_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(database) in lines[0] and "backup" in lines[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr


# A full disk, for real: a small tmpfs of its own (mounting needs root).
@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str) -> Path:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root; run the suite as root to test a full disk")
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); a full disk needs one")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path, leave_free: int) -> Path:
    """A filler file that leaves about `leave_free` bytes of the file system free."""
    filler = folder / "filler"
    filler.unlink(missing_ok=True)
    handle = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        with contextlib.suppress(OSError):
            while os.write(handle, b"\0" * 4096):
                pass
    finally:
        os.close(handle)
    os.truncate(filler, max(0, filler.stat().st_size - leave_free))
    return filler


def consistent(data_dir: Path) -> tuple[int, int]:
    """(goal rows, goal files): every row has its image and latent, every file has its row."""
    with contextlib.closing(sqlite3.connect(data_dir / "jepa.sqlite3")) as db:
        ids = {row[0] for row in db.execute("SELECT id FROM goals")}
    images = {path.name.split(".")[0] for path in (data_dir / "goals").iterdir()}
    latents = {path.name.split(".")[0] for path in (data_dir / "latents").iterdir()}
    assert images == ids and latents == ids, (ids, images, latents)
    return len(ids), len(images)


def test_a_full_disk_is_507_storage_full_and_an_upload_is_all_or_nothing(tmp_path):
    image = png_bytes(3, size=160)  # ~77 KB: fits where the latent after it does not, for some free amounts
    with small_tmpfs(tmp_path / "disk", "4m") as disk:
        data_dir = disk / "data"
        with tiny_service(data_dir) as server, httpx.Client(base_url=server.url, timeout=60) as client:
            assert upload(client).status_code == 201
            stored, answers = 1, []
            for leave_free in range(0, len(image) + 96 * 1024, 8 * 1024):
                filler = fill(disk, leave_free)
                response = client.post("/v1/goals", files={"image": ("goal.png", image, "image/png")})
                answers.append(response.status_code)
                if response.status_code == 507:
                    assert response.json()["error"]["code"] == "storage_full"
                    assert "full" in response.json()["error"]["message"]
                else:
                    assert response.status_code == 201, response.text
                    stored += 1
                filler.unlink()
                assert consistent(data_dir)[0] == stored
            assert 507 in answers and 201 in answers[1:], answers
            fill(disk, 0)
            assert_error(client.get("/readyz"), 503, "storage_unhealthy")


def test_an_act_whose_step_cannot_be_stored_is_507_at_once_and_leaves_the_session_as_it_was(tmp_path):
    """The disk fills while a session acts: the act that cannot record its step is answered 507 storage_full at
    once (the robot does not execute a plan the service did not keep), and the session goes on from the last
    stored step once there is room (sub-goals of one step each, so its position shows in every answer)."""
    with small_tmpfs(tmp_path / "disk", "4m") as disk:
        data_dir = disk / "data"
        with tiny_service(data_dir, act_timeout_s=20.0) as server, httpx.Client(base_url=server.url, timeout=60) as client:
            goals = [upload(client, seed).json()["id"] for seed in (1, 2, 3, 4)]
            session = client.post("/v1/sessions", json={"robot_id": "arm-full", "goal_ids": goals,
                                                        "subgoal_max_steps": 1}).json()["id"]
            assert act(client, session, seq=1).json()["goal_index"] == 0
            filler, answers = fill(disk, 0), []
            for seq in range(2, 40):   # SQLite may find room in its write-ahead log for a few steps first
                response = act(client, session, seq=seq)
                answers.append(response.status_code)
                if response.status_code != 200:
                    break
            filler.unlink()
            assert answers[-1] == 507, answers
            assert_error(response, 507, "storage_full")
            stored = client.get(f"/v1/sessions/{session}").json()["steps"]
            assert stored == answers.count(200) + 1
            resumed = act(client, session, seq=seq + 1)
            assert resumed.status_code == 200, resumed.text
            assert resumed.json()["step"] == stored + 1
            assert resumed.json()["goal_index"] == min(stored, len(goals) - 1)


def test_stopping_a_session_on_a_full_disk_still_stops_its_arm_and_says_the_stop_was_not_recorded(tmp_path):
    """The operator stops a session while the disk is full: the arm is told to stop at once over the bridge (its
    safety does not wait for the database), no plan reaches it afterwards, and the answer is 507 saying that the
    stop itself could not be recorded."""
    from robot_bridge.client import BridgeConnection
    from robot_bridge.protocol import ActionMessage, StopMessage
    from test_server_bridge import observation, receive_one, say_hello

    from server.local_server import LocalServer
    from server.serve_command import build_service
    from server.settings import ServerSettings
    from test_api import FAST_PLANNER

    with small_tmpfs(tmp_path / "disk", "4m") as disk:
        settings = ServerSettings(model="tiny", device="cpu", bridge="tcp://127.0.0.1:*", planner=FAST_PLANNER,
                                  data_dir=disk / "data")
        with LocalServer(build_service(settings), with_bridge=True) as server, \
                httpx.Client(base_url=server.url, timeout=60) as client:
            server.wait_ready()
            goal = upload(client).json()["id"]
            session = client.post("/v1/sessions", json={"robot_id": "arm-estop", "goal_id": goal}).json()["id"]
            with BridgeConnection(server.bridge.endpoint, "arm-estop") as arm:
                say_hello(arm)
                arm.send(observation(1))
                assert receive_one(arm, ActionMessage).seq == 1
                filler = fill(disk, 0)
                try:
                    response = client.post(f"/v1/sessions/{session}/stop")
                    stop = receive_one(arm, StopMessage, timeout=5)
                    arm.send(observation(2))
                    later = []
                    deadline = time.monotonic() + 1
                    while time.monotonic() < deadline:
                        later += arm.receive(0.1)
                finally:
                    filler.unlink()
            message = assert_error(response, 507, "storage_full")["message"]
            assert "told to stop" in message and "not recorded" in message, message
            assert session in stop.reason
            assert not any(isinstance(reply, ActionMessage) for reply in later), later
            # With room again, a new session for the robot records the old one's stop first: one active per robot.
            fresh = client.post("/v1/sessions", json={"robot_id": "arm-estop", "goal_id": goal})
            assert fresh.status_code == 201, fresh.text
            assert client.get(f"/v1/sessions/{session}").json()["status"] == "stopped"
            active = client.get("/v1/sessions", params={"status": "active", "robot_id": "arm-estop"}).json()["items"]
            assert [item["id"] for item in active] == [fresh.json()["id"]]


def test_the_emergency_stop_on_a_full_disk_stops_every_session_and_says_which_stops_were_not_recorded(tmp_path):
    """POST /v1/sessions/stop-all while the disk is full: no session is planned any more (an act is 409
    session_stopped, for the first session and the others alike), and the 507 names the sessions whose stop
    could not be recorded."""
    with small_tmpfs(tmp_path / "disk", "4m") as disk:
        with tiny_service(disk / "data") as server, httpx.Client(base_url=server.url, timeout=60) as client:
            goal = upload(client).json()["id"]
            sessions = [client.post("/v1/sessions", json={"robot_id": f"arm-{i}", "goal_id": goal}).json()["id"]
                        for i in range(3)]
            assert all(act(client, session).status_code == 200 for session in sessions)
            filler = fill(disk, 0)
            try:
                response = client.post("/v1/sessions/stop-all")
                after = [act(client, session) for session in sessions]
            finally:
                filler.unlink()
            message = assert_error(response, 507, "storage_full")["message"]
            assert all(session in message for session in sessions), message
            for answer in after:
                assert_error(answer, 409, "session_stopped")
            stopped = client.post("/v1/sessions/stop-all").json()   # with room again, the stops are recorded
            assert sorted(stopped["stopped_sessions"]) == sorted(sessions)
            assert client.get("/v1/sessions", params={"status": "active"}).json()["items"] == []
