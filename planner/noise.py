"""Injectable sources of standard-normal noise for the sampling optimisers.

Every optimiser asks for one (samples, horizon, 4) block of N(0, 1) noise per iteration, columns
x, y, z, gripper. ``SeededNoise`` draws it with its own generator (the same draw order as the
official planner, which calls ``randn(samples, 4)`` once per horizon step); ``RecordedNoise``
replays draws captured elsewhere, which is how the reference fixtures are reproduced exactly.
"""
from __future__ import annotations

from typing import Iterable, Protocol

import torch


class NoiseSource(Protocol):
    def standard_normal(self, samples: int, horizon: int, device: torch.device) -> torch.Tensor:
        """(samples, horizon, 4) float32 N(0, 1) noise on ``device``."""
        ...


class SeededNoise:
    """Draws from a private generator, so planners never disturb (or depend on) global RNG state."""

    def __init__(self, seed: int | None, device: torch.device | str = "cpu"):
        self.generator = torch.Generator(device=torch.device(device))
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def standard_normal(self, samples: int, horizon: int, device: torch.device) -> torch.Tensor:
        # One (samples, 4) draw per horizon step, in order: the official call sequence.
        draws = [
            torch.randn(samples, 4, generator=self.generator, device=self.generator.device) for _ in range(horizon)
        ]
        return torch.stack(draws, dim=1).to(device, non_blocking=True)

    def position(self) -> torch.Tensor:
        return self.generator.get_state()

    def seek(self, position: torch.Tensor) -> None:
        self.generator.set_state(position)


class RecordedNoise:
    """Replays a list of (samples, 4) draws, one per (iteration, horizon step) in the official order."""

    def __init__(self, draws: Iterable[torch.Tensor]):
        self._draws = list(draws)
        self._next = 0

    def standard_normal(self, samples: int, horizon: int, device: torch.device) -> torch.Tensor:
        if self._next + horizon > len(self._draws):
            raise RuntimeError(f"recorded noise exhausted after {len(self._draws)} draws")
        block = self._draws[self._next : self._next + horizon]
        self._next += horizon
        if any(draw.shape != (samples, 4) for draw in block):
            raise ValueError(f"recorded draws have shape {tuple(block[0].shape)}, the planner needs ({samples}, 4)")
        return torch.stack(block, dim=1).to(device=device, dtype=torch.float32)

    def position(self) -> int:
        return self._next

    def seek(self, position: int) -> None:
        self._next = position


def noise_position(noise: NoiseSource) -> object:
    """Where ``noise`` stands in its stream (None for sources without ``position``), so that
    ``restore_noise_position`` can put a cancelled plan's draws back and a re-plan draws the same."""
    position = getattr(noise, "position", None)
    return position() if callable(position) else None


def restore_noise_position(noise: NoiseSource, position: object) -> None:
    if position is not None:
        noise.seek(position)
