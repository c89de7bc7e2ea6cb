"""Receding-horizon control in latent space: plan H steps, execute the first, replan next time.

One ``RecedingHorizonController`` serves one robot session. It holds the goal (or a schedule of
sub-goal latents, as the paper does for pick-and-place), its position in that schedule, and the
warm start (the previous plan shifted by one step; none when ``PlannerConfig.warm_start`` is False). Every returned action respects the limits of
its ``PlannerConfig``: xyz deltas within +-maxnorm per axis and a target pose inside the workspace box.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from planner.config import PlannerConfig
from planner.energy import Energy, frame_distance
from planner.noise import NoiseSource, noise_position, restore_noise_position
from planner.objective import GoalObjective, Rollout, as_frame_latent, as_state
from planner.optimizers import make_optimizer
from planner.pose import compose_pose
from planner.search import Plan, PlanCancelled, SearchState, ShouldStop, initial_state, plans_on_host


# A sub-goal is passed once the observation is closer to it than this fraction of its distance from
# the previous sub-goal (or than its own threshold, whichever is smaller); see _switch_threshold.
SEPARATION_FRACTION = 0.5


@dataclass(frozen=True)
class SubGoal:
    """A goal latent (N, D) and when to move on to the next one (whichever comes first).

    ``max_steps``: after this many control steps on this goal. ``energy_threshold``: as soon as the
    observed latent is this close to the goal (same energy kind as the planner, final-frame form), and
    closer than half its distance from the previous goal (SEPARATION_FRACTION). The last goal of a
    schedule is never left.
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
class ArmLimits:
    """Limits the arm announced (its hello's `limits`): a step also plans within them, so the arm's own
    clamp leaves the target unchanged and the executed move is the planned one.

    ``workspace_min``/``workspace_max``: the arm's box, intersected with the planner's own.
    ``max_step_m``: the arm's largest translation per step (Euclidean, on top of the per-axis maxnorm).
    """

    workspace_min: tuple[float, float, float]
    workspace_max: tuple[float, float, float]
    max_step_m: float

    def __post_init__(self):
        if not (math.isfinite(self.max_step_m) and self.max_step_m > 0):
            raise ValueError(f"max_step_m must be a finite number > 0, got {self.max_step_m}")
        if len(self.workspace_min) != 3 or len(self.workspace_max) != 3:
            raise ValueError("arm workspace corners must have three coordinates each")
        if any(lo >= hi for lo, hi in zip(self.workspace_min, self.workspace_max)):
            raise ValueError(f"arm workspace_min {self.workspace_min} must be below workspace_max {self.workspace_max}")


@dataclass(frozen=True)
class PreparedStep:
    """What ``prepare`` worked out for one step, before any planning: nothing is committed yet."""

    state: torch.Tensor  # (7,) observed pose, CPU
    goal_index: int  # the sub-goal this step plans for (after moving past finished ones)
    steps_on_goal: int  # steps already spent on it
    warm_start: Optional[SearchState]  # None after a sub-goal switch
    goal_energy: float  # observed energy against that sub-goal
    objective: Optional[GoalObjective]  # None: arrived at the final goal, hold without planning
    arm_limits: Optional[ArmLimits] = None  # what the arm announced, applied on top of the config's

    @property
    def hold(self) -> bool:
        return self.objective is None


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
    held: bool = False  # at the final goal (arrival_energy): nothing was planned, the action only keeps the limits


