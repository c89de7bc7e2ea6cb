"""What every sampling optimiser shares: the 4-D search space, its limits, the plan it returns.

Only xyz and gripper deltas are searched (SPEC section 7); rotation deltas are always zero. A
search distribution is a per-step mean and std over those 4 numbers, shape (H, 4), kept on the
model's device for the whole solve so nothing syncs with the host inside the loop.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Sequence

import torch

from planner.config import GRIPPER_DELTA_LIMIT, GRIPPER_ROUND_THRESHOLD, PlannerConfig
from planner.noise import NoiseSource, SeededNoise
from planner.objective import Objective

SEARCH_DIMS = 4  # x, y, z, gripper

ShouldStop = Optional[Callable[[], bool]]


class PlanCancelled(Exception):
    """``should_stop()`` returned True between two iterations: the solve was abandoned, no plan made."""


def check_stop(should_stop: ShouldStop) -> None:
    """Raise PlanCancelled when the caller asks to stop (checked before every iteration)."""
    if should_stop is not None and should_stop():
        raise PlanCancelled("planning cancelled between iterations")


@dataclass(frozen=True)
class SearchState:
    """Where an optimiser stands: distribution (H, 4) and, for iCEM, elites carried over (E, H, 4)."""

    mean: torch.Tensor
    std: torch.Tensor
    elites: Optional[torch.Tensor] = None

    def shifted(self, initial_std: torch.Tensor) -> "SearchState":
        """Warm start for the next control step: drop the executed step, append a fresh one.

        The mean moves one step earlier (the new last step starts at zero) and the std is reset,
        so the previous plan seeds the search without narrowing it.
        """
        mean = torch.cat((self.mean[1:], torch.zeros_like(self.mean[:1])))
        elites = None
        if self.elites is not None:
            elites = torch.cat((self.elites[:, 1:], torch.zeros_like(self.elites[:, :1])), dim=1)
        return SearchState(mean=mean, std=initial_std.to(self.mean.device).clone(), elites=elites)


@dataclass(frozen=True)
class Plan:
    """Result of one solve. Tensors stay on the model's device; read them after the solve."""

    actions: torch.Tensor  # (H, 7) with rotation deltas 0 and the small-gripper rounding applied
    energy: torch.Tensor  # () lowest energy seen in the final iteration
    state: SearchState  # final distribution (for warm starts)
    iteration_energies: list[torch.Tensor] = field(default_factory=list)  # (samples,) per iteration


def initial_state(config: PlannerConfig, device: torch.device) -> SearchState:
    """Official start: mean 0, std maxnorm for xyz and 1 for the gripper, per horizon step."""
    std = torch.tensor([config.maxnorm] * 3 + [1.0], device=device).repeat(config.horizon, 1)
    return SearchState(mean=torch.zeros(config.horizon, SEARCH_DIMS, device=device), std=std)


def clip_to_limits(candidates: torch.Tensor, maxnorm: float) -> torch.Tensor:
    """Per-axis clamp (not a norm projection) of xyz to +-maxnorm and of the gripper to +-0.75."""
    return torch.cat(
        (candidates[..., :3].clamp(-maxnorm, maxnorm), candidates[..., 3:].clamp(-GRIPPER_DELTA_LIMIT, GRIPPER_DELTA_LIMIT)),
        dim=-1,
    )


def to_actions(candidates: torch.Tensor) -> torch.Tensor:
    """(..., 4) [dx, dy, dz, dg] -> (..., 7) [dx, dy, dz, 0, 0, 0, dg]."""
    zeros = torch.zeros_like(candidates[..., :3])
    return torch.cat((candidates[..., :3], zeros, candidates[..., 3:]), dim=-1)


def final_actions(mean: torch.Tensor) -> torch.Tensor:
    """The returned plan: the mean, with gripper deltas below 0.25 in magnitude set to 0."""
    gripper = mean[..., 3:]
    gripper = torch.where(gripper.abs() < GRIPPER_ROUND_THRESHOLD, torch.zeros_like(gripper), gripper)
    return to_actions(torch.cat((mean[..., :3], gripper), dim=-1))


