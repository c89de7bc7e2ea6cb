"""What a person wants to look at after a demo run: an episode GIF, start/goal/final frames, energy curves."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the demo runs on servers and in CI
import imageio.v3 as iio
import matplotlib.pyplot as plt
import numpy as np

UPSCALE = 4  # 64 px camera frames are too small to see anything at 1:1


def write_episode_media(out: Path, index: int, frames: list[np.ndarray], goal: np.ndarray, final_distance_m: float) -> None:
    """episode_XX.gif (the run beside its goal) and episode_XX.png (start | goal | final)."""
    goal_big = _upscale(goal)
    gif_frames = [np.concatenate([_upscale(frame), _divider(goal_big), goal_big], axis=1) for frame in frames]
    iio.imwrite(out / f"episode_{index:02d}.gif", np.stack(gif_frames), duration=250, loop=0)
    figure, axes = plt.subplots(1, 3, figsize=(9, 3.3))
    for axis, image, title in zip(axes, (frames[0], goal, frames[-1]),
                                  ("start", "goal", f"final ({100 * final_distance_m:.1f} cm to go)")):
        axis.imshow(image, interpolation="nearest")
        axis.set_title(title)
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(out / f"episode_{index:02d}.png", dpi=100)
    plt.close(figure)


def plot_energies(path: Path, energies: list[list[float]], distances: list[list[float]], successes: list[bool]) -> None:
    """Planner energy and true distance to the goal per control step, one line per episode."""
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for index, (energy, distance, success) in enumerate(zip(energies, distances, successes)):
        style = {"color": "tab:green" if success else "tab:red", "alpha": 0.7, "linewidth": 1}
        top.plot(range(1, len(energy) + 1), energy, **style)
        bottom.plot(range(1, len(distance) + 1), [100 * d for d in distance], **style)
    top.set_ylabel("planned energy (L1 to goal latent)")
    top.set_title("green: reached, red: missed")
    bottom.set_ylabel("distance to goal (cm)")
    bottom.set_xlabel("control step")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _upscale(image: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(image, UPSCALE, axis=0), UPSCALE, axis=1)


def _divider(image: np.ndarray) -> np.ndarray:
    return np.full((image.shape[0], 4, 3), 255, dtype=np.uint8)
