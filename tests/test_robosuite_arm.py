"""robosuite's Panda behind our `Arm` interface, run from its own environment (`make robosuite`).

Both tests cross the real boundary: robosuite's own simulator in a separate process, and a real
service (uvicorn + ZeroMQ bridge) driving it through `jepa-planner sim-arm --env robosuite`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import numpy as np
import pytest

from robot_bridge import robosuite_env
from server.local_server import LocalServer
from server.serve_command import build_service
from server.settings import ServerSettings
from test_api import FAST_PLANNER, png_bytes

ROBOSUITE_PYTHON = robosuite_env.robosuite_python()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not ROBOSUITE_PYTHON.exists(),
                       reason=f"no robosuite environment at {ROBOSUITE_PYTHON} (`make robosuite` makes it)"),
]
ENV = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}


def test_robosuite_arm_reports_poses_in_the_project_convention_and_tracks_targets():
    done = subprocess.run([str(ROBOSUITE_PYTHON), "-m", "robot_bridge.robosuite_arm", "--trials", "3", "--json"],
                          capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    x, y, z, roll, pitch, yaw, gripper = report["home_state"]
    # Base frame: the grip site starts ~0.46 m in front of the base, on its centre line, just above the
    # table (0.112 m below the base); pointing down (roll = +-pi) with the tool offset making yaw ~ 0.
    assert 0.35 < x < 0.6 and abs(y) < 0.05 and -0.11 < z < 0.25
    assert abs(abs(roll) - np.pi) < 0.3 and abs(pitch) < 0.3 and abs(yaw) < 0.2
    assert 0.0 <= gripper <= 1.0
    assert report["image_shape"] == [64, 64, 3] and report["lower_half_brighter"], "frames must be upright"
    # Absolute OSC targets of up to 5 cm per axis: within 3 cm after one period, within 1 cm after four.
    assert report["error_after_one_period_m"] < 0.03 and report["error_settled_m"] < 0.01
    assert report["rotation_drift_rad"] < 0.1
    assert report["success_at_reset"] is False  # robosuite's own Lift check: the cube starts on the table


def test_sim_arm_command_drives_robosuite_from_a_real_service(tmp_path):
    settings = ServerSettings(model="tiny", device="cpu", bridge="tcp://127.0.0.1:*", planner=FAST_PLANNER,
                              data_dir=tmp_path / "data")
    with LocalServer(build_service(settings), with_bridge=True) as server:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=60) as http:
            goal = http.post("/v1/goals", files={"image": ("goal.png", png_bytes(3), "image/png")})
            assert goal.status_code == 201, goal.text
            session = http.post("/v1/sessions", json={"robot_id": "panda0", "goal_id": goal.json()["id"]})
            assert session.status_code == 201, session.text
            summary_path = tmp_path / "summary.json"
            # Through the project's own CLI, which re-runs the command in the robosuite environment.
            done = subprocess.run(
                [sys.executable, "-m", "server.cli", "sim-arm", "--env", "robosuite", "--task", "Lift",
                 "--endpoint", server.bridge.endpoint, "--robot-id", "panda0", "--steps", "12", "--rate", "4",
                 "--summary", str(summary_path)],
                capture_output=True, text=True, timeout=300, env=ENV)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
            summary = json.loads(summary_path.read_text())
            assert summary["steps"] == 12
            steps = http.get(f"/v1/sessions/{session.json()['id']}/steps").json()
    assert len(steps["items"]) >= 1, "the service planned for the robosuite arm at least once"
    assert summary["stats"].get("moves", 0) >= 1, summary


def test_lift_subgoals_come_from_a_scripted_grasp_that_robosuite_counts_as_lifted_and_leave_the_scene_untouched():
    script = """
