"""`jepa-planner energy`: the energy of one imagined step over a grid of xyz actions, as a PNG.

Like the official energy-landscape notebook: from a frame and its pose, imagine the next frame
for every action on a cubic grid (5 x 5 x 5 in +-0.075 m by default, zero rotation and gripper)
and score it against the goal image's latent. A well-trained model has its minimum near the
action that really leads to the goal. The plot shows one x-y heat map per z slice.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from planner.energy import ENERGY_KINDS, Energy
from planner.objective import GoalObjective, Rollout
from planner.pose import pose_difference


def action_grid(points: int, extent: float) -> torch.Tensor:
    """(points^3, 7) actions, x-major then y then z (the notebook's order), rotation and gripper 0."""
    axis = torch.linspace(-extent, extent, points)
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    xyz = torch.stack((x, y, z), dim=-1).reshape(-1, 3)
    return torch.cat((xyz, torch.zeros(xyz.shape[0], 4)), dim=-1)


def energy_grid(
    model: Rollout, context: torch.Tensor, state: torch.Tensor, goal: torch.Tensor, points: int = 5,
    extent: float = 0.075, energy: Energy | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(actions (K, 7), energies (K,)) of a one-step rollout for every grid action, K = points^3."""
    actions = action_grid(points, extent)
    objective = GoalObjective(model, context, state, goal, energy=energy)
    return actions, objective.evaluate(actions[:, None, :]).float().cpu()


def plot_landscape(
    actions: torch.Tensor, energies: torch.Tensor, points: int, path: Path, reference: torch.Tensor | None = None
) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: a server has no display
    import matplotlib.pyplot as plt

    grid = energies.reshape(points, points, points).numpy()  # [x, y, z]
    axis = actions[:, 0].reshape(points, points, points)[:, 0, 0].numpy()
    best = actions[int(energies.argmin())]
    half_step = (axis[1] - axis[0]) / 2 if points > 1 else 0.01
    bounds = (axis[0] - half_step, axis[-1] + half_step, axis[0] - half_step, axis[-1] + half_step)
    figure, panels = plt.subplots(1, points, figsize=(3.2 * points, 3.4), squeeze=False, constrained_layout=True)
    for k, panel in enumerate(panels[0]):
        image = panel.imshow(
            grid[:, :, k].T, origin="lower", extent=bounds, vmin=grid.min(), vmax=grid.max(), cmap="viridis"
        )
        panel.set_title(f"dz = {axis[k]:+.3f} m")
        panel.set_xlabel("dx (m)")
        if k == 0:
            panel.set_ylabel("dy (m)")
        if abs(float(best[2]) - axis[k]) < 1e-9:
            panel.plot(float(best[0]), float(best[1]), "r*", markersize=14, label="minimum")
        if reference is not None and abs(float(reference[2]) - axis[k]) <= half_step:
            panel.plot(float(reference[0]), float(reference[1]), "wx", markersize=12, mew=2, label="reference")
    figure.colorbar(image, ax=panels[0].tolist(), shrink=0.85, label="energy")
    figure.suptitle(f"energy of one imagined step; minimum at ({best[0]:+.3f}, {best[1]:+.3f}, {best[2]:+.3f}) m")
    figure.savefig(path, dpi=100)
    plt.close(figure)


def read_rgb(path: str) -> np.ndarray:
    """An image file as uint8 (H, W, 3); a clear error for anything else."""
    import imageio.v3 as iio

    try:
        image = np.asarray(iio.imread(path, plugin="pillow"))
    except Exception as error:  # pillow raises many types for unreadable files
        raise ValueError(f"cannot read image {path!r}: {error}") from None
    if image.dtype != np.uint8:
        raise ValueError(f"image {path!r} must be 8-bit, got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"image {path!r} must be RGB or RGBA, got shape {image.shape}")
    return np.ascontiguousarray(image[..., :3])


def parse_pose(text: str, name: str) -> torch.Tensor:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{name} must be 7 comma-separated numbers, got {text!r}") from None
    if len(values) != 7 or not all(np.isfinite(values)):
        raise ValueError(f"{name} must be 7 finite comma-separated numbers x,y,z,roll,pitch,yaw,gripper, got {text!r}")
    return torch.tensor(values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frame", required=True, help="current camera image (PNG/JPEG)")
    parser.add_argument("--goal", required=True, help="goal camera image")
    parser.add_argument("--state", required=True, help="current pose x,y,z,roll,pitch,yaw,gripper")
    parser.add_argument("--goal-state", help="pose of the goal image, to mark the true action on the plot")
    parser.add_argument("--model", default="demo", help="world model preset or weights file (default: demo)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--points", type=int, default=5, help="grid points per axis")
    parser.add_argument("--extent", type=float, default=0.075, help="grid half-width in metres")
    parser.add_argument("--energy", choices=ENERGY_KINDS, default="l1")
    parser.add_argument("--out", default="energy_landscape.png")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def run(args: argparse.Namespace) -> int:
    from world_model import load_world_model

    try:
        if args.points < 2 or not (0 < args.extent <= 0.5):
            raise ValueError("--points must be >= 2 and --extent in (0, 0.5] m")
        state = parse_pose(args.state, "--state")
        reference = pose_difference(state, parse_pose(args.goal_state, "--goal-state")) if args.goal_state else None
        frame, goal_image = read_rgb(args.frame), read_rgb(args.goal)
        model = load_world_model(args.model, device=args.device)
    except (ValueError, FileNotFoundError) as error:
        print(f"jepa-planner energy: {error}", file=sys.stderr)
        return 2
    latents = model.encode([frame, goal_image])
    actions, energies = energy_grid(model, latents[0], state, latents[1], args.points, args.extent, Energy(args.energy))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_landscape(actions, energies, args.points, out, reference)
    best = int(energies.argmin())
    result = {
        "png": str(out),
        "min_energy": float(energies[best]),
        "max_energy": float(energies.max()),
        "argmin_action": actions[best, :3].tolist(),
        "reference_action": reference[:3].tolist() if reference is not None else None,
    }
    print(f"wrote {out}: minimum energy {result['min_energy']:.4f} at action {np.round(result['argmin_action'], 4).tolist()}")
    if reference is not None:
        print(f"true action to the goal pose: {np.round(result['reference_action'], 4).tolist()}")
    if args.json:
        print(json.dumps(result))
    return 0
