"""The V-JEPA 2-AC action-conditioned predictor, with KV-cached per-frame stepping.

Per frame t the token sequence is [action_t, state_t, patch_t,0 .. patch_t,N-1]. Attention is
block-causal over whole frames (a token sees every token of frames <= its own). Output block t
is the prediction of frame t+1. Because of the block-causal mask, the keys and values of frame
t never change once computed; `step` exploits this to process only the newest frame.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import PredictorConfig
from .layers import Block, KVCache, init_transformer_weights, linear
from .rope import RopeTableCache, attention_dtype, grid_positions

CONDITIONING_TOKENS = 2  # action, state


def frame_positions(first_frame: int, frames: int, grid: int) -> torch.Tensor:
    """(frames * (2 + grid**2), 3) RoPE positions of the interleaved sequence.

    Action and state tokens of frame t sit at (t, 0, 0): rotated by time only, since a zero
    angle leaves the height and width slices unchanged. Patch tokens sit at (t, row, col).
    """
    per_frame = []
    for t in range(first_frame, first_frame + frames):
        conditioning = torch.tensor([[t, 0, 0]] * CONDITIONING_TOKENS)
        per_frame += [conditioning, grid_positions(1, grid, grid, first_frame=t)]
    return torch.cat(per_frame)


def block_causal_mask(frames: int, tokens_per_frame: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(L, L) bool, L = frames * tokens_per_frame; True where query frame >= key frame (may attend)."""
    frame_of_token = torch.arange(frames * tokens_per_frame, device=device) // tokens_per_frame
    return frame_of_token[None, :] <= frame_of_token[:, None]


@dataclass
class PredictorCache:
    """Per-layer K/V of the frames already stepped through (see `ACPredictor.step`)."""

    layers: list[KVCache]
    capacity_frames: int
    frames: int = 0


