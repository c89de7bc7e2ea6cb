"""MPPI: every sample moves the distribution, weighted by its exponentiated negative energy.

Same interface and search space as CEM. The temperature is relative to each iteration's energy
range, so it needs no retuning when a model's energies live on another scale. The weighted std is
tracked too (with CEM's momenta) so the search narrows as it converges.
"""
from __future__ import annotations

import torch

from planner.objective import Objective
from planner.search import (
    Plan,
    SamplingOptimizer,
    SearchState,
    clip_to_limits,
    final_actions,
    momentum_weights,
    to_actions,
)


def softmin_weights(energies: torch.Tensor, temperature: float) -> torch.Tensor:
    """(S,) energies -> (S,) weights summing to 1; lower energy gets exponentially more weight."""
    spread = (energies.max() - energies.min()).clamp_min(torch.finfo(energies.dtype).tiny)
    return torch.softmax(-(energies - energies.min()) / (temperature * spread), dim=0)


class MPPI(SamplingOptimizer):
    @torch.inference_mode()
    def solve(self, objective: Objective, warm_start: SearchState | None = None) -> Plan:
        config = self.config
        device = objective.device
        noise = self._noise_for(device)
        state = self.start(objective, warm_start)
        mean, std = state.mean, state.std
        mean_momentum, std_momentum = momentum_weights(config, device)
        iteration_energies = []
        for _ in range(config.iterations):
            candidates = clip_to_limits(mean + std * noise.standard_normal(config.samples, config.horizon, device), config.maxnorm)
            energies = objective.evaluate(to_actions(candidates))
            iteration_energies.append(energies)
            weights = softmin_weights(energies, config.mppi_temperature)[:, None, None]
            weighted_mean = (weights * candidates).sum(dim=0)
            weighted_std = (weights * (candidates - weighted_mean).square()).sum(dim=0).sqrt()
            mean = (1 - mean_momentum) * weighted_mean + mean_momentum * mean
            std = (1 - std_momentum) * weighted_std + std_momentum * std
        return Plan(
            actions=final_actions(mean),
            energy=iteration_energies[-1].min(),
            state=SearchState(mean=mean, std=std),
            iteration_energies=iteration_energies,
        )