import json, numpy as np
from robot_bridge.robosuite_arm import RobosuiteArm, RobosuiteConfig
from robot_bridge.evaluation.tasks import RobosuiteEpisode, _pose_at
arm = RobosuiteArm(RobosuiteConfig(), seed=3)
episode = RobosuiteEpisode(arm, np.random.default_rng(0), "lift")
untouched = bool(np.array_equal(arm.render(), episode.start_image))
success_before = arm.check_success()
cube = arm.object_position()
for position, gripper in ((cube + [0, 0, 0.1], 0.0), (cube, 0.0), (cube, 1.0), (cube + [0, 0, 0.12], 1.0)):
    arm.drive_to(_pose_at(episode.start_state, position, gripper), 8)
print(json.dumps({"goals": len(episode.goal_images), "untouched": untouched, "before": success_before,
                  "after": arm.check_success(), "distinct": len({g.tobytes() for g in episode.goal_images})}))
"""
    done = subprocess.run([str(ROBOSUITE_PYTHON), "-c", script], capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["goals"] == 4 and report["distinct"] == 4
    assert report["untouched"], "rendering the goals must restore the simulator state exactly"
    assert report["before"] is False and report["after"] is True, "the scripted grasp the goals show really lifts"


def test_a_grasped_cube_stays_held_under_zero_gripper_deltas_and_holds_and_drops_when_asked_to_open():
    """Fingers around the cube read ~0.3 closed: a plan that keeps that reading (zero gripper delta, as
    achieved-delta labels teach) or a hold must keep the cube; a target well below it lets go."""
    script = """
import json, numpy as np
from robot_bridge.robosuite_arm import RobosuiteArm, RobosuiteConfig
from robot_bridge.evaluation.tasks import _pose_at
arm = RobosuiteArm(RobosuiteConfig(), seed=4)
arm.reset()
start, cube = arm.state(), arm.object_position().copy()
for position, gripper in ((cube + [0, 0, 0.1], 0.0), (cube, 0.0), (cube, 1.0), (cube + [0, 0, 0.1], 1.0)):
    arm.drive_to(_pose_at(start, position, gripper), 8)
holding = float(arm.state()[6])
for _ in range(4):
    arm.move_to(arm.state())          # the planner's zero delta: the measured pose as the target
arm.move_to(_pose_at(start, arm.state()[:3] + [0, 0, 0.03], arm.state()[6]))
for _ in range(4):
    arm.hold()
kept = arm.check_success()
opened = arm.state(); opened[6] = max(0.0, opened[6] - 0.3)
for _ in range(6):
    arm.move_to(opened)
print(json.dumps({"holding": holding, "kept": kept, "dropped": not arm.check_success()}))
"""
    done = subprocess.run([str(ROBOSUITE_PYTHON), "-c", script], capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert 0.1 < report["holding"] < 0.5, report   # partly closed: the cube is between the fingers
    assert report["kept"], "zero gripper deltas and holds must keep a grasped cube lifted"
    assert report["dropped"], "a target more open than the fingers must open them"


def test_a_restored_open_hand_stays_open_when_told_to_open_after_the_gripper_was_closed():
    """robosuite's gripper command moves a step per robosuite step and is not in the simulator's state: a
    saved open hand restored after a grasp (as rendering goal images does) must open, not close first."""
    script = """
import json, numpy as np
from robot_bridge.robosuite_arm import RobosuiteArm, RobosuiteConfig
from robot_bridge.evaluation.tasks import _pose_at
arm = RobosuiteArm(RobosuiteConfig(), seed=5)
arm.reset()
start, cube = arm.state(), arm.object_position().copy()
fresh = arm.save_state()                           # right after a reset, as an episode's goal rendering saves
arm.drive_to(_pose_at(start, cube + [0, 0, 0.1], 1.0), 2)
arm.restore_state(fresh)
for position, gripper in ((cube + [0, 0, 0.1], 0.0), (cube, 0.0)):
    arm.drive_to(_pose_at(start, position, gripper), 8)
