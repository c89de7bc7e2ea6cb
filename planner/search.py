"""What every sampling optimiser shares: the 4-D search space, its limits, the plan it returns.

Only xyz and gripper deltas are searched (SPEC section 7); rotation deltas are always zero. A
search distribution is a per-step mean and std over those 4 numbers, shape (H, 4), kept on the
model's device for the whole solve so nothing syncs with the host inside the loop.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import torch

from planner.config import GRIPPER_DELTA_LIMIT, GRIPPER_ROUND_THRESHOLD, PlannerConfig
from planner.noise import NoiseSource, SeededNoise
from planner.objective import Objective

SEARCH_DIMS = 4  # x, y, z, gripper

StopCheck = Callable[[], bool]
"""A cheap host-side test (e.g. reading a threading.Event), asked before every iteration of a solve."""


class PlanCancelled(Exception):
    """A solve (or a control step) was told to stop between iterations; its partial result is discarded."""


def raise_if_stopped(should_stop: Optional[StopCheck]) -> None:
    if should_stop is not None and should_stop():
        raise PlanCancelled("planning was cancelled")


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


class SamplingOptimizer:
    """Base of CEM / MPPI / iCEM: holds the config and the noise source; subclasses implement solve."""

    def __init__(self, config: PlannerConfig, noise: NoiseSource | None = None):
        self.config = config
        self.noise = noise

    def _noise_for(self, device: torch.device) -> NoiseSource:
        if self.noise is None:
            self.noise = SeededNoise(self.config.seed, device)
        return self.noise

    def start(self, objective: Objective, warm_start: SearchState | None) -> SearchState:
        fresh = initial_state(self.config, objective.device)
        if warm_start is None:
            return fresh
        if warm_start.mean.shape != fresh.mean.shape:
            raise ValueError(
                f"warm start has horizon {warm_start.mean.shape[0]}, the planner uses {self.config.horizon}"
            )
        return replace(warm_start, mean=warm_start.mean.to(objective.device), std=warm_start.std.to(objective.device))

    def solve(self, objective: Objective, warm_start: SearchState | None = None,
              should_stop: StopCheck | None = None) -> Plan:
        """Search from `warm_start`; `should_stop()` is asked before each iteration (PlanCancelled when true)."""
        raise NotImplementedError
