"""The V-JEPA 2 video encoder: 3-D tubelet patches, RoPE-only positions, pre-norm ViT blocks."""
from __future__ import annotations

import torch
from torch import nn

from .config import EncoderConfig
from .layers import Block, init_transformer_weights
from .rope import RopeTableCache, attention_dtype, grid_positions


class PatchEmbed3D(nn.Module):
    """Conv3d with kernel = stride = (tubelet, patch, patch); tokens come out time-major, row-major."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        kernel = (config.tubelet_size, config.patch_size, config.patch_size)
        self.proj = nn.Conv3d(config.in_chans, config.embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.proj(video).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """`forward(video (B, C, T, H, W)) -> (B, T/tubelet * H/patch * W/patch, D)`, final LayerNorm applied.

    No class token and no additive position embedding, so any T divisible by the tubelet size
    and any H, W divisible by the patch size are accepted.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed3D(config)
        self.blocks = nn.ModuleList(
            Block(config.embed_dim, config.num_heads, config.mlp_hidden, config.qkv_bias, config.norm_eps)
            for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.embed_dim, eps=config.norm_eps)
        self._rope = RopeTableCache(config.head_dim)

    def reset_parameters(self) -> None:
        init_transformer_weights(self, self.blocks)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        grid = self._token_grid(video)
        x = self.patch_embed(video)
        dtype = attention_dtype(x.device, self.norm.weight.dtype)
        rope = self._rope.get(grid, lambda: grid_positions(*grid), x.device, dtype)
        for block in self.blocks:
            x = block(x, rope)
        return self.norm(x)

    def _token_grid(self, video: torch.Tensor) -> tuple[int, int, int]:
        c = self.config
        if video.dim() != 5 or video.shape[1] != c.in_chans:
            raise ValueError(f"expected video (B, {c.in_chans}, T, H, W), got shape {tuple(video.shape)}")
        frames, height, width = video.shape[2:]
        if frames % c.tubelet_size or height % c.patch_size or width % c.patch_size or not frames * height * width:
            raise ValueError(
                f"video (T, H, W) = {(frames, height, width)} must be non-empty, T divisible by "
                f"{c.tubelet_size} and H, W divisible by {c.patch_size}"
            )
        return frames // c.tubelet_size, height // c.patch_size, width // c.patch_size
