"""CEM reproduces the official planner: recorded noise in, recorded energies and action out."""
from __future__ import annotations

import pytest
import torch

from conftest import fixture_names
from planner.cem import CEM
from planner.config import PlannerConfig
from planner.noise import RecordedNoise, SeededNoise
from planner.objective import GoalObjective


def _cem_record(reference_folder, name):
    return torch.load(reference_folder / f"fixture_{name}_data.pt", map_location="cpu", weights_only=True)["cem"]


def official_config(mpc_args: dict) -> PlannerConfig:
    return PlannerConfig(
        horizon=mpc_args["rollout"],
        samples=mpc_args["samples"],
        topk=mpc_args["topk"],
        iterations=mpc_args["cem_steps"],
        maxnorm=mpc_args["maxnorm"],
        momentum_mean=mpc_args["momentum_mean"],
        momentum_std=mpc_args["momentum_std"],
        momentum_mean_gripper=mpc_args["momentum_mean_gripper"],
        momentum_std_gripper=mpc_args["momentum_std_gripper"],
    )


class RecordedEnergies:
    """Answers each evaluate() with the official energies of that iteration and keeps the actions asked about."""

    device = torch.device("cpu")

    def __init__(self, energies):
        self.energies = list(energies)
        self.actions = []

    def evaluate(self, actions):
        self.actions.append(actions.clone())
        return self.energies[len(self.actions) - 1]


@pytest.mark.parametrize("name", fixture_names())
def test_sampling_and_update_rule_match_official_given_its_energies(reference_folder, name):
    """Model-free check of sampling, clipping, top-k, momenta, unbiased std and gripper rounding."""
    record = _cem_record(reference_folder, name)
    config = official_config(record["mpc_args"])
    objective = RecordedEnergies(record["energies_per_iteration"])
    plan = CEM(config, RecordedNoise(record["randn_draws"])).solve(objective)
    torch.testing.assert_close(plan.actions, record["output_action"], atol=1e-5, rtol=0)
    horizon = config.horizon
    for iteration, actions in enumerate(objective.actions):
        # the official world model call of the last horizon step saw the whole sampled sequence
        official = record["world_model_calls"][iteration * horizon + horizon - 1]["actions_in"]
        torch.testing.assert_close(actions, official, atol=1e-6, rtol=0)
        assert actions[..., :3].abs().max() <= config.maxnorm
        assert actions[..., 6].abs().max() <= 0.75


@pytest.mark.parametrize("name", fixture_names())
def test_seeded_noise_repeats_the_official_draw_order(reference_folder, name):
    record = _cem_record(reference_folder, name)
    samples, horizon = record["mpc_args"]["samples"], record["mpc_args"]["rollout"]
    noise = SeededNoise(record["torch_manual_seed_before_call"])
    drawn = torch.cat([noise.standard_normal(samples, horizon, torch.device("cpu")).transpose(0, 1) for _ in range(record["mpc_args"]["cem_steps"])])
    torch.testing.assert_close(drawn, torch.stack(record["randn_draws"]), atol=0, rtol=0)


def test_recorded_noise_refuses_to_run_past_its_end():
    noise = RecordedNoise([torch.zeros(4, 4)])
    noise.standard_normal(4, 1, torch.device("cpu"))
    with pytest.raises(RuntimeError, match="exhausted"):
        noise.standard_normal(4, 1, torch.device("cpu"))


def test_gripper_delta_below_threshold_is_rounded_to_zero():
    # Energies favour samples whose gripper noise is small: the mean gripper ends near 0 and is zeroed.
    class PreferNoGripper:
        device = torch.device("cpu")

        def evaluate(self, actions):
            return actions[..., 6].abs().sum(-1)

    plan = CEM(PlannerConfig(horizon=2, samples=64, topk=8, iterations=4)).solve(PreferNoGripper())
    assert plan.actions[:, 6].tolist() == [0.0, 0.0]
    assert plan.actions[:, 3:6].abs().max() == 0


@pytest.mark.parametrize("name", fixture_names())
def test_cem_on_the_fixture_model_reproduces_official_energies_and_action(reference_folder, name):
    """End to end through the public world-model loader: recorded noise -> official energies and plan."""
    from world_model import load_world_model

    record = _cem_record(reference_folder, name)
    model = load_world_model(reference_folder / f"fixture_{name}_checkpoint.pt", device="cpu", dtype="float32")
    objective = GoalObjective(model, record["context_rep"], record["context_pose"], record["goal_rep"])
    plan = CEM(official_config(record["mpc_args"]), RecordedNoise(record["randn_draws"])).solve(objective)
    for ours, official in zip(plan.iteration_energies, record["energies_per_iteration"], strict=True):
        torch.testing.assert_close(ours, official, atol=1e-5, rtol=0)
    torch.testing.assert_close(plan.actions, record["output_action"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", fixture_names())
def test_chunked_bf16_and_uncached_objectives_agree(reference_folder, name):
    from world_model import load_world_model

    record = _cem_record(reference_folder, name)
    model = load_world_model(reference_folder / f"fixture_{name}_checkpoint.pt", device="cpu", dtype="float32")
    inputs = (record["context_rep"], record["context_pose"], record["goal_rep"])
    actions = record["world_model_calls"][1]["actions_in"]  # (S, 2, 7) official samples
    reference = GoalObjective(model, *inputs, cached=False).evaluate(actions)
    torch.testing.assert_close(GoalObjective(model, *inputs, max_batch=4).evaluate(actions), reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(record["energies_per_iteration"][0], reference, atol=1e-5, rtol=0)
    # bf16 is an approximation (SPEC pitfall 12): close in value, not bit-compatible
    bf16 = GoalObjective(model, *inputs, autocast_bf16=True).evaluate(actions)
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, reference, atol=0.05, rtol=0)
