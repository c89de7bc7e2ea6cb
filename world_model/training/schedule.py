"""Learning-rate schedule and AdamW parameter groups of the official recipe (SPEC.md section 10)."""
from __future__ import annotations

import torch


def warmup_stable_decay(step: int, total_steps: int, peak_lr: float, warmup_steps: int,
                        decay_steps: int, start_factor: float = 7.5e-5 / 4.25e-4) -> float:
    """Linear warm-up from start_factor*peak to peak, constant, then linear to 0 over the last decay_steps.

    start_factor defaults to the official 7.5e-5 -> 4.25e-4 ratio.
    """
    if step < warmup_steps:
        return peak_lr * (start_factor + (1.0 - start_factor) * step / warmup_steps)
    decay_start = total_steps - decay_steps
    if step >= decay_start and decay_steps > 0:
        return peak_lr * max(0.0, (total_steps - step) / decay_steps)
    return peak_lr


def adamw_parameter_groups(modules: list[torch.nn.Module], weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: biases and 1-D parameters (norms) are not decayed."""
    decayed, plain = [], []
    for module in modules:
        for name, parameter in module.named_parameters():
            if not parameter.requires_grad:
                continue
            (plain if parameter.ndim <= 1 or name.endswith(".bias") else decayed).append(parameter)
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
