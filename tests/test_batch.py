"""planner.batch.step_together: many sessions planned in one batched rollout per iteration make the
plans each session makes alone with the same noise; cancellation changes nothing."""
from __future__ import annotations

import pytest
import torch

from planner.batch import step_together
from planner.config import PlannerConfig
from planner.controller import RecedingHorizonController, SubGoal
from planner.noise import SeededNoise
from planner.search import PlanCancelled
from world_model import load_world_model

PLAN_ATOL = 1e-5


@pytest.fixture(scope="module")
def model():
    # The trained demo model: its energies separate the candidates, so float rounding of a
    # differently shaped batch cannot reorder a near-tie in the top-k (a random model's could).
    return load_world_model("demo", device="cpu")


def latent(model, seed: int) -> torch.Tensor:
    frame = torch.randn(model.tokens_per_frame, model.embed_dim, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.layer_norm(frame, (model.embed_dim,))


def pose(seed: int) -> torch.Tensor:
    offset = torch.rand(3, generator=torch.Generator().manual_seed(seed)) * 0.1
    return torch.tensor([0.5 + offset[0], offset[1] - 0.05, 0.3 + offset[2], 3.1, 0.0, 0.0, 0.2])


class Fleet:
    """Two identical sets of controllers (same settings, goals and noise seeds): one steps alone,
    one together."""

    def __init__(self, model, sessions: list[dict]):
        self.sessions = sessions
        self.alone = [self._controller(model, session) for session in sessions]
        self.together = [self._controller(model, session) for session in sessions]

    @staticmethod
    def _controller(model, session: dict) -> RecedingHorizonController:
        goals = session["goals"] if "goals" in session else latent(model, 100 + session["seed"])
        return RecedingHorizonController(model, session["config"], goals, SeededNoise(session["seed"]))

    def step(self, model, round_index: int):
        latents = [latent(model, 10 * round_index + i) for i in range(len(self.sessions))]
        states = [pose(10 * round_index + i) for i in range(len(self.sessions))]
        alone = [controller.step(z, s) for controller, z, s in zip(self.alone, latents, states)]
        together = step_together(self.together, latents, states)
        return alone, together


def assert_same_steps(alone, together):
    assert len(alone) == len(together)
    for index, (a, b) in enumerate(zip(alone, together)):
        assert b.goal_index == a.goal_index, index
        torch.testing.assert_close(b.plan, a.plan, atol=PLAN_ATOL, rtol=0, msg=f"session {index}")
        torch.testing.assert_close(b.action, a.action, atol=PLAN_ATOL, rtol=0)
        torch.testing.assert_close(b.target_pose, a.target_pose, atol=PLAN_ATOL, rtol=0)
        assert b.energy == pytest.approx(a.energy, abs=1e-5)
        assert b.goal_energy == pytest.approx(a.goal_energy, abs=1e-6)
        assert (b.planning_seconds > 0) == (a.planning_seconds > 0)


def assert_same_controllers(alone, together):
    for a, b in zip(alone, together):
        assert (a.goal_index, a.steps_on_goal) == (b.goal_index, b.steps_on_goal)
        assert (a.warm_start is None) == (b.warm_start is None)
        if a.warm_start is not None:
            torch.testing.assert_close(b.warm_start.mean, a.warm_start.mean, atol=PLAN_ATOL, rtol=0)
            torch.testing.assert_close(b.warm_start.std, a.warm_start.std, atol=PLAN_ATOL, rtol=0)


def test_cem_sessions_with_different_samples_goals_and_warm_starts_plan_as_they_would_alone(model):
    sessions = [
        {"seed": 1, "config": PlannerConfig(samples=16, topk=4, iterations=2, horizon=2)},
        {"seed": 2, "config": PlannerConfig(samples=40, topk=6, iterations=2, horizon=2, seed=7)},
        {"seed": 3, "config": PlannerConfig(samples=24, topk=5, iterations=2, horizon=2, energy="l2")},
    ]
    fleet = Fleet(model, sessions)
    for round_index in range(2):  # round 2 starts from each session's own warm start
        alone, together = fleet.step(model, round_index)
        assert_same_steps(alone, together)
        assert_same_controllers(fleet.alone, fleet.together)
    assert all(controller.warm_start is not None for controller in fleet.together)
    # the sessions really differ: different goals and settings give different plans
    assert (together[0].plan[0] - together[1].plan[0]).abs().max() > 1e-3


def test_cold_sessions_plan_each_batched_round_afresh(model):
    cold = {"samples": 16, "topk": 4, "iterations": 2, "horizon": 2, "warm_start": False}
    sessions = [
        {"seed": 1, "config": PlannerConfig(**cold)},
        {"seed": 2, "config": PlannerConfig(**cold, optimizer="icem")},
        {"seed": 3, "config": PlannerConfig(**{**cold, "warm_start": True})},  # a warm session beside them
    ]
    first, second = Fleet(model, sessions), Fleet(model, sessions)
    first.step(model, 0)
    second.step(model, 5)  # another first observation: another first plan
    alone, together = first.step(model, 1)
    assert_same_steps(alone, together)
    assert_same_controllers(first.alone, first.together)
    assert [controller.warm_start is None for controller in first.together] == [True, True, False]
    _, other = second.step(model, 1)
    # Same observation, same noise position: a cold plan does not depend on what was planned before;
    # the warm session's does (its search started from its own previous plan).
    for index in (0, 1):
        torch.testing.assert_close(other[index].plan, together[index].plan, atol=PLAN_ATOL, rtol=0)
    assert (other[2].plan - together[2].plan).abs().max() > 1e-3


def test_mixed_optimisers_horizons_and_iteration_counts_share_rounds_where_they_can(model):
    sessions = [
        {"seed": 1, "config": PlannerConfig(optimizer="icem", samples=20, topk=5, iterations=3, horizon=2)},
        {"seed": 2, "config": PlannerConfig(optimizer="mppi", samples=16, topk=4, iterations=1, horizon=2)},
        {"seed": 3, "config": PlannerConfig(optimizer="cem", samples=12, topk=3, iterations=2, horizon=1)},
        {"seed": 4, "config": PlannerConfig(optimizer="cem", samples=32, topk=4, iterations=4, horizon=1, max_batch=10)},
    ]
    fleet = Fleet(model, sessions)
    calls = []
    rollout = model.rollout

    def counting_rollout(context, actions, states, cached=True):
        calls.append((context.shape[0], actions.shape[0], actions.shape[1]))
        return rollout(context, actions, states, cached)

    for round_index in range(2):
        alone = [c.step(latent(model, 10 * round_index + i), pose(10 * round_index + i)) for i, c in enumerate(fleet.alone)]
        calls.clear()
        model.rollout = counting_rollout
        try:
            together = step_together(fleet.together, [latent(model, 10 * round_index + i) for i in range(4)],
                                     [pose(10 * round_index + i) for i in range(4)])
        finally:
            del model.rollout
        assert_same_steps(alone, together)
        assert_same_controllers(fleet.alone, fleet.together)
    # Round 2, horizon 1: max_batch 10 (the smallest any member asks) chunks session 3's 12 and
    # session 4's 32 samples together while both run (a mixed chunk gets per-sample contexts), then
    # session 4's alone once session 3's 2 iterations are done.
    assert [(context, rows) for context, rows, horizon in calls if horizon == 1] == (
        [(1, 10), (10, 10), (1, 10), (1, 10), (1, 4)] * 2 + [(1, 10), (1, 10), (1, 10), (1, 2)] * 2)
    # Horizon 2: iCEM (20 samples + its mean + 2 carried elites of its warm start) and MPPI share the
    # first iteration's call; MPPI then drops out.
    assert [(context, rows) for context, rows, horizon in calls if horizon == 2] == [(39, 39), (1, 23), (1, 23)]


def test_sub_goal_switching_and_arrival_holds_match_the_single_session_path(model):
    goals = [SubGoal(latent(model, 200), max_steps=1), SubGoal(latent(model, 201))]
    arrived_goal = latent(model, 0)  # session 2 observes exactly its goal in round 0
    sessions = [
        {"seed": 1, "config": PlannerConfig(samples=16, topk=4, iterations=2, horizon=1), "goals": goals},
        {"seed": 2, "config": PlannerConfig(samples=16, topk=4, iterations=2, horizon=1, arrival_energy=1e-3),
         "goals": arrived_goal},
    ]
    fleet = Fleet(model, sessions)
    latents = [latent(model, 5), arrived_goal]
    alone = [c.step(z, pose(i)) for i, (c, z) in enumerate(zip(fleet.alone, latents))]
    together = step_together(fleet.together, latents, [pose(0), pose(1)])
    assert_same_steps(alone, together)
    assert together[1].planning_seconds == 0.0 and torch.count_nonzero(together[1].action) == 0  # held
    assert [step.held for step in together] == [False, True]
    second = [c.step(latent(model, 6), pose(2)) for c in fleet.alone[:1]]
    second_together = step_together(fleet.together[:1], [latent(model, 6)], [pose(2)])
    assert [s.goal_index for s in second_together] == [1]  # moved on to the next sub-goal
    assert_same_steps(second, second_together)
    assert_same_controllers(fleet.alone, fleet.together)


def _snapshot(controller):
    return controller.goal_index, controller.steps_on_goal, controller.warm_start, controller.optimizer.noise.position()


def test_a_cancelled_round_changes_no_controller_and_the_replan_equals_an_uncancelled_plan(model):
    sessions = [{"seed": s, "config": PlannerConfig(samples=16, topk=4, iterations=3, horizon=1)} for s in (1, 2)]
    fleet = Fleet(model, sessions)
    fleet.step(model, 0)  # every session has a warm start and has drawn noise
    before = [_snapshot(controller) for controller in fleet.together]
    asked = []

    def stop_on_second_round() -> bool:
        asked.append(1)
        return len(asked) >= 2

    latents, states = [latent(model, 30), latent(model, 31)], [pose(30), pose(31)]
    with pytest.raises(PlanCancelled):
        step_together(fleet.together, latents, states, should_stop=stop_on_second_round)
    assert len(asked) == 2  # asked before each iteration round, and stopped before the second
    for (index, steps, warm, noise), controller in zip(before, fleet.together):
        assert (controller.goal_index, controller.steps_on_goal) == (index, steps)
        assert controller.warm_start is warm
        assert torch.equal(controller.optimizer.noise.position(), noise)
    alone = [c.step(z, s) for c, z, s in zip(fleet.alone, latents, states)]
    assert_same_steps(alone, step_together(fleet.together, latents, states, should_stop=lambda: False))


def test_a_cancelled_single_session_step_leaves_the_controller_as_it_was(model):
    controller = Fleet(model, [{"seed": 1, "config": PlannerConfig(samples=16, topk=4, iterations=3, horizon=1)}]).alone[0]
    controller.step(latent(model, 1), pose(1))
    before = _snapshot(controller)
    answers = iter([False, False, True])
    with pytest.raises(PlanCancelled):
        controller.step(latent(model, 2), pose(2), should_stop=lambda: next(answers))
    after = _snapshot(controller)
    assert after[:3] == before[:3] and torch.equal(after[3], before[3])


def test_bad_input_is_refused_before_anything_changes(model):
    fleet = Fleet(model, [{"seed": s, "config": PlannerConfig(samples=16, topk=4, iterations=1, horizon=1)} for s in (1, 2)])
    controllers = fleet.together
    with pytest.raises(ValueError, match="one latent and one state per controller"):
        step_together(controllers, [latent(model, 1)], [pose(1), pose(2)])
    with pytest.raises(ValueError, match="appears twice"):
        step_together([controllers[0], controllers[0]], [latent(model, 1)] * 2, [pose(1)] * 2)
    shared = Fleet(model, [{"seed": 1, "config": PlannerConfig(samples=16, topk=4, iterations=1, horizon=1)}] * 2).together
    shared[1].optimizer.noise = shared[0].optimizer.noise
    with pytest.raises(ValueError, match="own noise source"):
        step_together(shared, [latent(model, 1)] * 2, [pose(1)] * 2)
    before = [_snapshot(controller) for controller in controllers]
    with pytest.raises(ValueError, match="differ in shape"):
        step_together(controllers, [latent(model, 1), torch.zeros(3, model.embed_dim)], [pose(1), pose(2)])
    for (index, steps, warm, noise), controller in zip(before, controllers):
        assert (controller.goal_index, controller.steps_on_goal, controller.warm_start) == (index, steps, warm)
        assert torch.equal(controller.optimizer.noise.position(), noise)
    assert step_together([], [], []) == []