saved, open_hand = arm.save_state(), arm.state()
arm.drive_to(_pose_at(start, cube, 1.0), 3)        # close on the cube, as a rendered grasp goal does
closed = float(arm.state()[6])
arm.restore_state(saved)
arm.move_to(_pose_at(start, cube, 0.0))            # stay open
print(json.dumps({"closed": closed, "restored": float(open_hand[6]), "after": float(arm.state()[6])}))
"""
    done = subprocess.run([str(ROBOSUITE_PYTHON), "-c", script], capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["closed"] > 0.2 and report["restored"] < 0.05, report
    assert report["after"] < 0.05, report   # without the gripper command in the saved state: ~0.27


def test_grasp_scenes_show_a_closed_hand_carrying_the_cube_and_probe_grasp_compares_real_with_imagined(tmp_path):
    """grasp-scenes re-runs itself in robosuite's environment; probe-grasp reads its file with the
    embedded robosuite model: the encoder must see the carried cube (a clear real gap)."""
    scenes = tmp_path / "scenes.npz"
    made = subprocess.run([sys.executable, "-m", "server.cli", "grasp-scenes", "--out", str(scenes), "--scenes", "2"],
                          capture_output=True, text=True, timeout=300, env=ENV)
    assert made.returncode == 0, made.stderr[-2000:]
    with np.load(scenes) as data:
        assert data["start_image"].shape == (2, 64, 64, 3) and data["closed_states"].shape == (2, 2, 7)
        assert np.all(data["closed_cube_rise"] > 0.01), data["closed_cube_rise"]   # close, raise: carried
        assert np.all(np.abs(data["open_cube_rise"]) < 0.005), data["open_cube_rise"]  # raise alone: left behind
        # At the lifted goal: the closed hand keeps the cube, the opened one drops it.
        assert np.all(np.abs(data["hold_closed_cube_rise"]) < 0.005), data["hold_closed_cube_rise"]
        assert np.all(data["hold_open_cube_rise"] < -0.03), data["hold_open_cube_rise"]
        # What each period asked for: the open branch asked for the open hand at once (a commanded-delta
        # model's label); the fingers lag behind that command, so the achieved change says much less.
        asked = data["hold_open_commanded"][:, 0, 6]
        achieved = data["hold_open_states"][:, 0, 6] - data["hold_start_state"][:, 6]
        assert np.all(asked < -0.2) and np.all(np.abs(achieved) < 0.5 * np.abs(asked)), (asked, achieved)
    probed = subprocess.run([sys.executable, "-m", "server.cli", "probe-grasp", "--scenes", str(scenes), "--json"],
                            capture_output=True, text=True, timeout=300, env=ENV)
    assert probed.returncode == 0, probed.stderr[-2000:]
    summary = json.loads(probed.stdout.strip().splitlines()[-1])
    assert summary["scenes"] == 2 and summary["real_gap"] > 0.03, summary
    assert summary["hold"]["real_gap"] > 0.05 and np.isfinite(summary["hold"]["imagined_gap"]), summary
    assert np.isfinite(summary["imagined_gap"])
    # Each imagined frame's distance to both real outcomes; the real ones differ, so these cannot all agree.
    distances = [summary[f"imagined_{b}_to_real_{o}"] for b in ("closed", "open") for o in ("closed", "open")]
    assert all(np.isfinite(distances)) and distances[0] != distances[1]


def test_collect_in_robosuite_records_grasps_that_lift_the_cube_and_repeats_under_its_seed(tmp_path):
    from robot_bridge.episodes import ENVIRONMENT_STATE, EpisodeReader

    def collect(out, episodes):
        # Through the project's own CLI, which re-runs the command in the robosuite environment.
        done = subprocess.run(
            [sys.executable, "-m", "server.cli", "collect", "--env", "robosuite", "--out", str(out), "--episodes",
             str(episodes), "--steps", "16", "--image-size", "32", "--seed", "3", "--grasp-fraction", "1",
             "--push-fraction", "0", "--no-progress"], capture_output=True, text=True, timeout=300, env=ENV)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return EpisodeReader(out)

    reader = collect(tmp_path / "two", 2)
    assert reader.num_episodes == 2 and reader.frames(0).shape == (17, 32, 32, 3)
    assert reader.info["robot_type"] == "robosuite_panda"   # it said the project's own sim arm
    for episode in reader.episodes:
        assert reader.task(episode) == "lift the cube"
        cube = reader.column(ENVIRONMENT_STATE, episode)
        assert cube[:, 2].max() - cube[0, 2] > 0.05, "the scripted grasp lifts the cube"
        assert 0.1 < reader.states(episode)[-1, 6] < 0.9, "the gripper ends closed on the cube, not on nothing"
    # Episode i depends only on (seed, i): robosuite's placement is re-seeded per episode.
    again = collect(tmp_path / "one", 1)
    np.testing.assert_allclose(again.states(0), reader.states(0), atol=1e-6)
    assert not np.allclose(reader.column(ENVIRONMENT_STATE, 1)[0], reader.column(ENVIRONMENT_STATE, 0)[0])


def test_push_goal_is_where_a_scripted_push_left_the_cube_and_rendering_it_leaves_the_scene_untouched():
    script = """
