"""The one seam between search and model.

An optimiser only ever calls ``objective.evaluate(actions (S, H, 7)) -> energies (S,)``. The
objective owns everything model-side: the context and goal latents, chaining the imagined poses
with the batched pose math, the KV-cached rollout of all samples at once (in memory- or cache-sized chunks),
bf16 autocast and the energy. New optimisers and new energies never touch each other.
``evaluate_together`` is the same scoring for several objectives at once (one rollout over all
their candidates, each slice scored against its own goal); ``evaluate`` is its one-objective case.
"""
from __future__ import annotations

from typing import Protocol, Sequence

import torch

from planner.energy import Energy
from planner.pose import chain_poses


class Objective(Protocol):
    device: torch.device

    def evaluate(self, actions: torch.Tensor) -> torch.Tensor:
        """(S, H, 7) action sequences -> (S,) energies on ``device`` (lower is better)."""
        ...


class Rollout(Protocol):
    """What the objective needs from a world model (``world_model.WorldModel`` provides it)."""

    device: torch.device

    def rollout(
        self, context: torch.Tensor, actions: torch.Tensor, states: torch.Tensor, cached: bool = True
    ) -> torch.Tensor: ...


def as_frame_latent(latent: torch.Tensor, name: str) -> torch.Tensor:
    """Accept (N, D) or (1, N, D) and return (1, N, D)."""
    if latent.dim() == 2:
        latent = latent.unsqueeze(0)
    if latent.dim() != 3 or latent.shape[0] != 1:
        raise ValueError(f"{name} must be one frame latent (N, D) or (1, N, D), got shape {tuple(latent.shape)}")
    if not torch.isfinite(latent).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return latent


def as_state(state: torch.Tensor) -> torch.Tensor:
    """Accept a 7-D pose of shape (7,), (1, 7) or (1, 1, 7) and return (7,) float32."""
    state = torch.as_tensor(state, dtype=torch.float32)
    if state.numel() != 7:
        raise ValueError(f"state must be a 7-D pose [x, y, z, roll, pitch, yaw, gripper], got shape {tuple(state.shape)}")
    state = state.reshape(7)
    if not torch.isfinite(state).all():
        raise ValueError(f"state must be finite, got {state.tolist()}")
    return state


# On CPU, a chunk of about this many token rows per thread keeps one block's activations near the
# core's cache: measured on the demo model (18 tokens per step, 1 thread), 64-sample chunks roll
# out 256 samples ~14% faster than one 256-sample batch; with 2 threads 128 was best.
CPU_ROWS_PER_THREAD = 1152


