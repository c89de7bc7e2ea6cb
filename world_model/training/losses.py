"""The V-JEPA 2-AC training objective (SPEC.md section 10): L1 teacher forcing + multi-step rollout.

Both terms compare LayerNorm-ed features. Output block t of the predictor is the prediction of
frame t+1, so a clip of T frames gives T-1 teacher-forced predictions.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from world_model.preprocessing import normalize_latents


@dataclass
class PredictorLosses:
    teacher_forcing: torch.Tensor   # scalar, mean |z_hat - z| over frames 1..T-1 from true contexts
    rollout: torch.Tensor           # scalar, mean over frames 1..k predicted from the model's own outputs

    @property
    def total(self) -> torch.Tensor:
        return self.teacher_forcing + self.rollout


def predictor_losses(
    predictor: torch.nn.Module,
    context: torch.Tensor,
    targets: torch.Tensor,
    actions: torch.Tensor,
    states: torch.Tensor,
    rollout_steps: int = 2,
) -> PredictorLosses:
    """context, targets (B, T, N, D) normalised latents; actions (B, T-1, 7); states (B, T, 7).

    `context` feeds the predictor (it may carry gradients into an encoder); `targets` are what
    frames 1..T-1 should be predicted as. The rollout starts from frame 0 with ground-truth
    states, feeding back the last N output tokens, as the official recipe does.
    """
    batch, frames, tokens, dim = context.shape
    if frames < 2:
        raise ValueError(f"a training clip needs at least 2 frames, got {frames}")
    if not 1 <= rollout_steps <= frames - 1:
        raise ValueError(f"rollout_steps must be in [1, {frames - 1}] for {frames}-frame clips, got {rollout_steps}")
    steps = frames - 1
    predicted = predictor(context[:, :steps].reshape(batch, steps * tokens, dim), actions, states[:, :steps])
    predicted = normalize_latents(predicted).view(batch, steps, tokens, dim)
    teacher_forcing = (predicted - targets[:, 1:]).abs().mean()

    history = [context[:, 0], predicted[:, 0]]
    rollout_errors = [(predicted[:, 0] - targets[:, 1]).abs().mean()]
    for step in range(2, rollout_steps + 1):
        window = torch.stack(history, dim=1).reshape(batch, step * tokens, dim)
        next_frame = normalize_latents(predictor(window, actions[:, :step], states[:, :step])[:, -tokens:])
        rollout_errors.append((next_frame - targets[:, step]).abs().mean())
        history.append(next_frame)
    return PredictorLosses(teacher_forcing, torch.stack(rollout_errors).mean())
