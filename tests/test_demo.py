"""`jepa-planner demo` / `eval --env sim`: goal sampling, and one short episode end to end (a real
`jepa-planner serve` process, ZeroMQ, MuJoCo)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from robot_bridge import eval_command
from robot_bridge.evaluation import tasks
from server import cli


@pytest.fixture(scope="module")
def arm():
    from robot_bridge.sim import SimArm, SimConfig

    sim = SimArm(SimConfig(image_height=32, image_width=32), seed=0)
    yield sim
    sim.close()


@pytest.mark.parametrize("index", range(5))
def test_reach_goals_are_10_to_25_cm_away_inside_the_workspace_and_reachable(arm, index):
    episode = tasks.SimEpisode(arm, np.random.default_rng([9, index]), "reach")
    offset = np.linalg.norm(episode.goal_position - episode.start_state[:3])
    assert 0.10 <= offset <= 0.25
    assert np.all(episode.goal_position >= tasks.GOAL_LOW) and np.all(episode.goal_position <= tasks.GOAL_HIGH)
    assert episode.distance() == pytest.approx(offset)
    # The goal image shows the arm somewhere else; rendering it left the simulation untouched.
    assert not np.array_equal(episode.goal_image, episode.start_image)
    np.testing.assert_array_equal(arm.render(), episode.start_image)


def test_push_goals_move_the_cube_5_to_15_cm_and_keep_the_arm(arm):
    episode = tasks.SimEpisode(arm, np.random.default_rng([9, 0]), "push")
    offset = np.linalg.norm(episode.goal_position[:2] - arm.cube_position[:2])
    assert 0.05 <= offset <= 0.15
    assert episode.distance() == pytest.approx(offset)


def test_one_episode_end_to_end_writes_media_and_a_json_summary(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--episodes", "1", "--steps", "3", "--random-init", "--model", "tiny", "--samples", "16",
            "--iterations", "1", "--seed", "4", "--out", str(out), "--json"]
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["episodes"] == 1 and summary["model"] == "random-init"
    assert summary["successes"] == int(summary["mean_final_distance_m"] < summary["success_radius_m"])
    assert summary["mean_plan_s"] > 0
    for name in ("episode_00.gif", "episode_00.png", "energy.png", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    detail = json.loads((out / "summary.json").read_text())["episodes_detail"][0]
    # Exactly the step budget of executed plans, each with its energy and the distance after it.
    assert detail["moves"] == 3 and len(detail["energies"]) == 3 and len(detail["distances_m"]) == 3
    assert len(detail["grippers"]) == 3 and all(0.0 <= g <= 1.0 for g in detail["grippers"])
    # The arm holds when the loop ends, which only lets it settle where the last plan sent it.
    assert detail["final_distance_m"] == pytest.approx(detail["distances_m"][-1], abs=0.005)


def test_bad_arguments_are_refused(tmp_path, capsys):
    assert cli.main(["demo", "--episodes", "0", "--out", str(tmp_path)]) == 2
    assert "--episodes" in capsys.readouterr().err
    assert cli.main(["demo", "--model", str(tmp_path / "missing.safetensors"), "--episodes", "1",
                     "--out", str(tmp_path)]) == 1
    assert "did not load" in capsys.readouterr().err


def test_planner_settings_the_service_refuses_are_a_usage_error_not_a_traceback(tmp_path, capsys):
    argv = ["demo", "--episodes", "1", "--steps", "1", "--model", "tiny", "--random-init", "--maxnorm", "0",
            "--out", str(tmp_path)]
    assert cli.main(argv) == 2
    assert "maxnorm" in capsys.readouterr().err


def test_push_searches_wider_than_reach_unless_told(tmp_path, capsys):
    for task, extra, samples in (("push", [], eval_command.PUSH_SAMPLES), ("reach", ["--samples", "24"], 24)):
        argv = ["demo", "--task", task, "--episodes", "1", "--steps", "1", "--model", "tiny", "--random-init",
                "--iterations", "1", "--maxnorm", "0.02", "--out", str(tmp_path / task), "--json", *extra]
        assert cli.main(argv) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["planner"]["samples"] == samples and summary["planner"]["maxnorm"] == 0.02


def test_a_rate_slower_than_the_bridge_allows_runs_the_blocking_loop_instead_of_hanging(tmp_path, capsys):
    """A hello slower than 0.1 Hz is refused by the bridge: an eval paced to a planner that slow (seen: 0.08 Hz,
    400 x 10 on a wide predictor) waited forever for a welcome. It now says so and uses the blocking loop."""
    argv = ["demo", "--episodes", "1", "--steps", "2", "--random-init", "--model", "tiny", "--samples", "16",
            "--iterations", "1", "--seed", "4", "--rate", "0.05", "--out", str(tmp_path / "demo"), "--json"]
    assert cli.main(argv) == 0
    output = capsys.readouterr().out
    assert "the blocking loop instead" in output and "blocking loop at" in output
    assert json.loads(output.strip().splitlines()[-1])["episodes"] == 1


def test_loop_blocking_skips_the_pacing_warm_up_and_runs_the_papers_loop(tmp_path, capsys):
    """A rate measured once up front outlives a machine that gets busier or quieter; the blocking loop
    measures nothing and waits for each plan (how long evaluations ran beside a training run)."""
    argv = ["demo", "--episodes", "1", "--steps", "2", "--random-init", "--model", "tiny", "--samples", "16",
            "--iterations", "1", "--seed", "4", "--loop", "blocking", "--out", str(tmp_path / "demo"), "--json"]
    assert cli.main(argv) == 0
    output = capsys.readouterr().out
    assert "blocking loop at 4.00 Hz" in output and "control rate" not in output
    assert json.loads(output.strip().splitlines()[-1])["episodes"] == 1


def test_an_evaluation_split_into_shards_runs_the_same_episodes_and_merges_into_one_summary(tmp_path, capsys):
    common = ["demo", "--steps", "1", "--random-init", "--model", "tiny", "--samples", "16", "--iterations", "1",
              "--seed", "4", "--json"]
    assert cli.main([*common, "--episodes", "2", "--out", str(tmp_path / "whole")]) == 0
    assert cli.main([*common, "--episodes", "1", "--first-episode", "1", "--out", str(tmp_path / "second")]) == 0
    assert cli.main([*common, "--episodes", "1", "--out", str(tmp_path / "first")]) == 0
    capsys.readouterr()
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())["episodes_detail"]
    second = json.loads((tmp_path / "second" / "summary.json").read_text())
    assert second["episode_indices"] == [1]
    # The same episode wherever it runs: its start (arm, cube, goal) comes from (seed, index) alone.
    assert second["episodes_detail"][0]["start_distance_m"] == pytest.approx(whole[1]["start_distance_m"], abs=1e-9)
    assert whole[0]["start_distance_m"] != pytest.approx(whole[1]["start_distance_m"])

    merged_out = tmp_path / "merged"
    assert cli.main(["eval", "--merge", str(tmp_path / "second"), str(tmp_path / "first" / "summary.json"),
                     "--out", str(merged_out), "--json"]) == 0
    merged = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert merged["episodes"] == 2 and merged["episode_indices"] == [0, 1]
    details = json.loads((merged_out / "summary.json").read_text())["episodes_detail"]
    assert [d["start_distance_m"] for d in details] == pytest.approx([d["start_distance_m"] for d in whole])
    assert merged["successes"] == sum(d["success"] for d in details)


def test_merging_refuses_repeated_episodes_other_evaluations_and_overwriting_a_shard(tmp_path, capsys):
    common = ["demo", "--steps", "1", "--random-init", "--model", "tiny", "--samples", "16", "--iterations", "1"]
    assert cli.main([*common, "--episodes", "1", "--seed", "4", "--out", str(tmp_path / "a")]) == 0
    assert cli.main([*common, "--episodes", "1", "--seed", "5", "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    shard = (tmp_path / "a" / "summary.json").read_text()
    for shards, out, message in (([tmp_path / "a", tmp_path / "a"], tmp_path / "m1", "more than one shard"),
                                 ([tmp_path / "a", tmp_path / "b"], tmp_path / "m2", "seed"),
                                 ([tmp_path / "a", tmp_path / "missing"], tmp_path / "m3", "missing"),
                                 ([tmp_path / "a"], tmp_path / "a", "holds a shard")):
        assert cli.main(["eval", "--merge", *map(str, shards), "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
    assert (tmp_path / "a" / "summary.json").read_text() == shard


def test_robosuite_lift_defaults_to_the_embedded_model_that_imagines_grasps():
    assert eval_command.default_model("robosuite", "lift") == "robosuite-lift"
    assert [eval_command.default_model("robosuite", task) for task in ("reach", "push")] == ["robosuite"] * 2
    assert eval_command.default_model("sim", "push") == "demo"


def test_lift_plans_with_the_official_search_at_horizon_2_unless_told():
    import argparse

    from planner.config import PlannerConfig

    parser = argparse.ArgumentParser()
    eval_command.add_arguments(parser)
    lift = eval_command.planner_settings(parser.parse_args(["--env", "robosuite", "--task", "lift"]))
    assert (lift["samples"], lift["iterations"], lift["horizon"]) == (400, 10, 2)
    # Lift holds at the lifted goal, with hysteresis; the service accepts those settings.
    assert lift["arrival_release_energy"] > lift["arrival_energy"] > 0
    PlannerConfig(**lift)
    reach = eval_command.planner_settings(parser.parse_args(["--env", "robosuite", "--task", "reach"]))
    assert (reach["samples"], reach["iterations"], reach["horizon"]) == (128, 4, 1)
    assert reach["arrival_energy"] is None and reach["arrival_release_energy"] is None
    told = eval_command.planner_settings(parser.parse_args(["--task", "lift", "--samples", "64", "--iterations", "2"]))
    assert (told["samples"], told["iterations"], told["horizon"]) == (64, 2, 2)


def test_an_evaluation_killed_part_way_keeps_the_episodes_it_finished_as_a_mergeable_shard(tmp_path, capsys):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed"
    run = subprocess.Popen([sys.executable, "-m", "server.cli", "demo", "--episodes", "50", "--steps", "2",
                            "--random-init", "--model", "tiny", "--samples", "16", "--iterations", "1", "--seed", "4",
                            "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / "summary.json").exists() and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.2)
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=10)
    finally:
        if run.poll() is None:
            run.kill()
    kept = json.loads((out / "summary.json").read_text())
    assert 1 <= kept["episodes"] < 50 and kept["episode_indices"] == list(range(kept["episodes"]))
    assert cli.main(["eval", "--merge", str(out), "--out", str(tmp_path / "merged"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["episodes"] == kept["episodes"]


@pytest.mark.parametrize("until_success", [True, False])
def test_until_success_ends_an_episode_at_its_first_success_and_says_so(tmp_path, capsys, until_success):
    # A 1 m radius: every step is a success, so the first one is.
    out = tmp_path / "run"
    argv = ["eval", "--episodes", "1", "--steps", "3", "--random-init", "--model", "tiny", "--samples", "16",
            "--iterations", "1", "--seed", "4", "--success-radius", "1.0", "--out", str(out), "--json",
            "--until-success" if until_success else "--no-until-success"]
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["until_success"] is until_success and summary["succeeded_at_some_step"] == 1
    detail = json.loads((out / "summary.json").read_text())["episodes_detail"][0]
    assert detail["first_success_step"] == 1
    assert detail["moves"] == (1 if until_success else 3)


def test_until_success_is_on_for_lift_only_and_survives_the_rerun_in_robosuites_environment():
    import argparse

    from robot_bridge import robosuite_env

    parser = argparse.ArgumentParser()
    eval_command.add_arguments(parser)
    for argv in (["--task", "lift", "--no-until-success"], ["--task", "reach", "--until-success"], ["--task", "lift"]):
        args = parser.parse_args(argv)
        assert parser.parse_args(robosuite_env.as_argv(args, eval_command.add_arguments)) == args
    ends = [eval_command.ends_at_first_success(parser.parse_args(["--env", "robosuite", "--task", task]))
            for task in ("reach", "push", "lift")]
    assert ends == [False, False, True]


class _SaggingLift(tasks.Episode):
    """robosuite's check passes after step 2 only: the cube then sags just below its line."""

    task = "lift"

    def __init__(self):
        class _Arm:
            def state(self):
                return np.zeros(7)

            def render(self):
                return np.zeros((4, 4, 3), np.uint8)

        self.arm, self.start_image, self.steps = _Arm(), np.zeros((4, 4, 3), np.uint8), 0

    def distance(self) -> float:
        return 0.1

    def task_success(self) -> bool:
        return self.steps == 2

    def succeeded(self, radius: float) -> bool:
        return self.task_success()


@pytest.mark.parametrize("until_success", [True, False])
def test_an_episode_ended_at_its_first_success_is_judged_at_that_step_not_after_it(until_success):
    from robot_bridge.client import StepRecord
    from robot_bridge.evaluation.harness import _Recorder
    from robot_bridge.protocol import ActionMessage

    episode = _SaggingLift()
    recorder = _Recorder(episode, 0, steps=3, radius=0.05, until_success=until_success)
    for seq in range(3 if not until_success else 2):
        episode.steps += 1
        action = ActionMessage(delta=np.full(7, 0.01), target=np.zeros(7), energy=0.1, seq=seq)
        recorder.on_step(StepRecord(seq, None, seq, "move", np.zeros(7), action, 0.0))
    episode.steps += 1   # the arm holds once the loop ends; the cube sags
    result = recorder.result()
    assert result.first_success_step == 2
    # Ended there: a success by the check that passed, as robomimic reads it. Run on: judged at the end.
    assert (result.success, result.task_success) == ((True, True) if until_success else (False, False))
