"""Energies: how far imagined latent frames are from a goal latent (lower is better).

The official planner scores only the final imagined frame with L1 (mean absolute difference over
all N x D elements). L2 (mean squared difference) and cosine (1 - mean per-token cosine
similarity) are alternatives; optional per-frame weights also score intermediate frames.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch

EnergyKind = Literal["l1", "l2", "cosine"]
ENERGY_KINDS: tuple[str, ...] = ("l1", "l2", "cosine")


def frame_distance(frames: torch.Tensor, goal: torch.Tensor, kind: EnergyKind = "l1") -> torch.Tensor:
    """Distance of each frame to the goal: frames (..., N, D), goal broadcastable -> (...)."""
    frames = frames.float()
    goal = goal.float()
    if kind == "l1":
        return (frames - goal).abs().mean(dim=(-2, -1))
    if kind == "l2":
        return (frames - goal).square().mean(dim=(-2, -1))
    if kind == "cosine":
        return 1.0 - torch.nn.functional.cosine_similarity(frames, goal.expand_as(frames), dim=-1).mean(dim=-1)
    raise ValueError(f"unknown energy {kind!r}; choose one of {', '.join(ENERGY_KINDS)}")


class Energy:
    """Scores a rollout (S, H, N, D) against a goal latent (N, D) -> energies (S,).

    With no ``frame_weights`` only the final frame counts (the official objective). With weights,
    the energy is the weighted mean of the per-frame distances; weights must have one entry per
    imagined frame.
    """

    def __init__(self, kind: EnergyKind = "l1", frame_weights: Sequence[float] | None = None):
        if kind not in ENERGY_KINDS:
            raise ValueError(f"unknown energy {kind!r}; choose one of {', '.join(ENERGY_KINDS)}")
        if frame_weights is not None:
            weights = torch.as_tensor(list(frame_weights), dtype=torch.float32)
            if weights.dim() != 1 or weights.numel() == 0:
                raise ValueError("frame_weights must be a non-empty list with one weight per imagined frame")
            if not torch.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
                raise ValueError("frame_weights must be finite, non-negative and not all zero")
            frame_weights = weights / weights.sum()
        self.kind = kind
        self.frame_weights = frame_weights
        self._device_weights: dict[torch.device, torch.Tensor] = {}

    def __call__(self, frames: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        if frames.dim() != 4:
            raise ValueError(f"frames must be (S, H, N, D), got shape {tuple(frames.shape)}")
        if self.frame_weights is None:
            return frame_distance(frames[:, -1], goal, self.kind)
        if self.frame_weights.numel() != frames.shape[1]:
            raise ValueError(
                f"frame_weights has {self.frame_weights.numel()} entries but the rollout has {frames.shape[1]} frames"
            )
        per_frame = frame_distance(frames, goal.unsqueeze(0) if goal.dim() == 3 else goal, self.kind)  # (S, H)
        if per_frame.device not in self._device_weights:  # copied once, not on every call
            self._device_weights[per_frame.device] = self.frame_weights.to(per_frame.device)
        return per_frame @ self._device_weights[per_frame.device]
