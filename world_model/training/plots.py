"""Loss-curve PNG written next to the checkpoints."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: training runs on servers without a display
import matplotlib.pyplot as plt


def plot_losses(history: list[dict], validation: list[dict], path: Path) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    steps = [row["step"] for row in history]
    for key in ("loss", "teacher_forcing", "rollout"):
        axes[0].plot(steps, [row[key] for row in history], label=key)
    if validation:
        axes[0].plot([row["step"] for row in validation], [row["prediction_l1"] for row in validation],
                     "o-", label="validation prediction L1")
        axes[0].plot([row["step"] for row in validation], [row["copy_last_l1"] for row in validation],
                     "x--", label="validation copy-last L1")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("L1 on normalised latents")
    axes[0].set_yscale("log")
    axes[0].legend()
    axes[0].set_title("training loss")
    axes[1].plot(steps, [row["lr"] for row in history])
    axes[1].set_xlabel("step")
    axes[1].set_title("learning rate")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
