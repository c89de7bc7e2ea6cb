"""Plan many robot sessions at once: every CEM iteration scores all their candidates in one rollout.

A robot's plan is small (tens to hundreds of samples); a device, especially a GPU, is busy only
with thousands of rows per call. ``step_together`` runs one control step of several
``RecedingHorizonController``s: each session keeps its own goal schedule, warm start, noise and
planner settings, and per iteration every session proposes its candidates, ONE batched KV-cached
rollout imagines them all (per-sample contexts, poses and goals), and each session absorbs its own
slice of the energies. The pieces are the single-session ones (``controller.prepare`` / ``finish``,
``optimizer.begin`` / ``propose`` / ``absorb`` / ``plan``, ``evaluate_together``), so a session's
plan is the plan ``controller.step`` makes with the same noise (to float rounding of the batched
matrix products).

What cannot share a rollout call is grouped: one call per horizon (and per model, precision and
rollout kind) per iteration. A session with fewer iterations drops out of the later rounds.
"""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Optional, Sequence

import torch

from planner.controller import ArmLimits, ControlStep, RecedingHorizonController, within_limits
from planner.objective import GoalObjective, auto_max_batch, evaluate_together
from planner.search import Plan, SamplingOptimizer, SearchState, ShouldStop, check_stop, plans_on_host, to_actions


def step_together(
    controllers: Sequence[RecedingHorizonController],
    observation_latents: Sequence[torch.Tensor],
    states: Sequence[torch.Tensor],
    should_stop: ShouldStop = None,
    arm_limits: Sequence[ArmLimits | None] | None = None,
) -> list[ControlStep]:
    """One control step of every controller (latent (N, D) and pose (7,) each), planned together.

    Returns what each ``controller.step(latent, state, arm_limits=...)`` would, in order
    (``arm_limits``: one entry per controller, or None for none at all). ``should_stop()`` is
    asked before every iteration round; a True answer raises PlanCancelled and no controller
    changes (schedule, warm start and noise position all stay). Bad input raises ValueError before
    anything is planned, also with nothing changed.
    """
    if not len(controllers) == len(observation_latents) == len(states):
        raise ValueError(
            f"need one latent and one state per controller, got {len(controllers)} controllers, "
            f"{len(observation_latents)} latents and {len(states)} states"
        )
    if not controllers:
        return []
    if len({id(controller) for controller in controllers}) != len(controllers):
        raise ValueError("a controller appears twice in one step_together call; one step per session per round")
    arm_limits = [None] * len(controllers) if arm_limits is None else list(arm_limits)
    if len(arm_limits) != len(controllers):
        raise ValueError(f"need one arm_limits entry per controller, got {len(arm_limits)} for {len(controllers)}")
    prepared = [controller.prepare(latent, state, limits)
                for controller, latent, state, limits in zip(controllers, observation_latents, states, arm_limits)]
    planning = [index for index, step in enumerate(prepared) if not step.hold]
    started = time.perf_counter()
    with contextlib.ExitStack() as cancellable:
        for index in planning:
            cancellable.enter_context(controllers[index].cancellable())
        plans = solve_together(
            [(controllers[i].optimizer, prepared[i].objective, prepared[i].warm_start) for i in planning], should_stop
        )
    plans = plans_on_host(plans)  # one host sync for the whole round
    seconds = time.perf_counter() - started  # every session waited for the whole round
    by_index = dict(zip(planning, plans))
    # Every session's action and target within its limits, in one batched pose composition.
    wanted = torch.stack([by_index[i].actions[0] if i in by_index else torch.zeros(7) for i in range(len(prepared))])
    limits = [torch.stack(part) for part in zip(*(controller.limits(step.arm_limits)
                                                  for controller, step in zip(controllers, prepared)))]
    actions, targets = within_limits(torch.stack([step.state for step in prepared]), wanted, *limits)
    return [
        controller.finish(step, by_index.get(index), seconds if index in by_index else 0.0, (actions[index], targets[index]))
        for index, (controller, step) in enumerate(zip(controllers, prepared))
    ]


Search = tuple[SamplingOptimizer, GoalObjective, Optional[SearchState]]


@torch.inference_mode()
def solve_together(searches: Sequence[Search], should_stop: ShouldStop = None) -> list[Plan]:
    """``optimizer.solve(objective, warm_start)`` for each (optimizer, objective, warm start), with
    every iteration's candidates of all searches that can share a rollout scored in one call."""
    if not searches:
        return []
    if len({id(optimizer) for optimizer, _, _ in searches}) != len(searches):
        raise ValueError("each search needs its own optimizer (its noise source and distribution)")
    runs = [optimizer.begin(objective.device, warm_start) for optimizer, objective, warm_start in searches]
    if len({id(run.noise) for run in runs}) != len(runs):
        # A shared source would hand each search other draws than it gets alone, in another order.
        raise ValueError("each search needs its own noise source; two optimizers share one")
    groups = _rollout_groups(searches)
    chunk_sizes = {key: _max_batch([searches[i] for i in members]) for key, members in groups.items()}
    for iteration in range(max(optimizer.config.iterations for optimizer, _, _ in searches)):
        check_stop(should_stop)
        for key, members in groups.items():
            active = [i for i in members if searches[i][0].config.iterations > iteration]
            if not active:
                continue
            candidates = [searches[i][0].propose(runs[i]) for i in active]
            energies = evaluate_together(
                [searches[i][1] for i in active], [to_actions(c) for c in candidates], chunk_sizes[key]
            )
            for i, proposed, scored in zip(active, candidates, energies):
                searches[i][0].absorb(runs[i], proposed, scored)
    return [optimizer.plan(run) for (optimizer, _, _), run in zip(searches, runs)]


def _rollout_groups(searches: Sequence[Search]) -> dict[tuple, list[int]]:
    """Indices of the searches that can share one rollout call: same horizon, model, precision
    and rollout kind (insertion-ordered, so the rounds are deterministic)."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for index, (optimizer, objective, _) in enumerate(searches):
        key = (optimizer.config.horizon, id(objective.model), objective.autocast_bf16, objective.cached)
        groups[key].append(index)
    return dict(groups)


def _max_batch(group: Sequence[Search]) -> int | None:
    """Samples per rollout call for a group: the smallest limit any member asks for, else sized
    for the device like a single session's (``auto_max_batch``)."""
    asked = [objective.max_batch for _, objective, _ in group if objective.max_batch is not None]
    if asked:
        return min(asked)
    optimizer, objective, _ = group[0]
    return auto_max_batch(objective.model, optimizer.config.horizon, objective.device)
