"""Measure before tuning (issue 5): three numbers that tell which part of a world model fails.

* prediction error vs copying the last frame: a predictor that cannot beat "nothing moves"
  has learnt nothing about actions;
* a linear probe latents -> end-effector position: if it fails, the encoder does not see the arm;
* the energy landscape around the true action: if the grid action with the lowest energy is far
  from the action that really happened, a planner cannot find it either.
"""
from __future__ import annotations

import itertools

import torch

from world_model.training.data import ClipDataset
from world_model.training.encoding import encode_frames
from world_model.preprocessing import normalize_latents


@torch.no_grad()
def measure(encoder: torch.nn.Module, predictor: torch.nn.Module, dataset: ClipDataset, device: torch.device,
            clip_count: int = 256, landscape_transitions: int = 32, grid_points: int = 5,
            grid_extent_m: float = 0.05, seed: int = 0) -> dict[str, float]:
    generator = torch.Generator().manual_seed(seed)
    clips = dataset.sample(clip_count, generator).to(device)
    latents = torch.cat([encode_frames(encoder, clips.frames[i:i + 64]) for i in range(0, clip_count, 64)])
    batch, frames, tokens, dim = latents.shape
    predicted = normalize_latents(predictor(latents[:, :-1].reshape(batch, (frames - 1) * tokens, dim),
                                    clips.actions, clips.states[:, :-1])).view(batch, frames - 1, tokens, dim)
    prediction_error = (predicted - latents[:, 1:]).abs().mean()
    copy_last_error = (latents[:, :-1] - latents[:, 1:]).abs().mean()
    results = {
        "prediction_l1": float(prediction_error),
        "copy_last_l1": float(copy_last_error),
        "prediction_over_copy_last": float(prediction_error / copy_last_error),
    }
    results.update(_position_probe(encoder, dataset, device))
    results.update(_energy_landscape(predictor, latents, clips, landscape_transitions, grid_points, grid_extent_m))
    return results


def _position_probe(encoder: torch.nn.Module, dataset: ClipDataset, device: torch.device,
                    max_frames: int = 2000, ridge: float = 1e-2) -> dict[str, float]:
    """Ridge regression latents -> EE xyz fit on half of the episodes, R^2 and RMSE on the other half.

    Splitting by episode matters: neighbouring frames of one episode are near-duplicates. A single
    episode is split in time instead; fewer than 3 frames give NaN rather than a number.
    """
    frames = dataset.frames[:max_frames]
    latents = torch.cat([encode_frames(encoder, frames[i:i + 256, None].to(device)) for i in range(0, len(frames), 256)])
    features = latents.flatten(1).double()
    positions = dataset.states[:max_frames, :3].to(device).double()
    episodes = dataset.episode_index[:max_frames].to(device)
    in_train = episodes < (episodes.max() + 1) // 2
    if in_train.all() or not in_train.any():
        # One episode (a small dataset's validation split): fit on its first half in time, test on
        # the second, which still never tests on a frame's immediate neighbour across the cut alone.
        in_train = torch.arange(len(episodes), device=device) < len(episodes) // 2
    if int(in_train.sum()) < 1 or int((~in_train).sum()) < 2:
        return {"probe_position_r2": float("nan"), "probe_position_rmse_m": float("nan")}
    train_x, test_x = features[in_train], features[~in_train]
    train_y, test_y = positions[in_train], positions[~in_train]
    mean_x, mean_y = train_x.mean(0), train_y.mean(0)
    train_x, test_x = train_x - mean_x, test_x - mean_x
    # Dual form: solve in the (frames x frames) space, since features (N*D) outnumber frames.
    gram = train_x @ train_x.T
    # The ridge is relative to the mean feature energy, so it means the same at any width.
    penalty = ridge * gram.diagonal().mean()
    coefficients = torch.linalg.solve(gram + penalty * torch.eye(len(gram), dtype=gram.dtype, device=gram.device),
                                      train_y - mean_y)
    predicted = test_x @ (train_x.T @ coefficients) + mean_y
    residual = ((predicted - test_y) ** 2).sum(0)
    total = ((test_y - test_y.mean(0)) ** 2).sum(0)
    return {
        "probe_position_r2": float((1.0 - residual / total).mean()),
        "probe_position_rmse_m": float(((predicted - test_y) ** 2).sum(1).mean().sqrt()),
    }


def _energy_landscape(predictor: torch.nn.Module, latents: torch.Tensor, clips, transitions: int,
                      grid_points: int, extent: float) -> dict[str, float]:
    """For each transition 0->1, the L1 energy to the true next frame over a grid of xyz actions."""
    transitions = min(transitions, len(latents))
    axis = torch.linspace(-extent, extent, grid_points, device=latents.device)
    grid = torch.tensor(list(itertools.product(axis.tolist(), repeat=3)), device=latents.device)
    tokens, dim = latents.shape[-2:]
    argmin_errors, random_errors = [], []
    for index in range(transitions):
        true_action = clips.actions[index, 0]
        candidates = true_action.expand(len(grid), 7).clone()
        candidates[:, :3] = grid
        context = latents[index, 0].expand(len(grid), tokens, dim)
        state = clips.states[index, 0].expand(len(grid), 1, 7)
        predicted = normalize_latents(predictor(context, candidates[:, None], state))
        energy = (predicted - latents[index, 1]).abs().mean(dim=(1, 2))
        best = grid[energy.argmin().view(1)][0]  # a tensor index: indexing by a 0-d tensor syncs to read it
        argmin_errors.append((best - true_action[:3]).norm())
        random_errors.append((grid - true_action[:3]).norm(dim=1).mean())
    return {
        "landscape_argmin_error_m": float(torch.stack(argmin_errors).mean()),
        "landscape_random_error_m": float(torch.stack(random_errors).mean()),
    }
