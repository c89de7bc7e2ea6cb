"""Cross-entropy method with the official V-JEPA 2-AC semantics (SPEC section 7), batched.

Per iteration: draw (samples, H, 4) noise, form mean + std * noise, clamp per axis, score every
sample with ONE objective call (the objective runs one KV-cached rollout for the whole batch),
keep the top-k lowest energies, and move mean/std toward the elites' mean and unbiased std with
momenta that weight the OLD values (xyz and gripper separately). The official code interleaves
sampling with the model per horizon step; the draws never depend on model outputs, so drawing
all steps first gives the same numbers.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from planner.objective import Objective
from planner.search import (
    Plan,
    SamplingOptimizer,
    SearchState,
    StopCheck,
    clip_to_limits,
    final_actions,
    momentum_weights,
    raise_if_stopped,
    to_actions,
)


class EliteFit(NamedTuple):
    """The top-k lowest-energy candidates of one iteration and the distribution they point to."""

    elites: torch.Tensor  # (k, H, 4), best first
    energies: torch.Tensor  # (k,) their energies, ascending
    mean: torch.Tensor  # (H, 4)
    std: torch.Tensor  # (H, 4) unbiased


def fit_elites(candidates: torch.Tensor, energies: torch.Tensor, topk: int) -> EliteFit:
    """(S, H, 4) candidates and their (S,) energies -> the top-k, their mean and unbiased std."""
    best = torch.topk(energies, topk, largest=False)  # sorted, best first
    elites = candidates[best.indices]
    return EliteFit(elites, best.values, elites.mean(dim=0), elites.std(dim=0, correction=1))


class CEM(SamplingOptimizer):
    def fit(self, candidates: torch.Tensor, energies: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The distribution this iteration's scores point to: mean and unbiased std of the top-k."""
        elite_fit = fit_elites(candidates, energies, self.config.topk)
        return elite_fit.mean, elite_fit.std

    @torch.inference_mode()
    def solve(self, objective: Objective, warm_start: SearchState | None = None,
              should_stop: StopCheck | None = None) -> Plan:
        config = self.config
        device = objective.device
        noise = self._noise_for(device)
        state = self.start(objective, warm_start)
        mean, std = state.mean, state.std
        mean_momentum, std_momentum = momentum_weights(config, device)
        iteration_energies = []
        for _ in range(config.iterations):
            raise_if_stopped(should_stop)
            candidates = clip_to_limits(mean + std * noise.standard_normal(config.samples, config.horizon, device), config.maxnorm)
            energies = objective.evaluate(to_actions(candidates))
            iteration_energies.append(energies)
            fitted_mean, fitted_std = self.fit(candidates, energies)
            mean = (1 - mean_momentum) * fitted_mean + mean_momentum * mean
            std = (1 - std_momentum) * fitted_std + std_momentum * std
        return Plan(
            actions=final_actions(mean),
            energy=iteration_energies[-1].min(),
            state=SearchState(mean=mean, std=std),
            iteration_energies=iteration_energies,
        )
