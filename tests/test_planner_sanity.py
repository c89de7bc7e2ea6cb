"""Planning sanity: on a world whose energy landscape is known, every optimiser finds the goal.

`BlobWorld` is a hand-built predictor: a frame latent is a blob of activity over a 3-D grid of
token anchors, centred on the end-effector position, and predicting the next frame moves the blob
by the xyz action. The L1 energy against the goal blob is then lowest exactly where the imagined
end-effector reaches the goal, so the right action is known in closed form.
"""
from __future__ import annotations

import itertools

import pytest
import torch

from planner.cem import CEM
from planner.config import PlannerConfig
from planner.icem import ICEM
from planner.mppi import MPPI
from planner.objective import GoalObjective

OPTIMIZERS = {"cem": CEM, "mppi": MPPI, "icem": ICEM}


class BlobWorld:
    """Latent (N=27, D=4): token n carries exp(-|p - anchor_n|^2 / 2 sigma^2) times a fixed code."""

    def __init__(self, centre=(0.5, 0.0, 0.3), spacing=0.1, sigma=0.08, device="cpu"):
        self.device = torch.device(device)
        offsets = torch.tensor(list(itertools.product((-1.0, 0.0, 1.0), repeat=3)))
        self.anchors = (torch.tensor(centre) + spacing * offsets).to(self.device)
        self.code = torch.tensor([1.0, -1.0, 0.5, 2.0], device=self.device)
        self.sigma = sigma
        self.calls = []

    def render(self, position: torch.Tensor) -> torch.Tensor:
        """(..., 3) positions -> (..., 27, 4) latents."""
        distance2 = (position.unsqueeze(-2) - self.anchors).square().sum(-1)
        return torch.exp(-distance2 / (2 * self.sigma**2)).unsqueeze(-1) * self.code

    def rollout(self, context, actions, states, cached=True):
        self.calls.append({"actions": actions.clone(), "states": states.clone(), "cached": cached})
        # Frame h+1 shows the arm where action h takes it from pose h.
        return self.render(states[..., :3] + actions[..., :3])


def reaching_problem(world: BlobWorld, start_xyz, goal_xyz):
    state = torch.tensor([*start_xyz, 0.0, 0.0, 0.0, 0.0])
    context = world.render(torch.tensor(start_xyz))
    goal = world.render(torch.tensor(goal_xyz))
    return state, context, goal


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimiser_finds_the_action_that_reaches_the_goal(name):
    world = BlobWorld()
    start, target = (0.5, 0.0, 0.3), (0.55, -0.04, 0.33)
    state, context, goal = reaching_problem(world, start, target)
    config = PlannerConfig(optimizer=name, horizon=1, samples=128, topk=12, iterations=8, seed=3)
    plan = OPTIMIZERS[name](config).solve(GoalObjective(world, context, state, goal))
    expected = torch.tensor(target) - torch.tensor(start)
    torch.testing.assert_close(plan.actions[0, :3], expected, atol=6e-3, rtol=0)
    assert plan.actions[0, 3:6].abs().max() == 0  # rotations are never searched


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_two_step_plan_reaches_a_goal_beyond_one_step(name):
    # The goal is 0.11 m away along x but one step may move at most 0.075 m: both steps are needed.
    world = BlobWorld()
    start, target = (0.5, 0.0, 0.3), (0.61, 0.0, 0.3)
    state, context, goal = reaching_problem(world, start, target)
    config = PlannerConfig(optimizer=name, horizon=2, samples=192, topk=16, iterations=10, seed=5)
    plan = OPTIMIZERS[name](config).solve(GoalObjective(world, context, state, goal))
    reached = torch.tensor(start) + plan.actions[:, :3].sum(0)
    torch.testing.assert_close(reached, torch.tensor(target), atol=1e-2, rtol=0)
    assert plan.actions[:, :3].abs().max() <= config.maxnorm
    assert plan.actions[0, 0] > 0.03  # the first executed step already heads for the goal
