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

from planner.search import Plan, SamplingOptimizer, SearchRun, SearchState, clip_to_limits, final_actions


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

    def propose(self, run: SearchRun) -> torch.Tensor:
        config = self.config
        draws = run.noise.standard_normal(config.samples, config.horizon, run.device)
        return clip_to_limits(run.mean + run.std * draws, config.maxnorm)

    def absorb(self, run: SearchRun, candidates: torch.Tensor, energies: torch.Tensor) -> None:
        run.iteration_energies.append(energies)
        run.move_toward(*self.fit(candidates, energies))

    def plan(self, run: SearchRun) -> Plan:
        return Plan(
            actions=final_actions(run.mean),
            energy=run.iteration_energies[-1].min(),
            state=SearchState(mean=run.mean, std=run.std),
            iteration_energies=run.iteration_energies,
        )
