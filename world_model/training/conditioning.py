"""Data-aware initialisation of the predictor's action and state embeddings.

Actions and states enter the AC predictor raw (metres, radians; SPEC.md section 5), so a 5 cm
action times a freshly initialised 0.02-std weight is almost nothing next to the patch tokens,
and AdamW needs thousands of steps to grow those weights. Folding a per-dimension
standardisation into the initial weights and bias gives the conditioning tokens a normal scale
from step 0 while the model still takes raw actions and states, as the planner sends them.
"""
from __future__ import annotations

import torch

# Below this spread a dimension is treated as constant (e.g. rotation deltas, which the planner
# always sends as 0): its weights are not blown up to amplify noise.
MIN_STD = 0.01


@torch.no_grad()
def standardize_linear_input(layer: torch.nn.Linear, samples: torch.Tensor) -> None:
    """Rescale `layer` so that it acts on (x - mean) / std of `samples` (N, in_features)."""
    mean = samples.mean(0)
    std = samples.std(0).clamp_min(MIN_STD)
    layer.weight.div_(std)
    layer.bias.sub_(layer.weight @ mean)


def standardize_conditioning(predictor: torch.nn.Module, actions: torch.Tensor, states: torch.Tensor) -> None:
    """actions, states (N, 7) from the training set; modifies predictor.action_encoder / state_encoder."""
    standardize_linear_input(predictor.action_encoder, actions)
    standardize_linear_input(predictor.state_encoder, states)
