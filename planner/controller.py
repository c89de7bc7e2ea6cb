"""Receding-horizon control in latent space: plan H steps, execute the first, replan next time.

One ``RecedingHorizonController`` serves one robot session. It holds the goal (or a schedule of
sub-goal latents, as the paper does for pick-and-place), its position in that schedule, and the
warm start (the previous plan shifted by one step). Every returned action respects the limits of
its ``PlannerConfig``: xyz deltas within +-maxnorm per axis and a target pose inside the workspace box.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from planner.config import PlannerConfig
from planner.energy import Energy, frame_distance
from planner.noise import NoiseSource
from planner.objective import GoalObjective, Rollout, as_frame_latent, as_state
from planner.optimizers import make_optimizer
from planner.pose import compose_pose
from planner.search import PlanCancelled, SearchState, StopCheck, initial_state


@dataclass(frozen=True)
class SubGoal:
    """A goal latent (N, D) and when to move on to the next one (whichever comes first).

    ``max_steps``: after this many control steps on this goal. ``energy_threshold``: as soon as the
    observed latent is this close to the goal (same energy kind as the planner, final-frame form).
    The last goal of a schedule is never left.
    """

    latent: torch.Tensor
    max_steps: Optional[int] = None
    energy_threshold: Optional[float] = None

    def __post_init__(self):
        as_frame_latent(self.latent, "goal latent")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.energy_threshold is not None and math.isnan(self.energy_threshold):
            raise ValueError("energy_threshold must be a number, got NaN")


@dataclass(frozen=True)
class ControlStep:
    """What one planning call produced; tensors are on the CPU."""

    action: torch.Tensor  # (7,) delta to execute now: [dx, dy, dz, 0, 0, 0, dgripper]
    target_pose: torch.Tensor  # (7,) compose_pose(state, action), inside the workspace box
    plan: torch.Tensor  # (H, 7) the whole plan the action was taken from
    energy: float  # lowest energy the optimiser scored in its final iteration
    goal_energy: float  # observed energy of the current latent against the active goal
    goal_index: int  # which sub-goal this step planned for
    planning_seconds: float


class RecedingHorizonController:
    def __init__(
        self,
        model: Rollout,
        config: PlannerConfig,
        goals: torch.Tensor | SubGoal | Sequence[SubGoal],
        noise: NoiseSource | None = None,
    ):
        self.model = model
        self.config = config
        self.energy = Energy(config.energy, config.frame_weights)
        self.optimizer = make_optimizer(config, noise)
        self.device = torch.device(model.device)
        self._workspace_min = torch.tensor(config.workspace_min)
        self._workspace_max = torch.tensor(config.workspace_max)
        self._initial_std = initial_state(config, self.device).std  # warm starts reset to it (shifted() clones)
        self.set_goals(goals)

    def set_goals(self, goals: torch.Tensor | SubGoal | Sequence[SubGoal]) -> None:
        """Replace the goal schedule; restarts at its first goal without a warm start."""
        if isinstance(goals, torch.Tensor):
            goals = [SubGoal(goals)]
        elif isinstance(goals, SubGoal):
            goals = [goals]
        goals = list(goals)
        if not goals:
            raise ValueError("at least one goal latent is needed")
        self.goals = [
            SubGoal(as_frame_latent(g.latent, "goal latent").to(self.device), g.max_steps, g.energy_threshold) for g in goals
        ]
        self.reset()

    def reset(self) -> None:
        """Back to the first goal, forget the warm start (a new episode of the same session)."""
        self.goal_index = 0
        self.steps_on_goal = 0
        self.warm_start: Optional[SearchState] = None

    def step(self, latent: torch.Tensor, state: torch.Tensor, should_stop: StopCheck | None = None) -> ControlStep:
        """Plan from the current frame latent (N, D) and pose (7,); return the action to execute now.

        `should_stop` is passed to the optimiser (asked between iterations); when it stops the
        search, PlanCancelled is raised and the controller is left exactly as it was before the call.
        """
        before = (self.goal_index, self.steps_on_goal, self.warm_start)
        try:
            return self._step(latent, state, should_stop)
        except PlanCancelled:
            self.goal_index, self.steps_on_goal, self.warm_start = before
            raise

    def _step(self, latent: torch.Tensor, state: torch.Tensor, should_stop: StopCheck | None) -> ControlStep:
        latent = as_frame_latent(latent, "current latent").to(self.device)
        state = as_state(state)
        if latent.shape != self.goals[self.goal_index].latent.shape:
            raise ValueError(
                f"current latent {tuple(latent.shape)} and goal latent {tuple(self.goals[self.goal_index].latent.shape)} differ in shape"
            )
        goal_energy = self._advance_schedule(latent)
        if self._arrived(goal_energy):
            return self._hold_step(state, goal_energy)
        objective = GoalObjective(
            self.model,
            latent,
            state,
            self.goals[self.goal_index].latent,
            energy=self.energy,
            max_batch=self.config.max_batch,
            autocast_bf16=self.config.autocast_bf16,
        )
        started = time.perf_counter()
        plan = self.optimizer.solve(objective, self.warm_start, should_stop)
        energy = float(plan.energy)  # the one host sync of a control step (also ends the device work)
        planning_seconds = time.perf_counter() - started
        self.warm_start = plan.state.shifted(self._initial_std)
        self.steps_on_goal += 1
        actions = plan.actions.float().cpu()  # one device-to-host copy of the whole plan
        action, target = self._within_limits(state, actions[0])
        return ControlStep(
            action=action,
            target_pose=target,
            plan=actions,
            energy=energy,
            goal_energy=goal_energy,
            goal_index=self.goal_index,
            planning_seconds=planning_seconds,
        )

    def _arrived(self, goal_energy: float) -> bool:
        """On the final goal and observed within `arrival_energy` of it: nothing left to plan."""
        threshold = self.config.arrival_energy
        return threshold is not None and self.goal_index == len(self.goals) - 1 and goal_energy < threshold

    def _hold_step(self, state: torch.Tensor, goal_energy: float) -> ControlStep:
        """Stay where we are; the next step plans afresh if the arm drifts off the goal."""
        self.warm_start = None
        self.steps_on_goal += 1
        action, target = self._within_limits(state, torch.zeros(7))
        return ControlStep(
            action=action,
            target_pose=target,
            plan=torch.zeros(self.config.horizon, 7),
            energy=goal_energy,
            goal_energy=goal_energy,
            goal_index=self.goal_index,
            planning_seconds=0.0,
        )

    def _advance_schedule(self, latent: torch.Tensor) -> float:
        """Move to the next sub-goal when the current one is done; return the observed goal energy."""
        while True:
            goal = self.goals[self.goal_index]
            goal_energy = float(frame_distance(latent, goal.latent, self.config.energy)[0])
            is_last = self.goal_index == len(self.goals) - 1
            done = (goal.max_steps is not None and self.steps_on_goal >= goal.max_steps) or (
                goal.energy_threshold is not None and goal_energy < goal.energy_threshold
            )
            if is_last or not done:
                return goal_energy
            self.goal_index += 1
            self.steps_on_goal = 0
            self.warm_start = None  # the old plan aimed at the old goal

    def _within_limits(self, state: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Clamp the target inside the workspace and the step to +-maxnorm; keep action and target consistent.

        From inside the box the target stays inside; from outside, the step heads back toward the box.
        """
        maxnorm = self.config.maxnorm
        wanted = (state[:3] + action[:3]).clamp(self._workspace_min, self._workspace_max)
        step = (wanted - state[:3]).clamp(-maxnorm, maxnorm)
        action = torch.cat((step, action[3:]))
        return action, compose_pose(state, action)
