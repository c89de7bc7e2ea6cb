"""iCEM: the elite fit it shares with CEM, its coloured noise, and what carrying elites guarantees."""
from __future__ import annotations

import pytest
import torch

import planner.icem
from planner.cem import CEM, fit_elites
from planner.config import PlannerConfig
from planner.icem import ICEM, coloured_noise_mixer
from planner.noise import SeededNoise

TARGET = torch.tensor([0.03, -0.02, 0.01])


class Bowl:
    """Energy = squared distance of the summed xyz deltas from TARGET; the gripper is ignored, so
    the plan's gripper rounding cannot change a candidate's energy."""

    device = torch.device("cpu")

    def evaluate(self, actions: torch.Tensor) -> torch.Tensor:
        return (actions[..., :3].sum(dim=-2) - TARGET).square().sum(dim=-1)


def test_fit_elites_keeps_the_lowest_energies_best_first_and_fits_them():
    candidates = torch.randn(9, 3, 4, generator=torch.Generator().manual_seed(0))
    energies = torch.tensor([5.0, 1.0, 7.0, 0.5, 3.0, 9.0, 2.0, 8.0, 4.0])
    fit = fit_elites(candidates, energies, topk=3)
    assert fit.energies.tolist() == [0.5, 1.0, 2.0]
    expected = candidates[[3, 1, 6]]
    assert torch.equal(fit.elites, expected)
    torch.testing.assert_close(fit.mean, expected.mean(dim=0))
    # unbiased: a sum of squares over k - 1
    torch.testing.assert_close(fit.std, ((expected - expected.mean(dim=0)).square().sum(dim=0) / 2).sqrt())


def test_cem_fit_is_the_shared_elite_fit():
    candidates = torch.randn(16, 2, 4, generator=torch.Generator().manual_seed(1))
    energies = torch.rand(16, generator=torch.Generator().manual_seed(2))
    mean, std = CEM(PlannerConfig(horizon=2, samples=16, topk=4)).fit(candidates, energies)
    fit = fit_elites(candidates, energies, 4)
    assert torch.equal(mean, fit.mean) and torch.equal(std, fit.std)


@pytest.mark.parametrize("horizon", [1, 2, 3, 8])
def test_white_mixer_is_the_identity(horizon):
    torch.testing.assert_close(coloured_noise_mixer(horizon, 0.0), torch.eye(horizon), atol=1e-4, rtol=0)


def test_coloured_mixer_gives_unit_variance_noise_correlated_along_the_horizon():
    mixer = coloured_noise_mixer(6, 2.0)
    assert torch.equal(mixer, mixer.tril())  # step h mixes only white draws 0..h
    covariance = mixer @ mixer.T
    torch.testing.assert_close(covariance.diagonal(), torch.ones(6), atol=1e-5, rtol=0)
    neighbours = covariance.diagonal(1)
    assert (neighbours > 0.5).all()
    # a redder spectrum moves neighbouring steps more alike
    assert ((coloured_noise_mixer(6, 3.0) @ coloured_noise_mixer(6, 3.0).T).diagonal(1) > neighbours).all()


def test_the_mixer_is_built_once_per_planner_not_per_solve(monkeypatch):
    config = PlannerConfig(optimizer="icem", horizon=3, samples=16, topk=4, iterations=2)
    icem = ICEM(config, SeededNoise(0))

    def rebuilt(*args):
        raise AssertionError("the coloured-noise mixer was rebuilt inside solve")

    monkeypatch.setattr(planner.icem, "coloured_noise_mixer", rebuilt)
    first = icem.solve(Bowl())
    icem.solve(Bowl(), first.state.shifted(first.state.std))


def test_carried_elites_make_every_iteration_at_least_as_good_as_the_last():
    config = PlannerConfig(optimizer="icem", horizon=3, samples=24, topk=6, iterations=6, icem_keep_elites=0.5)
    plan = ICEM(config, SeededNoise(4)).solve(Bowl())
    best = torch.stack([energies.min() for energies in plan.iteration_energies])
    assert (best[1:] <= best[:-1]).all(), best
    assert best[-1] < best[0]  # and the search did improve
    # the reported plan is the final iteration's best candidate, with its own energy
    assert plan.energy == best[-1]
    torch.testing.assert_close(Bowl().evaluate(plan.actions[None])[0], plan.energy)
    assert plan.state.elites.shape == (config.topk, config.horizon, 4)


def test_a_warm_start_carries_the_elites_into_the_next_solve():
    config = PlannerConfig(optimizer="icem", horizon=2, samples=16, topk=4, iterations=2, icem_keep_elites=0.5)
    icem = ICEM(config, SeededNoise(5))
    first = icem.solve(Bowl())
    second = icem.solve(Bowl(), first.state)
    # 16 samples + the mean + round(0.5 * 4) carried elites
    assert [e.numel() for e in second.iteration_energies] == [19, 19]
    assert [e.numel() for e in first.iteration_energies] == [17, 19]