class ACPredictor(nn.Module):
    """`forward(x (B, T*N, D), actions (B, T, A), states (B, T, A)) -> (B, T*N, D)` (official signature).

    `x` holds the LayerNorm-ed encoder features of frames 0..T-1; output block t predicts frame t+1
    (raw: the world model normalises it). Actions and states enter unnormalised.
    """

    def __init__(self, config: PredictorConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.predictor_embed_dim
        self.predictor_embed = nn.Linear(config.embed_dim, dim)
        self.action_encoder = nn.Linear(config.action_dim, dim)
        self.state_encoder = nn.Linear(config.action_dim, dim)
        self.predictor_blocks = nn.ModuleList(
            Block(dim, config.num_heads, config.mlp_hidden, config.qkv_bias, config.norm_eps)
            for _ in range(config.depth)
        )
        self.predictor_norm = nn.LayerNorm(dim, eps=config.norm_eps)
        self.predictor_proj = nn.Linear(dim, config.embed_dim)
        self._rope = RopeTableCache(config.head_dim)
        self._masks: dict[tuple, torch.Tensor] = {}

    @property
    def tokens_per_step(self) -> int:
        return CONDITIONING_TOKENS + self.config.tokens_per_frame

    def reset_parameters(self) -> None:
        init_transformer_weights(self, self.predictor_blocks)

    def forward(self, x: torch.Tensor, actions: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        batch, frames = actions.shape[:2]
        n, dim = self.config.tokens_per_frame, self.config.embed_dim
        self._check_inputs(actions, states, frames)
        if x.shape != (batch, frames * n, dim):
            raise ValueError(f"x must be (B, T*N, D) = {(batch, frames * n, dim)}, got {tuple(x.shape)}")
        tokens = self._interleave(linear(self.predictor_embed, x).view(batch, frames, n, -1), actions, states)
        rope = self._frame_rope(0, frames, tokens)
        mask = self._mask(frames, tokens.device)
        for block in self.predictor_blocks:
            tokens = block(tokens, rope, mask)
        return self._readout(tokens, frames)

    def new_cache(self, frames: int | None = None) -> PredictorCache:
        """An empty cache with room for `frames` steps (default: the predictor's maximum)."""
        frames = self.config.max_time_steps if frames is None else frames
        if not 0 < frames <= self.config.max_time_steps:
            raise ValueError(f"cache frames must be in 1..{self.config.max_time_steps}, got {frames}")
        capacity = frames * self.tokens_per_step
        return PredictorCache([KVCache(capacity) for _ in self.predictor_blocks], frames)

    def step(self, frame: torch.Tensor, action: torch.Tensor, state: torch.Tensor, cache: PredictorCache) -> torch.Tensor:
        """Feed frame t = cache.frames: frame (1|B, N, D) features, action and state (B, A).

        Returns the raw prediction of frame t+1, (B, N, D), equal to the last block of
        `forward` over frames 0..t. Only the new N+2 tokens are computed; they attend to the
        cached keys/values of earlier frames and to their own frame, which the block-causal
        mask allows entirely, so attention runs unmasked (SDPA's fast kernels apply).
        """
        t = cache.frames
        if t >= cache.capacity_frames:
            raise ValueError(f"cache is full ({cache.capacity_frames} frames)")
        self._check_inputs(action[:, None], state[:, None], 1)
        n = self.config.tokens_per_frame
        if frame.dim() != 3 or frame.shape[1:] != (n, self.config.embed_dim) or frame.shape[0] not in (1, action.shape[0]):
            raise ValueError(f"frame must be (1|B, {n}, {self.config.embed_dim}), got {tuple(frame.shape)}")
        tokens = self._interleave(linear(self.predictor_embed, frame)[:, None], action[:, None], state[:, None])
        rope = self._frame_rope(t, 1, tokens)
        for block, layer_cache in zip(self.predictor_blocks, cache.layers):
            tokens = block(tokens, rope, None, layer_cache)
        cache.frames = t + 1
        return self._readout(tokens, 1)

    def _interleave(self, patches: torch.Tensor, actions: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """patches (1|B, T, N, Dp) -> (B, T*(N+2), Dp) ordered [action, state, patches] per frame."""
        action_tokens = self.action_encoder(actions)[:, :, None]
        state_tokens = self.state_encoder(states)[:, :, None]
        patches = patches.expand(actions.shape[0], -1, -1, -1)
        return torch.cat([action_tokens, state_tokens, patches], 2).flatten(1, 2)

    def _readout(self, tokens: torch.Tensor, frames: int) -> torch.Tensor:
        batch, dim = tokens.shape[0], tokens.shape[-1]
        patches = tokens.view(batch, frames, self.tokens_per_step, dim)[:, :, CONDITIONING_TOKENS:]
        return linear(self.predictor_proj, self.predictor_norm(patches.reshape(batch, -1, dim)))

    def _frame_rope(self, first_frame: int, frames: int, tokens: torch.Tensor):
        """Rows of the all-frames table for frames [first_frame, first_frame + frames)."""
        dtype = attention_dtype(tokens.device, self.predictor_norm.weight.dtype)
        steps, grid = self.config.max_time_steps, self.config.grid_size
        cos, sin = self._rope.get("frames", lambda: frame_positions(0, steps, grid), tokens.device, dtype)
        rows = slice(first_frame * self.tokens_per_step, (first_frame + frames) * self.tokens_per_step)
        return cos[rows], sin[rows]

    def _mask(self, frames: int, device: torch.device) -> torch.Tensor:
        key = (frames, device)
        if key not in self._masks:
            with torch.inference_mode(False):  # memoised, so usable under autograd later
                self._masks[key] = block_causal_mask(frames, self.tokens_per_step, device)
        return self._masks[key]

    def _check_inputs(self, actions: torch.Tensor, states: torch.Tensor, frames: int) -> None:
        dim = self.config.action_dim
        if actions.dim() != 3 or actions.shape[-1] != dim or states.shape != actions.shape:
            raise ValueError(
                f"actions and states must both be (B, T, {dim}), got {tuple(actions.shape)} and {tuple(states.shape)}"
            )
        if not 0 < frames <= self.config.max_time_steps:
            raise ValueError(f"the predictor handles 1..{self.config.max_time_steps} frames, got {frames}")
