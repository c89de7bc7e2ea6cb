"""RecedingHorizonController: sub-goal schedule, warm start, limits, bad input."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from planner.config import PlannerConfig
from planner.controller import RecedingHorizonController, SubGoal
from planner.noise import RecordedNoise
from planner.search import PlanCancelled
from test_planner_sanity import BlobWorld

FAST = dict(horizon=1, samples=16, topk=4, iterations=2)


def blob(world, xyz):
    return world.render(torch.tensor(xyz))


def pose(xyz, gripper=0.0):
    return torch.tensor([*xyz, 0.0, 0.0, 0.0, gripper])


def test_step_returns_first_action_target_pose_energy_and_time():
    world = BlobWorld()
    controller = RecedingHorizonController(world, PlannerConfig(horizon=2, samples=64, topk=8, iterations=4), blob(world, (0.54, 0.0, 0.3)))
    step = controller.step(blob(world, (0.5, 0.0, 0.3)), pose((0.5, 0.0, 0.3)))
    assert step.action.shape == (7,) and step.plan.shape == (2, 7)
    torch.testing.assert_close(step.action, step.plan[0])
    torch.testing.assert_close(step.target_pose[:3], torch.tensor([0.5, 0.0, 0.3]) + step.action[:3])
    assert step.action[0] > 0.01  # heads toward the goal along +x
    assert step.planning_seconds > 0 and math.isfinite(step.energy)
    assert step.goal_energy > 0


def test_sub_goal_switches_after_its_step_count():
    world = BlobWorld()
    goals = [SubGoal(blob(world, (0.6, 0.0, 0.3)), max_steps=2), SubGoal(blob(world, (0.4, 0.0, 0.3)))]
    controller = RecedingHorizonController(world, PlannerConfig(**FAST), goals)
    here = blob(world, (0.5, 0.0, 0.3))
    indices = [controller.step(here, pose((0.5, 0.0, 0.3))).goal_index for _ in range(4)]
    assert indices == [0, 0, 1, 1]  # the last goal is never left


def test_sub_goal_switches_when_its_energy_falls_below_threshold():
    world = BlobWorld()
    first, second = (0.6, 0.0, 0.3), (0.4, 0.1, 0.3)
    goals = [SubGoal(blob(world, first), energy_threshold=1e-3), SubGoal(blob(world, second))]
    controller = RecedingHorizonController(world, PlannerConfig(**FAST), goals)
    assert controller.step(blob(world, (0.5, 0.0, 0.3)), pose((0.5, 0.0, 0.3))).goal_index == 0
    arrived = controller.step(blob(world, first), pose(first))  # standing on the first sub-goal
    assert arrived.goal_index == 1
    assert arrived.goal_energy > 1e-3  # reported against the goal it now plans for
    controller.reset()
    assert controller.goal_index == 0 and controller.warm_start is None


def test_a_sub_goal_that_looks_like_the_previous_one_is_held_for_its_steps_not_passed_on_sight():
    """Lift's grasp: 'at the cube, closed' looks almost like 'at the cube, open'. Standing on the open one
    is within any threshold of the closed one too, so it would be passed before the gripper moved."""
    world = BlobWorld()
    at_cube, grasped, lifted = (0.5, 0.0, 0.3), (0.5005, 0.0, 0.3), (0.5, 0.0, 0.42)
    goals = [SubGoal(blob(world, at_cube), max_steps=3, energy_threshold=1e6),
             SubGoal(blob(world, grasped), max_steps=3, energy_threshold=1e6), SubGoal(blob(world, lifted))]
    controller = RecedingHorizonController(world, PlannerConfig(**FAST), goals)
    assert controller.goals[1].energy_threshold < 1e-2 < controller.goals[0].energy_threshold
    here = blob(world, at_cube)
    indices = [controller.step(here, pose(at_cube)).goal_index for _ in range(5)]
    assert indices == [1, 1, 1, 2, 2]   # past the first on sight, then the look-alike's 3 steps
    controller.reset()   # standing on the look-alike itself passes it on sight
    assert controller.step(blob(world, grasped), pose(grasped)).goal_index == 2


def test_holds_on_arrival_at_the_final_goal_and_plans_again_when_off_it():
    world = BlobWorld()
    goal = (0.55, 0.05, 0.3)
    controller = RecedingHorizonController(world, PlannerConfig(**FAST, arrival_energy=1e-3), blob(world, goal))
    at_goal = controller.step(blob(world, goal), pose(goal))
    assert torch.count_nonzero(at_goal.action) == 0 and at_goal.planning_seconds == 0.0 and at_goal.held
    torch.testing.assert_close(at_goal.target_pose, pose(goal))
    away = controller.step(blob(world, (0.5, 0.0, 0.3)), pose((0.5, 0.0, 0.3)))
    assert away.action[0] > 0.01 and away.planning_seconds > 0 and not away.held  # off the goal: plans toward it


def test_arrival_release_energy_keeps_holding_while_the_held_goal_hovers_about_the_arrival_threshold():
    from planner.energy import frame_distance

    world = BlobWorld()
    goal, near, far = (0.55, 0.05, 0.3), (0.555, 0.05, 0.3), (0.5, 0.0, 0.3)
    near_energy = float(frame_distance(blob(world, near), blob(world, goal)))
    far_energy = float(frame_distance(blob(world, far), blob(world, goal)))
    assert 0 < near_energy < far_energy / 4

    def controller(release):
        config = PlannerConfig(**FAST, arrival_energy=near_energy / 2, arrival_release_energy=release)
        return RecedingHorizonController(world, config, blob(world, goal))

    sticky, plain = controller(2 * near_energy), controller(None)
    for each in (sticky, plain):
        assert each.step(blob(world, goal), pose(goal)).planning_seconds == 0.0  # arrived: hold
    assert sticky.step(blob(world, near), pose(near)).planning_seconds == 0.0  # still held
    assert plain.step(blob(world, near), pose(near)).planning_seconds > 0      # plans again at once
    # The hold survives a move to another copy of the model (a replica), and lets go when far off the goal.
    moved = controller(2 * near_energy)
    moved.import_state(sticky.export_state())
    assert moved.step(blob(world, near), pose(near)).planning_seconds == 0.0
    assert moved.step(blob(world, far), pose(far)).planning_seconds > 0
    # Not holding any more: near the goal is not arrived (only within arrival_energy is).
    assert moved.step(blob(world, near), pose(near)).planning_seconds > 0
    with pytest.raises(ValidationError, match="arrival_release_energy"):
        PlannerConfig(arrival_energy=0.1, arrival_release_energy=0.05)
    with pytest.raises(ValidationError, match="arrival_release_energy"):
        PlannerConfig(arrival_release_energy=0.05)


def test_a_resumed_controller_follows_the_schedule_from_where_the_lost_one_stood():
    """What a restarted service does with a session's recorded position: the schedule goes on (the steps already
    spent on the sub-goal count), the search starts cold."""
    world = BlobWorld()
    goals = [SubGoal(blob(world, xyz), max_steps=2) for xyz in ((0.55, 0.0, 0.3), (0.5, 0.1, 0.3))]
    goals.append(SubGoal(blob(world, (0.45, 0.0, 0.3))))
    lost = RecedingHorizonController(world, PlannerConfig(**FAST), goals)
    here = (0.5, 0.0, 0.3)
    assert [lost.step(blob(world, here), pose(here)).goal_index for _ in range(3)] == [0, 0, 1]
    resumed = RecedingHorizonController(world, PlannerConfig(**FAST), goals)
    resumed.resume(lost.goal_index, lost.steps_on_goal, lost.arrived)
    assert resumed.warm_start is None
    assert [resumed.step(blob(world, here), pose(here)).goal_index for _ in range(2)] == [1, 2]
    with pytest.raises(ValueError, match="goal 3"):
        resumed.resume(3, 0, False)


def test_arrival_does_not_apply_to_intermediate_sub_goals():
    world = BlobWorld()
    first, second = (0.55, 0.0, 0.3), (0.45, 0.0, 0.3)
    goals = [SubGoal(blob(world, first), max_steps=5), SubGoal(blob(world, second))]
    controller = RecedingHorizonController(world, PlannerConfig(**FAST, arrival_energy=1e-3), goals)
    on_first = controller.step(blob(world, first), pose(first))
    assert on_first.goal_index == 0 and on_first.planning_seconds > 0


def test_warm_start_is_the_previous_plan_shifted_and_seeds_the_next_search():
    world = BlobWorld()
    config = PlannerConfig(horizon=2, samples=16, topk=4, iterations=1)
    # step 1: random noise; step 2: zero noise, so its candidates are exactly the warm-start mean
    draws = [torch.randn(16, 4, generator=torch.Generator().manual_seed(i)) for i in range(2)] + [torch.zeros(16, 4)] * 2
    controller = RecedingHorizonController(world, config, blob(world, (0.6, 0.05, 0.3)), noise=RecordedNoise(draws))
    controller.step(blob(world, (0.5, 0.0, 0.3)), pose((0.5, 0.0, 0.3)))
    warm = controller.warm_start
    assert warm.mean[1].abs().max() == 0  # a fresh last step
    assert warm.mean[0].abs().max() > 0
    world.calls.clear()
    controller.step(blob(world, (0.5, 0.0, 0.3)), pose((0.5, 0.0, 0.3)))
    searched = world.calls[0]["actions"]
    expected = torch.cat((warm.mean[:, :3], torch.zeros(2, 3), warm.mean[:, 3:].clamp(-0.75, 0.75)), dim=-1)
    torch.testing.assert_close(searched, expected.expand_as(searched))


def test_warm_start_is_the_default():
    assert PlannerConfig().warm_start is True


def test_cold_steps_ignore_the_previous_plan_and_search_from_the_official_start():
    world = BlobWorld()
    config = PlannerConfig(horizon=2, samples=16, topk=4, iterations=1, warm_start=False)
    # step 1: random noise moves the mean; step 2: zero noise, so its candidates are exactly its
    # starting mean: the official initial mean 0, not the previous plan shifted
    draws = [torch.randn(16, 4, generator=torch.Generator().manual_seed(i)) for i in range(2)] + [torch.zeros(16, 4)] * 2
    controller = RecedingHorizonController(world, config, blob(world, (0.6, 0.05, 0.3)), noise=RecordedNoise(draws))
    first = controller.step(blob(world, (0.5, 0.0, 0.3)), pose((0.5, 0.0, 0.3)))
    assert first.plan[0, :3].abs().max() > 0  # a real plan was made, and then not carried over
    assert controller.warm_start is None
    world.calls.clear()
    controller.step(blob(world, (0.5, 0.0, 0.3)), pose((0.5, 0.0, 0.3)))
    searched = world.calls[0]["actions"]
    assert searched.abs().max() == 0
    assert controller.warm_start is None


def test_sessions_keep_separate_state():
    world = BlobWorld()
    goal_a, goal_b = blob(world, (0.6, 0.0, 0.3)), blob(world, (0.4, 0.0, 0.3))
    a = RecedingHorizonController(world, PlannerConfig(**FAST), [SubGoal(goal_a, max_steps=1), SubGoal(goal_b)])
    b = RecedingHorizonController(world, PlannerConfig(**FAST), goal_b)
    here = blob(world, (0.5, 0.0, 0.3))
    a.step(here, pose((0.5, 0.0, 0.3)))
    a.step(here, pose((0.5, 0.0, 0.3)))
    assert (a.goal_index, b.goal_index, b.warm_start) == (1, 0, None)


coordinate = st.floats(-1.5, 1.5, allow_nan=False)


@settings(max_examples=25, deadline=None)
@given(st.tuples(coordinate, coordinate, coordinate), st.tuples(coordinate, coordinate, coordinate), st.floats(0.001, 0.2))
def test_limits_always_hold(start, goal, maxnorm):
    world = BlobWorld()
    config = PlannerConfig(maxnorm=maxnorm, workspace_min=(0.3, -0.2, 0.1), workspace_max=(0.7, 0.2, 0.5), **FAST)
    controller = RecedingHorizonController(world, config, blob(world, goal))
    step = controller.step(blob(world, start), pose(start))
    assert step.action[:3].abs().max() <= maxnorm + 1e-6
    assert step.action[3:6].abs().max() == 0
    inside = all(lo <= s <= hi for s, lo, hi in zip(start, config.workspace_min, config.workspace_max))
    for axis, (s, lo, hi) in enumerate(zip(start, config.workspace_min, config.workspace_max)):
        t = step.target_pose[axis].item()
        if inside:
            assert lo - 1e-6 <= t <= hi + 1e-6
        else:  # never further outside the box than where it started
            assert max(lo - t, t - hi, 0) <= max(lo - s, s - hi, 0) + 1e-6
    assert 0.0 <= step.target_pose[6] <= 1.0


@pytest.mark.parametrize(
    "settings, message",
    [({"maxnorm": 0.0}, "maxnorm"), ({"topk": 32, "samples": 16}, "topk"), ({"iterations": 0}, "iterations")],
)
def test_adversarial_settings_are_rejected_before_any_planning(settings, message):
    with pytest.raises(ValidationError, match=message):
        RecedingHorizonController(BlobWorld(), PlannerConfig(**settings), torch.zeros(27, 4))


@pytest.mark.parametrize(
    "latent, state, message",
    [
        (torch.zeros(27, 4), torch.tensor([0.5, float("nan"), 0.3, 0, 0, 0, 0]), "state must be finite"),
        (torch.zeros(27, 4), torch.zeros(6), "7-D pose"),
        (torch.full((27, 4), float("inf")), torch.zeros(7), "current latent contains NaN"),
        (torch.zeros(2, 27, 4), torch.zeros(7), r"one frame latent"),
        (torch.zeros(27, 5), torch.zeros(7), "differ in shape"),
    ],
)
def test_bad_observations_are_rejected_with_clear_errors(latent, state, message):
    world = BlobWorld()
    controller = RecedingHorizonController(world, PlannerConfig(**FAST), blob(world, (0.5, 0.0, 0.3)))
    with pytest.raises(ValueError, match=message):
        controller.step(latent, state)
    assert controller.steps_on_goal == 0  # a rejected observation changes nothing


def test_empty_or_bad_goal_schedule_is_rejected():
    world = BlobWorld()
    with pytest.raises(ValueError, match="at least one goal"):
        RecedingHorizonController(world, PlannerConfig(**FAST), [])
    with pytest.raises(ValueError, match="max_steps"):
        SubGoal(torch.zeros(27, 4), max_steps=0)


def test_controller_plans_on_the_real_world_model_from_images(reference_folder):
    """Across the real boundary: encoded camera images in, a bounded action out, warm start kept."""
    from world_model import load_world_model

    data = torch.load(reference_folder / "fixture_tiny_data.pt", map_location="cpu", weights_only=True)
    model = load_world_model(reference_folder / "fixture_tiny_checkpoint.pt", device="cpu")
    frames = data["preprocessing"]["franka_uint8_THWC"].numpy()
    latents = model.encode(list(frames))
    state = data["world_model"]["franka_states"][0]
    config = PlannerConfig(horizon=2, samples=24, topk=4, iterations=2, max_batch=10)
    controller = RecedingHorizonController(model, config, latents[1])
    first = controller.step(latents[0], state)
    second = controller.step(latents[0], state)
    for step in (first, second):
        assert step.action[:3].abs().max() <= config.maxnorm
        assert torch.isfinite(step.target_pose).all() and math.isfinite(step.energy)
    assert controller.warm_start is not None and controller.warm_start.mean.shape == (2, 4)


@pytest.mark.parametrize("optimizer", ["cem", "icem", "mppi"])
def test_a_cancelled_step_stops_between_iterations_and_leaves_the_controller_as_it_was(optimizer):
    world = BlobWorld()
    config = PlannerConfig(horizon=2, samples=16, topk=4, iterations=5, optimizer=optimizer)
    goals = [SubGoal(blob(world, (0.55, 0.0, 0.3)), max_steps=1), SubGoal(blob(world, (0.6, 0.0, 0.3)))]
    controller = RecedingHorizonController(world, config, goals)
    controller.step(blob(world, (0.5, 0.0, 0.3)), pose((0.5, 0.0, 0.3)))  # one step done: the next moves on to goal 1
    before = (controller.goal_index, controller.steps_on_goal, controller.warm_start)
    asked = []

    def stop_after_two_iterations() -> bool:
        asked.append(len(world.calls))
        return len(asked) > 2

    world.calls.clear()
    with pytest.raises(PlanCancelled):
        controller.step(blob(world, (0.5, 0.0, 0.3)), pose((0.5, 0.0, 0.3)), should_stop=stop_after_two_iterations)
    # asked before any model call, then once between iterations (each iteration calls the model), and the
    # search ended at the third ask
    assert len(asked) == 3 and asked[0] == 0 and asked == sorted(set(asked)), asked
    assert (controller.goal_index, controller.steps_on_goal) == before[:2] and controller.warm_start is before[2]
    # A step that is not stopped still plans normally afterwards (and then moves on to goal 1).
    assert controller.step(blob(world, (0.5, 0.0, 0.3)), pose((0.5, 0.0, 0.3)), should_stop=lambda: False).goal_index == 1


def test_exported_state_continues_exactly_in_another_controller():
    """A session's state (sub-goal position, warm start, noise position) moved to a fresh controller of
    the same config and goals plans exactly what the original would have (how a Ray replica takes over)."""
    import pickle

    world = BlobWorld()
    goals = [SubGoal(blob(world, (0.6, 0.0, 0.3)), max_steps=1), SubGoal(blob(world, (0.4, 0.1, 0.3)))]
    config = PlannerConfig(**{**FAST, "horizon": 2, "seed": 3})
    original = RecedingHorizonController(world, config, goals)
    here, at = blob(world, (0.5, 0.0, 0.3)), pose((0.5, 0.0, 0.3))
    original.step(here, at)
    state = pickle.loads(pickle.dumps(original.export_state()))  # crosses a process boundary as bytes
    assert state.goal_index == 0 and state.steps_on_goal == 1 and state.warm_start is not None
    moved = RecedingHorizonController(world, config, goals)
    moved.import_state(state)
    expected, got = original.step(here, at), moved.step(here, at)
    assert got.goal_index == expected.goal_index == 1
    torch.testing.assert_close(got.plan, expected.plan, rtol=0, atol=0)
    unmoved = RecedingHorizonController(world, config, goals).step(here, at)  # without the state: another plan
    assert unmoved.goal_index == 0 and not torch.equal(unmoved.plan, expected.plan)
