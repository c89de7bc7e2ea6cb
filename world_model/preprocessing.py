"""Pixels to encoder input, and encoder output to world-model latents.

Two crops exist in the official code and they differ for non-square frames:
* `center` (the inference transform of the official notebook and world-model wrapper): a
  centred square of side min(H, W), resized to S x S. Aspect ratio is kept.
* `droid` (the DROID post-training transform): its random-resized-crop can never fit, so it
  always falls back to a centred window of aspect ratio clamped to [0.75, 1.35], which is then
  squashed to S x S. For 16:9 video this is the distribution the released predictor was
  trained on.
Both resize bilinearly without antialiasing and normalise with ImageNet statistics in 0-255
space, in float32, exactly like the official transform (the float64 fixtures were computed
from float32 pixels too).
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LATENT_NORM_EPS = 1e-5  # F.layer_norm default; the networks' own LayerNorms use 1e-6
DROID_ASPECT_RANGE = (0.75, 1.35)
CROPS = ("center", "droid")

ImageBatch = Union[np.ndarray, torch.Tensor, Sequence[Union[np.ndarray, torch.Tensor]]]


def normalize_latents(latents: torch.Tensor) -> torch.Tensor:
    """Parameter-free LayerNorm over the feature dim (eps 1e-5), as applied to every latent."""
    return F.layer_norm(latents, (latents.shape[-1],), eps=LATENT_NORM_EPS)


def center_square_box(height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width) of the inference crop."""
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def droid_box(height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width) of the DROID training crop's deterministic fallback."""
    low, high = DROID_ASPECT_RANGE
    crop_h, crop_w = height, width
    if width / height > high:
        crop_w = int(round(height * high))
    elif width / height < low:
        crop_h = int(round(width / low))
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def transform_frames(frames: torch.Tensor | np.ndarray, size: int, crop: str = "center") -> torch.Tensor:
    """uint8 frames (T, H, W, 3) -> float32 (3, T, size, size): crop, resize, normalise."""
    frames = _as_uint8_frames(frames)
    box = {"center": center_square_box, "droid": droid_box}.get(crop)
    if box is None:
        raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
    top, left, crop_h, crop_w = box(frames.shape[1], frames.shape[2])
    clip = frames.to(torch.float32).permute(3, 0, 1, 2)[:, :, top:top + crop_h, left:left + crop_w]
    clip = F.interpolate(clip, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    mean = (torch.tensor(IMAGENET_MEAN, dtype=torch.float32) * 255).view(3, 1, 1, 1)
    std = (torch.tensor(IMAGENET_STD, dtype=torch.float32) * 255).view(3, 1, 1, 1)
    return (clip - mean.to(clip.device)) / std.to(clip.device)


def preprocess_images(
    images: ImageBatch, size: int, crop: str = "center", device: torch.device | str = "cpu"
) -> torch.Tensor:
    """uint8 (H, W, 3) | (B, H, W, 3) | list of (H, W, 3) of any sizes -> float32 (B, 3, size, size).

    The uint8 pixels move to `device` before the float work (4x less to transfer than floats).
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("no images given")
        frames = [transform_frames(_as_uint8_frames(image, single=True).to(device), size, crop) for image in images]
        return torch.cat(frames, dim=1).transpose(0, 1)
    frames = _as_uint8_frames(images, single=_ndim(images) != 4).to(device)
    return transform_frames(frames, size, crop).transpose(0, 1)


def _ndim(x) -> int:
    return x.dim() if isinstance(x, torch.Tensor) else np.ndim(x)


def _as_uint8_frames(x, single: bool = False) -> torch.Tensor:
    """Validate and convert to a uint8 tensor (T, H, W, 3); `single` means one (H, W, 3) image."""
    if not isinstance(x, (np.ndarray, torch.Tensor)):
        raise TypeError(f"images must be numpy arrays or torch tensors, got {type(x).__name__}")
    if x.dtype not in (np.uint8, torch.uint8):
        raise TypeError(f"images must be uint8 RGB, got dtype {x.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if single:
        if x.dim() != 3:
            raise ValueError(f"an image must be (H, W, 3), got shape {tuple(x.shape)}")
        x = x[None]
    if x.dim() != 4 or x.shape[-1] != 3 or 0 in x.shape:
        raise ValueError(f"frames must be non-empty (T, H, W, 3) RGB, got shape {tuple(x.shape)}")
    return x