import json, numpy as np
from robot_bridge.robosuite_arm import RobosuiteArm, RobosuiteConfig
from robot_bridge.evaluation.tasks import RobosuiteEpisode
arm = RobosuiteArm(RobosuiteConfig(), seed=3)
episode = RobosuiteEpisode(arm, np.random.default_rng([1, 0]), "push")
print(json.dumps({"goals": len(episode.goal_images), "untouched": bool(np.array_equal(arm.render(), episode.start_image)),
                  "start_distance": episode.distance()}))
"""
    done = subprocess.run([str(ROBOSUITE_PYTHON), "-c", script], capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["goals"] == 7 and report["untouched"]
    assert 0.03 < report["start_distance"] < 0.2, "the scripted push moved the cube a few centimetres"


def test_a_robosuite_episode_is_the_same_whatever_episodes_ran_before_it_in_the_process():
    """An evaluation split into shards must run the same episodes: robosuite's reset draws the cube's
    placement from one generator for the whole process (episode 1 differed after episode 0), and its
    gripper command outlived the reset (a hand closed in one episode closed again at the next start).
    The cube's size is drawn once per process, when robosuite builds the model: shards share the seed."""
    script = """
import json, numpy as np
from robot_bridge.robosuite_arm import RobosuiteArm, RobosuiteConfig
from robot_bridge.evaluation.tasks import RobosuiteEpisode, _pose_at
def start(arm, index):
    episode = RobosuiteEpisode(arm, np.random.default_rng([1, index]), "reach")
    return [*arm.object_position().tolist(), *episode.start_state.tolist()]
after = RobosuiteArm(RobosuiteConfig(), seed=3)
first = start(after, 0)
after.drive_to(_pose_at(after.state(), after.state()[:3], 1.0), 3)    # the episode ends with the hand closed
closed = float(after.state()[6])
at_reset = float(after.reset(seed=7).state[6])
holds = []
for _ in range(8):                                                   # two seconds of waiting for a plan
    after.hold()
    holds.append(float(after.state()[6]))
second = start(after, 1)
alone = RobosuiteArm(RobosuiteConfig(), seed=3)
print(json.dumps({"first": first, "second": second, "alone": start(alone, 1), "closed": closed,
                  "at_reset": at_reset, "holds": holds}))
"""
    done = subprocess.run([str(ROBOSUITE_PYTHON), "-c", script], capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(report["alone"], report["second"], atol=1e-6)
    assert not np.allclose(report["first"][:3], report["second"][:3])   # the cube does move between episodes
    # Holding right after a reset opens the half-open hand and keeps it open (it closed to 0.83, then
    # opened and closed in turn while the arm held).
    assert report["closed"] > 0.5 and 0.3 < report["at_reset"] < 0.6, report
    assert max(report["holds"]) <= report["at_reset"] and max(report["holds"][2:]) < 0.05, report
