"""The replica side of scale-out, in one process (no Ray needed): goal latents by content key, the
session state sent with each item, and a replica that lacks a goal saying so instead of failing."""
from __future__ import annotations

import numpy as np
import pytest

from server.ray_replica import PlanningReplica, ReplicaItem, SessionSpec

PLANNER = {"samples": 8, "topk": 2, "iterations": 1, "horizon": 1, "seed": 5}
STATE = [0.5, 0.0, 0.3, 3.14, 0.0, 0.0, 0.0]


@pytest.fixture(scope="module")
def replica():
    return PlanningReplica({"model": "tiny", "device": "cpu", "dtype": "float32", "random_init_seed": 0,
                            "plan_budget": 10**9}, threads=1)


def frame(engine, seed: int) -> np.ndarray:
    pixels = (np.random.default_rng(seed).random((64, 64, 3)) * 255).astype(np.uint8)
    return engine.latent_to_array(engine.encode(pixels))


def test_a_replica_without_the_goal_asks_for_it_then_plans_from_the_state_it_is_sent(replica):
    from planner.config import PlannerConfig

    engine = replica.engine
    goal = frame(engine, 1)
    spec = SessionSpec(PlannerConfig(**PLANNER).model_dump(mode="json"), {}, ("goal-a",))
    item = ReplicaItem("session-1", spec, None, frame(engine, 2), STATE)
    _, (outcome,) = replica.plan_now(1, [item])
    assert outcome.missing_goals == ("goal-a",) and outcome.step is None

    _, (first,) = replica.plan_now(2, [ReplicaItem("session-1", spec, None, frame(engine, 2), STATE, goals={"goal-a": goal})])
    assert first.error is None and first.state.steps_on_goal == 1
    _, (second,) = replica.plan_now(3, [ReplicaItem("session-1", spec, first.state, frame(engine, 3), STATE)])
    _, (again,) = replica.plan_now(4, [ReplicaItem("session-1", spec, first.state, frame(engine, 3), STATE)])
    assert second.step.action == again.step.action   # the state sent, not what the replica did last, decides
    assert again.state.steps_on_goal == 2

    local = engine.new_session_planner([engine.latent_from_array(goal)], spec.planner, {})
    local.step(engine.latent_from_array(frame(engine, 2)), STATE)
    assert local.step(engine.latent_from_array(frame(engine, 3)), STATE).action == second.step.action