def auto_max_batch(model: Rollout, horizon: int, device: torch.device, memory_fraction: float = 0.5) -> int | None:
    """Sample chunk size for one rollout call; None (no chunking) for models that do not describe
    their predictor.

    CUDA: the largest chunk whose rollout fits in ``memory_fraction`` of the free memory. Per
    sample a cached rollout holds the K/V of every layer for all H frames, the widest activation of
    one step, and the imagined frames; the estimate doubles that for allocator slack.
    CPU: a cache-sized chunk (`CPU_ROWS_PER_THREAD`).
    """
    predictor = getattr(getattr(model, "predictor", None), "config", None)
    if predictor is None:
        return None
    tokens = predictor.tokens_per_frame + 2
    if device.type == "cpu":
        return max(1, CPU_ROWS_PER_THREAD * torch.get_num_threads() // tokens)
    if device.type != "cuda":
        return None
    free_bytes, _ = torch.cuda.mem_get_info(device)
    width = predictor.predictor_embed_dim
    elements = (
        predictor.depth * 2 * horizon * tokens * width
        + 4 * tokens * max(predictor.mlp_hidden, 3 * width)
        + 2 * horizon * predictor.tokens_per_frame * predictor.embed_dim
    )
    per_sample = 2 * 4 * elements
    return max(1, int(memory_fraction * free_bytes // per_sample))


class GoalObjective:
    """Energy of imagined futures from (context latent, current pose) against a goal latent."""

    def __init__(
        self,
        model: Rollout,
        context: torch.Tensor,
        state: torch.Tensor,
        goal: torch.Tensor,
        energy: Energy | None = None,
        max_batch: int | None = None,
        autocast_bf16: bool = False,
        cached: bool = True,
    ):
        self.model = model
        self.device = torch.device(model.device)
        self.context = as_frame_latent(context, "context").to(self.device)
        self.goal = as_frame_latent(goal, "goal").to(self.device)
        if self.context.shape != self.goal.shape:
            raise ValueError(f"context {tuple(self.context.shape)} and goal {tuple(self.goal.shape)} latents differ in shape")
        self.state = as_state(state).to(self.device)
        self.energy = energy or Energy()
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch = max_batch  # None: decided on the first evaluate from free device memory
        self.autocast_bf16 = autocast_bf16
        self.cached = cached

    def candidate_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """(S, H, 7) action sequences, checked, as float32 on the device."""
        if actions.dim() != 3 or actions.shape[-1] != 7:
            raise ValueError(f"actions must be (S, H, 7), got shape {tuple(actions.shape)}")
        return actions.to(self.device, torch.float32)

    def score(self, frames: torch.Tensor) -> torch.Tensor:
        """(S, H, N, D) imagined latents -> (S,) energies against this objective's goal."""
        return self.energy(frames, self.goal)

    @torch.inference_mode()
    def evaluate(self, actions: torch.Tensor) -> torch.Tensor:
        if self.max_batch is None:
            # Once per objective (one control step): the memory query stays out of the iterations.
            self.max_batch = auto_max_batch(self.model, actions.shape[1], self.device) or actions.shape[0]
        return evaluate_together([self], [actions], self.max_batch)[0]


def can_share_rollout(a: GoalObjective, b: GoalObjective) -> bool:
    """Whether two objectives' candidates can go through one rollout call: same model, horizon
    handled by the caller, same precision and rollout kind."""
    return a.model is b.model and (a.autocast_bf16, a.cached) == (b.autocast_bf16, b.cached)


@torch.inference_mode()
def evaluate_together(
    objectives: Sequence[GoalObjective], actions: Sequence[torch.Tensor], max_batch: int | None = None
) -> list[torch.Tensor]:
    """Score each objective's (S_i, H, 7) candidates with ONE rollout over all of them (in chunks
    of at most ``max_batch`` samples): per-sample contexts and poses, each slice of the imagined
    frames scored against its own objective's goal and energy. Returns the (S_i,) energies.

    Objectives must be able to share a rollout (``can_share_rollout``) and their candidates must
    have the same horizon. A chunk within one objective keeps its (1, N, D) context; a chunk
    spanning several gets every sample's context.
    """
    if len(objectives) != len(actions) or not objectives:
        raise ValueError(f"need one (S, H, 7) action tensor per objective, got {len(actions)} for {len(objectives)}")
    first = objectives[0]
    if any(not can_share_rollout(first, other) for other in objectives[1:]):
        raise ValueError("objectives that share a rollout need the same model, precision and rollout kind")
    parts = [objective.candidate_actions(part) for objective, part in zip(objectives, actions)]
    if len({part.shape[1] for part in parts}) != 1:
        raise ValueError(f"objectives that share a rollout need one horizon, got {sorted({p.shape[1] for p in parts})}")
    sizes = [part.shape[0] for part in parts]
    if len(parts) == 1:
        all_actions, starts = parts[0], first.state
    else:
        all_actions = torch.cat(parts)
        starts = torch.cat([objective.state.expand(size, 7) for objective, size in zip(objectives, sizes)])
    # Frame h is imagined at pose h: the current pose, then the chain of composed actions (one
    # batched chain for every sample of every objective).
    all_states = chain_poses(starts, all_actions)[:, :-1]
    bounds = [0]
    for size in sizes:
        bounds.append(bounds[-1] + size)
    chunk = max_batch or bounds[-1]
    energies: list[list[torch.Tensor]] = [[] for _ in objectives]
    for start in range(0, bounds[-1], chunk):
        stop = min(start + chunk, bounds[-1])
        # (objective, first sample, end sample) of every objective this chunk covers
        pieces = [(i, max(start, bounds[i]), min(stop, bounds[i + 1])) for i in range(len(objectives))
                  if bounds[i] < stop and bounds[i + 1] > start]
        if len(pieces) == 1:
            context = objectives[pieces[0][0]].context
        else:
            context = torch.cat([objectives[i].context.expand(end - begin, -1, -1) for i, begin, end in pieces])
        with torch.autocast(first.device.type, dtype=torch.bfloat16, enabled=first.autocast_bf16):
            frames = first.model.rollout(context, all_actions[start:stop], all_states[start:stop], cached=first.cached)
        for i, begin, end in pieces:
            energies[i].append(objectives[i].score(frames[begin - start : end - start]))
    return [scored[0] if len(scored) == 1 else torch.cat(scored) for scored in energies]