def momentum_weights(config: PlannerConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(4,) weights of the OLD mean and OLD std: xyz and gripper have separate momenta."""
    mean_weight = torch.tensor([config.momentum_mean] * 3 + [config.momentum_mean_gripper], device=device)
    std_weight = torch.tensor([config.momentum_std] * 3 + [config.momentum_std_gripper], device=device)
    return mean_weight, std_weight


def plans_on_host(plans: Sequence[Plan]) -> list[Plan]:
    """The plans with their actions and energy on the CPU, moved in ONE device-to-host copy (the one
    host sync of a control step, however many sessions it planned); search states stay on the device."""
    if not plans:
        return []
    packed = torch.cat([torch.cat((plan.actions.float().flatten(), plan.energy.float().reshape(1))) for plan in plans]).cpu()
    host, start = [], 0
    for plan in plans:
        size = plan.actions.numel()
        host.append(replace(plan, actions=packed[start : start + size].view(plan.actions.shape), energy=packed[start + size]))
        start += size + 1
    return host


@dataclass
class SearchRun:
    """One solve in progress, carried from iteration to iteration: the distribution, iCEM's elites,
    the best candidate of the latest iteration, and every iteration's energies."""

    mean: torch.Tensor  # (H, 4)
    std: torch.Tensor  # (H, 4)
    noise: NoiseSource
    mean_momentum: torch.Tensor  # (4,) weight of the old mean
    std_momentum: torch.Tensor  # (4,) weight of the old std
    elites: Optional[torch.Tensor] = None  # (E, H, 4), best first
    best_energy: Optional[torch.Tensor] = None  # () of elites[0]
    iteration_energies: list[torch.Tensor] = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def move_toward(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Momentum update: the momenta weight the OLD values (xyz and gripper separately)."""
        self.mean = (1 - self.mean_momentum) * mean + self.mean_momentum * self.mean
        self.std = (1 - self.std_momentum) * std + self.std_momentum * self.std


class SamplingOptimizer:
    """Base of CEM / MPPI / iCEM: holds the config and the noise source.

    One iteration is ``propose`` (candidates from the current distribution, (S, H, 4)), scoring
    them, then ``absorb`` (the energies move the distribution). ``solve`` runs that loop against one
    objective; ``planner.batch.step_together`` runs the same two halves for many sessions with one
    batched scoring call in between. Subclasses implement ``propose``, ``absorb`` and ``plan``.
    """

    def __init__(self, config: PlannerConfig, noise: NoiseSource | None = None):
        self.config = config
        self.noise = noise

    def noise_source(self, device: torch.device) -> NoiseSource:
        """The optimiser's noise source, a seeded one on ``device`` made on first use."""
        if self.noise is None:
            self.noise = SeededNoise(self.config.seed, device)
        return self.noise

    def start(self, device: torch.device, warm_start: SearchState | None) -> SearchState:
        fresh = initial_state(self.config, device)
        if warm_start is None:
            return fresh
        if warm_start.mean.shape != fresh.mean.shape:
            raise ValueError(
                f"warm start has horizon {warm_start.mean.shape[0]}, the planner uses {self.config.horizon}"
            )
        return replace(warm_start, mean=warm_start.mean.to(device), std=warm_start.std.to(device))

    def begin(self, device: torch.device, warm_start: SearchState | None = None) -> SearchRun:
        """A fresh run on ``device`` from ``warm_start`` (or the official initial distribution)."""
        state = self.start(device, warm_start)
        mean_momentum, std_momentum = momentum_weights(self.config, device)
        return SearchRun(state.mean, state.std, self.noise_source(device), mean_momentum, std_momentum, elites=state.elites)

    def propose(self, run: SearchRun) -> torch.Tensor:
        """This iteration's candidates (S, H, 4) [dx, dy, dz, dg], within the search limits."""
        raise NotImplementedError

    def absorb(self, run: SearchRun, candidates: torch.Tensor, energies: torch.Tensor) -> None:
        """Record the candidates' (S,) energies and move the run's distribution toward the best."""
        raise NotImplementedError

    def plan(self, run: SearchRun) -> Plan:
        """The plan a finished run returns."""
        raise NotImplementedError

    def iterate(self, run: SearchRun, objective: Objective) -> None:
        """One iteration against one objective (the body of the solve loop)."""
        candidates = self.propose(run)
        self.absorb(run, candidates, objective.evaluate(to_actions(candidates)))

    @torch.inference_mode()
    def solve(self, objective: Objective, warm_start: SearchState | None = None, should_stop: ShouldStop = None) -> Plan:
        """Plan against ``objective``; ``should_stop()`` is asked before every iteration and a True
        answer raises PlanCancelled."""
        run = self.begin(objective.device, warm_start)
        for _ in range(self.config.iterations):
            check_stop(should_stop)
            self.iterate(run, objective)
        return self.plan(run)
