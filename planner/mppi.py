"""MPPI: every sample moves the distribution, weighted by its exponentiated negative energy.

Same interface, search space and loop as CEM; only the fit differs: a softmin-weighted mean and
std over all samples instead of the top-k's. The temperature is relative to each iteration's
energy range, so it needs no retuning when a model's energies live on another scale. The weighted
std is tracked too (with CEM's momenta) so the search narrows as it converges.
"""
from __future__ import annotations

import torch

from planner.cem import CEM


def softmin_weights(energies: torch.Tensor, temperature: float) -> torch.Tensor:
    """(S,) energies -> (S,) weights summing to 1; lower energy gets exponentially more weight."""
    spread = (energies.max() - energies.min()).clamp_min(torch.finfo(energies.dtype).tiny)
    return torch.softmax(-(energies - energies.min()) / (temperature * spread), dim=0)


class MPPI(CEM):
    def fit(self, candidates: torch.Tensor, energies: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = softmin_weights(energies, self.config.mppi_temperature)[:, None, None]
        weighted_mean = (weights * candidates).sum(dim=0)
        weighted_std = (weights * (candidates - weighted_mean).square()).sum(dim=0).sqrt()
        return weighted_mean, weighted_std
