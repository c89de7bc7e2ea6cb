"""Per-frame encoding for training, with gradients (WorldModel.encode runs under inference_mode).

As in the AC pipeline (SPEC.md section 4), every frame is encoded on its own as a 2-frame tubelet
of itself, then LayerNorm-ed without parameters.
"""
from __future__ import annotations

import torch

from world_model.preprocessing import normalize_latents, transform_frames


def encode_frames(encoder: torch.nn.Module, frames: torch.Tensor) -> torch.Tensor:
    """frames (B, T, H, W, 3) uint8 -> (B, T, N, D) normalised latents (resized to the encoder's size)."""
    batch, count = frames.shape[:2]
    pixels = transform_frames(frames.flatten(0, 1), encoder.config.img_size).transpose(0, 1)
    tubelets = pixels.unsqueeze(2).expand(-1, -1, encoder.config.tubelet_size, -1, -1)
    latents = normalize_latents(encoder(tubelets))
    return latents.view(batch, count, latents.shape[1], latents.shape[2])
