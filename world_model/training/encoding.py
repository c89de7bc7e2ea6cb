"""Per-frame encoding for training, with gradients (WorldModel.encode runs under inference_mode).

The same preprocessing and `frame_latents` as `WorldModel.encode` (SPEC.md section 4: every frame
is its own 2-frame tubelet, then a parameter-free LayerNorm), on (B, T) batches of clips.
"""
from __future__ import annotations

import torch

from world_model.model import frame_latents
from world_model.preprocessing import preprocess_images


def encode_frames(encoder: torch.nn.Module, frames: torch.Tensor) -> torch.Tensor:
    """frames (B, T, H, W, 3) uint8 -> (B, T, N, D) normalised latents (centre-cropped and resized
    to the encoder's size)."""
    batch, count = frames.shape[:2]
    pixels = preprocess_images(frames.flatten(0, 1), encoder.config.img_size, device=frames.device)
    latents = frame_latents(encoder, pixels)
    return latents.view(batch, count, latents.shape[1], latents.shape[2])
