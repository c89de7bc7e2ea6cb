"""Weight layout of the mask-token predictor in the plain V-JEPA 2 files (vitl/vith/vitg/vitg-384).

It exists so that those files load strictly (every key and shape checked) and their encoders
can be used as frozen encoders (e.g. to post-train an AC predictor on one). Its masked-prediction
forward pass belongs to self-supervised pretraining, which this project does not do, and the golden
fixtures record no output of it to check an implementation against, so it is deliberately not
implemented (world_model/README.md).
"""
from __future__ import annotations

import torch
from torch import nn

from .config import MaskTokenPredictorConfig
from .layers import Block


class MaskTokenPredictor(nn.Module):
    def __init__(self, config: MaskTokenPredictorConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.predictor_embed_dim
        self.predictor_embed = nn.Linear(config.embed_dim, dim)
        self.mask_tokens = nn.ParameterList(nn.Parameter(torch.zeros(1, 1, dim)) for _ in range(config.num_mask_tokens))
        self.predictor_blocks = nn.ModuleList(
            Block(dim, config.num_heads, config.mlp_hidden, config.qkv_bias, config.norm_eps)
            for _ in range(config.depth)
        )
        self.predictor_norm = nn.LayerNorm(dim, eps=config.norm_eps)
        self.predictor_proj = nn.Linear(dim, config.embed_dim)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(
            "the plain V-JEPA 2 mask-token predictor is loaded for its weight layout only; use the file's "
            "encoder as a frozen encoder (world_model/README.md)"
        )
