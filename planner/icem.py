"""iCEM (Pinneri et al. 2020): CEM with temporally coloured noise, elites carried between
iterations, and the current mean always among the candidates.

* Coloured noise: white noise is mixed along the horizon with the Cholesky factor of the
  correlation of a 1/f^beta process, so consecutive steps of a sample move together
  (beta = 0 gives CEM's white noise).
* A fraction of each iteration's elites joins the next iteration's candidates, and so does the
  current mean: an iteration can never end with a worse best candidate than it started with.
* The returned plan is the best candidate of the final iteration (not the mean), so its energy is
  the one reported.
"""
from __future__ import annotations

import math

import torch

from planner.cem import fit_elites
from planner.config import PlannerConfig
from planner.noise import NoiseSource
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


def coloured_noise_mixer(horizon: int, beta: float) -> torch.Tensor:
    """(H, H) lower-triangular L with L @ white = unit-variance noise of power spectrum 1/f^beta.

    The spectrum is laid over a circular window 4x the horizon (a horizon-length window makes
    1- and 2-step noise white). Its autocovariance at lag m is
    s_0^2 + 2 * sum_{0<k<n/2} s_k^2 cos(2 pi k m / n) + s_{n/2}^2 cos(pi m), with s_k = f_k^(-beta/2)
    and the zero frequency clipped to the lowest non-zero one: each frequency strictly between 0
    and Nyquist stands for itself and its mirror n - k, hence the 2.
    """
    window = 4 * horizon
    frequencies = torch.arange(window // 2 + 1, dtype=torch.float64) / window
    frequencies[0] = 1.0 / window
    power = frequencies ** (-beta)
    weights = torch.full_like(power, 2.0)
    weights[0] = 1.0
    weights[-1] = 1.0  # the Nyquist term (window is even)
    lags = torch.arange(horizon, dtype=torch.float64)
    covariance = (weights * power * torch.cos(2 * math.pi * lags[:, None] * torch.arange(power.numel()) / window)).sum(-1)
    correlation = covariance / covariance[0]
    toeplitz = correlation[(lags[:, None] - lags[None, :]).abs().long()]
    return torch.linalg.cholesky(toeplitz + 1e-9 * torch.eye(horizon, dtype=torch.float64)).float()


class ICEM(SamplingOptimizer):
    def __init__(self, config: PlannerConfig, noise: NoiseSource | None = None):
        super().__init__(config, noise)
        self._mixer = coloured_noise_mixer(config.horizon, config.icem_noise_beta)

    def _mixer_on(self, device: torch.device) -> torch.Tensor:
        """The mixer on ``device``, copied there once (later solves reuse it)."""
        if self._mixer.device != device:
            self._mixer = self._mixer.to(device)
        return self._mixer

    @torch.inference_mode()
    def solve(self, objective: Objective, warm_start: SearchState | None = None,
              should_stop: StopCheck | None = None) -> Plan:
        config = self.config
        device = objective.device
        noise = self._noise_for(device)
        state = self.start(objective, warm_start)
        mean, std, carried = state.mean, state.std, state.elites
        mixer = self._mixer_on(device)
        mean_momentum, std_momentum = momentum_weights(config, device)
        keep = round(config.icem_keep_elites * config.topk)
        iteration_energies = []
        for _ in range(config.iterations):
            raise_if_stopped(should_stop)
            coloured = torch.einsum("ij,sjd->sid", mixer, noise.standard_normal(config.samples, config.horizon, device))
            pool = [clip_to_limits(mean + std * coloured, config.maxnorm), mean.unsqueeze(0)]
            if carried is not None and keep > 0:
                pool.append(carried[:keep])
            candidates = torch.cat(pool)
            energies = objective.evaluate(to_actions(candidates))
            iteration_energies.append(energies)
            elite_fit = fit_elites(candidates, energies, config.topk)
            carried = elite_fit.elites
            mean = (1 - mean_momentum) * elite_fit.mean + mean_momentum * mean
            std = (1 - std_momentum) * elite_fit.std + std_momentum * std
        return Plan(
            actions=final_actions(elite_fit.elites[0]),
            energy=elite_fit.energies[0],
            state=SearchState(mean=mean, std=std, elites=carried),
            iteration_energies=iteration_energies,
        )
