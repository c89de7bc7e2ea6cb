"""probe-grasp on files that are not grasp scenes: a clear error, exit 2."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from planner import grasp_probe


def probe(path, capsys) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    grasp_probe.add_arguments(parser)
    code = grasp_probe.run(parser.parse_args(["--scenes", str(path), "--model", "tiny", "--device", "cpu"]))
    return code, capsys.readouterr().err


def test_a_file_without_scenes_or_no_file_is_refused_with_the_reason(tmp_path, capsys):
    other = tmp_path / "other.npz"
    np.savez(other, frames=np.zeros((2, 8, 8, 3), np.uint8))
    code, error = probe(other, capsys)
    assert code == 2 and "not a grasp-scenes file" in error and "start_image" in error
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(other.read_bytes()[:100])
    for broken in (truncated, tmp_path / "missing.npz"):
        code, error = probe(broken, capsys)
        assert code == 2 and error.startswith("jepa-planner probe-grasp:"), error
    code, error = probe(tmp_path / "missing.npz", capsys)
    assert code == 2 and "missing.npz" in error


def scenes_file(path, count: int = 2, size: int = 48):
    """A grasp-scenes file of random frames (the tiny model's 48 px) and plausible poses."""
    rng = np.random.default_rng(0)
    start = np.tile([0.55, 0.0, -0.08, 3.14, 0.0, 0.0, 0.0], (count, 1))
    raised = start + [0, 0, 0.03, 0, 0, 0, 0.3]
    images = {key: rng.integers(0, 255, (count, size, size, 3), dtype=np.uint8)
              for key in ("start_image", "goal_image", "closed_image", "open_image")}
    np.savez(path, start_state=start, closed_states=np.stack([raised, raised], 1), open_states=np.stack([start, start], 1),
             **images)
    return path


def test_plan_reports_the_lift_planners_first_step_from_each_scene_and_refuses_a_bad_budget(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    grasp_probe.add_arguments(parser)
    path = scenes_file(tmp_path / "scenes.npz")
    arguments = ["--scenes", str(path), "--model", "tiny", "--device", "cpu", "--json"]
    assert grasp_probe.run(parser.parse_args(arguments + ["--plan", "16x2"])) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["plan"] == "16x2" and 0 <= summary["plans_closing_first"] <= 2
    assert 0 < summary["mean_first_move_m"] <= 0.05 * 3 ** 0.5 + 1e-6   # within the lift planner's 5 cm per axis
    for bad in ("400", "5x10", "axb"):
        assert grasp_probe.run(parser.parse_args(arguments + ["--plan", bad])) == 2
        assert "--plan takes SAMPLESxITERATIONS" in capsys.readouterr().err


def test_probes_in_bf16_as_serve_dtype_would_and_imagines_about_what_float32_does(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    grasp_probe.add_arguments(parser)
    path = scenes_file(tmp_path / "scenes.npz")
    gaps = {}
    for dtype in ("float32", "bfloat16"):
        arguments = ["--scenes", str(path), "--model", "tiny", "--device", "cpu", "--dtype", dtype, "--json"]
        assert grasp_probe.run(parser.parse_args(arguments)) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["dtype"] == dtype
        gaps[dtype] = summary["imagined_closed_to_real_closed"]
    assert gaps["bfloat16"] != gaps["float32"] and gaps["bfloat16"] == pytest.approx(gaps["float32"], rel=0.05)


def test_hold_scenes_at_the_lifted_goal_are_probed_where_the_file_has_them(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    grasp_probe.add_arguments(parser)
    older = scenes_file(tmp_path / "older.npz")
    with np.load(older) as data:
        scenes = {key: data[key] for key in data.files}
    # At the goal: keeping the hand closed leaves the goal's own frame (real energy 0), opening changes it.
    hold = {grasp_probe.HOLD_PREFIX + key: value for key, value in scenes.items()}
    hold["hold_goal_image"] = hold["hold_closed_image"] = scenes["start_image"]
    newer = tmp_path / "newer.npz"
    np.savez(newer, **scenes, **hold)
    summaries = {}
    for path in (older, newer):
        assert grasp_probe.run(parser.parse_args(["--scenes", str(path), "--model", "tiny", "--device", "cpu", "--json"])) == 0
        summaries[path.stem] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "hold" not in summaries["older"]
    held = summaries["newer"]["hold"]
    rows = grasp_probe.scene_gaps(_tiny(), hold, grasp_probe.HOLD_PREFIX)
    assert all(row["real_closed"] == 0.0 for row in rows)
    assert held["real_gap"] == pytest.approx(np.mean([row["real_open"] for row in rows])) and held["real_gap"] > 0
    assert summaries["newer"]["real_gap"] == summaries["older"]["real_gap"]  # the grasp scenes are unchanged
    # With --plan: how many plans from the held cube open the hand first (several seeds per scene).
    assert grasp_probe.run(parser.parse_args(["--scenes", str(newer), "--model", "tiny", "--device", "cpu",
                                              "--plan", "16x2", "--json"])) == 0
    planned = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["hold"]
    assert planned["plans"] == 2 * grasp_probe.HOLD_PLAN_SEEDS and 0 <= planned["plans_opening_first"] <= planned["plans"]
    plans = grasp_probe.first_plans(_tiny(), hold, 16, 2, prefix=grasp_probe.HOLD_PREFIX, seeds=2)
    assert len(plans) == 4 and len({plan["first_move_m"] for plan in plans}) == 4  # each seed its own plan
    # (the move, not the gripper: the planner rounds small gripper deltas to 0, so those can coincide)


def _tiny():
    from world_model import load_world_model

    return load_world_model("tiny", device="cpu")


def test_a_commanded_delta_model_imagines_from_the_commanded_actions_a_file_records(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    grasp_probe.add_arguments(parser)
    older = scenes_file(tmp_path / "older.npz")
    arguments = ["--model", "tiny", "--device", "cpu", "--action-meaning", "commanded-delta", "--json"]
    assert grasp_probe.run(parser.parse_args(["--scenes", str(older), *arguments])) == 2
    assert "no commanded actions" in capsys.readouterr().err
    with np.load(older) as data:
        scenes = {key: data[key] for key in data.files}
    # Closed: asked for exactly what happened. Open: told to open (-0.5) while the gripper had not moved yet.
    # (no rotation in these poses: the pose change is a plain difference)
    commanded_closed = np.diff(np.concatenate([scenes["start_state"][:, None], scenes["closed_states"]], 1), axis=1)
    commanded_open = np.zeros((2, 2, 7))
    commanded_open[:, 0, 6] = -0.5
    commanded_open[:, 1, :3] = 0.05   # and asked to move on, which it then did not do either
    newer = tmp_path / "newer.npz"
    np.savez(newer, **scenes, closed_commanded=commanded_closed, open_commanded=commanded_open)
    summaries = {}
    for meaning in grasp_probe.ACTION_MEANINGS:
        assert grasp_probe.run(parser.parse_args(["--scenes", str(newer), "--model", "tiny", "--device", "cpu",
                                                  "--action-meaning", meaning, "--json"])) == 0
        summaries[meaning] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summaries["commanded-delta"]["action_meaning"] == "commanded-delta"
    assert summaries["commanded-delta"]["imagined_closed_to_real_open"] == pytest.approx(summaries["achieved"]["imagined_closed_to_real_open"], abs=1e-6)
    assert summaries["commanded-delta"]["imagined_open_to_real_open"] != pytest.approx(summaries["achieved"]["imagined_open_to_real_open"], abs=1e-5)
    # The states it imagines from are the planner's own chained poses (the real ones for achieved labels):
    # the states the scene recorded after a lagging command do not leak in.
    model, seen = _tiny(), []
    rollout = model.rollout
    model.rollout = lambda context, actions, states: seen.append(states) or rollout(context, actions, states)
    asked = commanded_open.copy()
    asked[:, 0, :3] = 0.03   # asked to move at once; the recorded states never moved
    grasp_probe.scene_gaps(model, {**scenes, "closed_commanded": commanded_closed, "open_commanded": asked},
                           action_meaning="commanded-delta")
    expected = scenes["start_state"][0] + asked[0, 0]   # no rotation: composing is adding
    expected[6] = 0.0                                    # (the gripper stays within 0 .. 1)
    np.testing.assert_allclose(seen[1][0, 1].numpy(), expected, atol=1e-6)
    assert not np.allclose(seen[1][0, 1].numpy(), scenes["open_states"][0, 0], atol=1e-3)