@dataclass(frozen=True)
class ControllerState:
    """A controller's whole per-session state on the host, picklable and device-free, so that a
    session can be planned by any copy of the same model (another process, another machine) and
    continue exactly where it stood: schedule position, warm start and noise stream position.

    ``warm_start``: (mean (H, 4), std (H, 4), elites (E, H, 4) or None) as float32 arrays, or None.
    ``noise_position``: what ``planner.noise.noise_position`` returned (a generator state), or None.
    """

    goal_index: int
    steps_on_goal: int
    warm_start: Optional[tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]]
    noise_position: object = None
    arrived: bool = False  # holding at the final goal (arrival_release_energy's hysteresis)


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
        self._maxnorm = torch.tensor([config.maxnorm])
        self._no_step_length = torch.tensor([math.inf])
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
        latents = [as_frame_latent(g.latent, "goal latent").to(self.device) for g in goals]
        previous = [None, *latents[:-1]]
        self.goals = [SubGoal(latent, goal.max_steps, self._switch_threshold(goal.energy_threshold, latent, before))
                      for goal, latent, before in zip(goals, latents, previous)]
        self.reset()

    def _switch_threshold(self, threshold: Optional[float], latent: torch.Tensor,
                          previous: Optional[torch.Tensor]) -> Optional[float]:
        """`threshold`, but never more than SEPARATION_FRACTION of the goal's energy from the sub-goal
        before it: a sub-goal that looks almost like the previous one (the gripper closed at the same
        place) is not passed on sight of the previous one; it runs its max_steps instead."""
        if threshold is None or previous is None:
            return threshold
        return min(threshold, SEPARATION_FRACTION * float(frame_distance(previous, latent, self.config.energy)))

    def reset(self) -> None:
        """Back to the first goal, forget the warm start (a new episode of the same session)."""
        self.goal_index = 0
        self.steps_on_goal = 0
        self.warm_start: Optional[SearchState] = None
        self.arrived = False  # the last step held at the final goal

    def export_state(self) -> ControllerState:
        """Where this controller stands, on the host (one small device-to-host copy; not for hot loops)."""
        warm = self.warm_start
        warm_arrays = None
        if warm is not None:
            warm_arrays = (warm.mean.float().cpu().numpy(), warm.std.float().cpu().numpy(),
                           None if warm.elites is None else warm.elites.float().cpu().numpy())
        noise = noise_position(self.optimizer.noise_source(self.device))
        return ControllerState(self.goal_index, self.steps_on_goal, warm_arrays,
                               noise.clone() if isinstance(noise, torch.Tensor) else noise, self.arrived)

    def resume(self, goal_index: int, steps_on_goal: int, arrived: bool) -> None:
        """Continue a session whose controller was lost (the service restarted) from its recorded schedule
        position; the search starts cold (no warm start, a fresh noise stream)."""
        self.import_state(ControllerState(goal_index, steps_on_goal, None, None, arrived))

    def import_state(self, state: ControllerState) -> None:
        """Continue from ``state`` (from ``export_state`` of a controller with the same config and goals)."""
        if not 0 <= state.goal_index < len(self.goals):
            raise ValueError(f"state is on goal {state.goal_index}, this controller has {len(self.goals)} goals")
        warm = None
        if state.warm_start is not None:
            mean, std, elites = (None if a is None else torch.from_numpy(np.asarray(a)).to(self.device)
                                 for a in state.warm_start)
            warm = SearchState(mean=mean, std=std, elites=elites)
        self.goal_index, self.steps_on_goal, self.warm_start = state.goal_index, state.steps_on_goal, warm
        self.arrived = state.arrived
        restore_noise_position(self.optimizer.noise_source(self.device), state.noise_position)

    def step(self, latent: torch.Tensor, state: torch.Tensor, should_stop: ShouldStop = None,
             arm_limits: ArmLimits | None = None) -> ControlStep:
        """Plan from the current frame latent (N, D) and pose (7,); return the action to execute now.

        ``should_stop()`` is asked before every optimiser iteration; when it answers True the step
        raises PlanCancelled and leaves the controller exactly as it was (schedule, warm start, noise).
        ``arm_limits``: the arm's announced limits, applied on top of the config's (see ArmLimits).
        """
        prepared = self.prepare(latent, state, arm_limits)
        if prepared.hold:
            return self.finish(prepared, None, 0.0)
        started = time.perf_counter()
        (plan,) = plans_on_host([self.solve(prepared, should_stop)])  # the one host sync of a step (ends the device work)
        return self.finish(prepared, plan, time.perf_counter() - started)

    def prepare(self, latent: torch.Tensor, state: torch.Tensor, arm_limits: ArmLimits | None = None) -> PreparedStep:
        """Check the inputs and work out what this step plans for; changes nothing in the controller."""
        latent = as_frame_latent(latent, "current latent").to(self.device)
        state = as_state(state)
        self.limits(arm_limits)  # the planner's box and the arm's must overlap
        if latent.shape != self.goals[self.goal_index].latent.shape:
            raise ValueError(
                f"current latent {tuple(latent.shape)} and goal latent {tuple(self.goals[self.goal_index].latent.shape)} differ in shape"
            )
        goal_index, steps_on_goal, warm_start, goal_energy = self._schedule_position(latent)
        if self._arrived(goal_index, goal_energy):
            return PreparedStep(state, goal_index, steps_on_goal, None, goal_energy, None, arm_limits)
        objective = GoalObjective(
            self.model,
            latent,
            state,
            self.goals[goal_index].latent,
            energy=self.energy,
            max_batch=self.config.max_batch,
            autocast_bf16=self.config.autocast_bf16,
        )
        return PreparedStep(state, goal_index, steps_on_goal, warm_start, goal_energy, objective, arm_limits)

    def solve(self, prepared: PreparedStep, should_stop: ShouldStop = None) -> Plan:
        """The optimiser's plan for a prepared (non-hold) step, on the device; changes nothing else."""
        with self.cancellable():
            return self.optimizer.solve(prepared.objective, prepared.warm_start, should_stop)

    @contextlib.contextmanager
    def cancellable(self):
        """Around a solve: if it is cancelled, put the noise source back where it was, so a re-plan
        draws the same noise (the rest of the controller only changes in ``finish``)."""
        noise = self.optimizer.noise_source(self.device)
        saved = noise_position(noise)
        try:
            yield
        except PlanCancelled:
            restore_noise_position(noise, saved)
            raise

    def finish(
        self,
        prepared: PreparedStep,
        plan: Optional[Plan],
        planning_seconds: float,
        limited: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    ) -> ControlStep:
        """Commit a prepared step: the schedule position and the warm start (the plan shifted by one
        step; none after a hold). ``plan`` (None for a hold) must already be on the host.
        ``limited``: the (action, target) ``within_limits`` gives for this step, when the caller
        computed it for many sessions at once."""
        action = plan.actions[0] if plan is not None else torch.zeros(7)
        if limited is None:
            limits = self.limits(prepared.arm_limits)
            actions, targets = within_limits(prepared.state[None], action[None], *(t[None] for t in limits))
            limited = actions[0], targets[0]
        self.goal_index = prepared.goal_index
        self.steps_on_goal = prepared.steps_on_goal + 1
        self.arrived = prepared.hold
        if plan is None:  # hold: stay where we are; the next step plans afresh if the arm drifts off the goal
            self.warm_start = None
            return ControlStep(*limited, torch.zeros(self.config.horizon, 7), prepared.goal_energy,
                               prepared.goal_energy, prepared.goal_index, 0.0, held=True)
        # Cold (warm_start=False): never carry the plan over, so every step, single or batched
        # (both read the warm start from ``prepare``), starts from the official initial distribution.
        self.warm_start = plan.state.shifted(self._initial_std) if self.config.warm_start else None
        return ControlStep(
            action=limited[0],
            target_pose=limited[1],
            plan=plan.actions,
            energy=float(plan.energy),
            goal_energy=prepared.goal_energy,
            goal_index=prepared.goal_index,
            planning_seconds=planning_seconds,
        )

    def _arrived(self, goal_index: int, goal_energy: float) -> bool:
        """On the final goal and observed within `arrival_energy` of it (within `arrival_release_energy`
        while already holding there): nothing left to plan."""
        threshold = self.config.arrival_energy
        if self.arrived and self.config.arrival_release_energy is not None:
            threshold = self.config.arrival_release_energy
        return threshold is not None and goal_index == len(self.goals) - 1 and goal_energy < threshold

    def _schedule_position(self, latent: torch.Tensor) -> tuple[int, int, Optional[SearchState], float]:
        """Where the schedule stands for this observation: (goal index, steps on it, warm start,
        observed goal energy), moving past every sub-goal that is done. Changes nothing."""
        goal_index, steps_on_goal, warm_start = self.goal_index, self.steps_on_goal, self.warm_start
        while True:
            goal = self.goals[goal_index]
            goal_energy = float(frame_distance(latent, goal.latent, self.config.energy)[0])
            is_last = goal_index == len(self.goals) - 1
            done = (goal.max_steps is not None and steps_on_goal >= goal.max_steps) or (
                goal.energy_threshold is not None and goal_energy < goal.energy_threshold
            )
            if is_last or not done:
                return goal_index, steps_on_goal, warm_start, goal_energy
            goal_index, steps_on_goal, warm_start = goal_index + 1, 0, None  # the old plan aimed at the old goal

    def limits(self, arm_limits: ArmLimits | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(maxnorm (1,), workspace_min (3,), workspace_max (3,), max step length (1,)) for ``within_limits``:
        the config's, with the arm's box intersected and its step length (inf when it announced none)."""
        if arm_limits is None:
            return self._maxnorm, self._workspace_min, self._workspace_max, self._no_step_length
        low = torch.maximum(self._workspace_min, torch.tensor(arm_limits.workspace_min))
        high = torch.minimum(self._workspace_max, torch.tensor(arm_limits.workspace_max))
        if bool((low >= high).any()):
            raise ValueError(f"the planner's workspace {self.config.workspace_min}..{self.config.workspace_max} and the "
                             f"arm's {arm_limits.workspace_min}..{arm_limits.workspace_max} do not overlap")
        return self._maxnorm, low, high, torch.tensor([arm_limits.max_step_m])


def within_limits(
    states: torch.Tensor, actions: torch.Tensor, maxnorm: torch.Tensor, low: torch.Tensor, high: torch.Tensor,
    max_step: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 7) poses and wanted actions, each row with its own limits ((B, 1) maxnorm, (B, 3)
    workspace corners, (B, 1) step length) -> (B, 7) actions and target poses: the target clamped
    inside the workspace, the step to +-maxnorm per axis and then to the arm's step length (Euclidean,
    as the arm's SafetyLimits.clamp does), action and target consistent.

    From inside the box the target stays inside (every clamp moves it toward the state); from outside,
    the step heads back toward the box.
    """
    wanted = (states[:, :3] + actions[:, :3]).clamp(low, high)
    step = torch.minimum(torch.maximum(wanted - states[:, :3], -maxnorm), maxnorm)
    length = step.norm(dim=-1, keepdim=True)
    step = torch.where(length > max_step, step * (max_step / length), step)
    limited = torch.cat((step, actions[:, 3:]), dim=-1)
    return limited, compose_pose(states, limited)
