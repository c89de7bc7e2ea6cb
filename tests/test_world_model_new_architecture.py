"""A fixture of an architecture no preset has passes the whole fixture suite with no code change.

`write_fixture` writes `fixture_<name>_{checkpoint,data,f64_outputs}.pt` in the golden fixtures'
formats for a new size (other widths, depths, heads, head dims, patch, image size, MLP ratios),
its weights redrawn like the official fixtures'. The expected outputs come from a separate,
textbook float64 implementation of the official semantics written here from SPEC.md (explicit
pair rotations, softmax attention, the whole history re-run at every imagined step), not from the
modules under test; model-independent records (helpers, preprocessing, poses, CEM noise) are the
tiny fixture's. A pytest subprocess then runs every fixture-parametrised test on it through
JEPA_REFERENCE_DIR, loading it with `load_world_model(path)` alone.
"""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from conftest import REPO_ROOT, reference_dir
from planner.cem import CEM
from planner.config import PlannerConfig
from planner.noise import RecordedNoise
from planner.pose import chain_poses
from world_model import ModelConfig, WorldModel
from world_model.preprocessing import transform_frames

NAME = "wide72"
ENCODER_ARGS = {
    "img_size": (32, 32), "patch_size": 8, "num_frames": 8, "tubelet_size": 2, "in_chans": 3, "embed_dim": 72,
    "depth": 3, "num_heads": 2, "mlp_ratio": 2.5, "qkv_bias": True, "norm_layer": {"type": "LayerNorm", "eps": 1e-06},
    "use_silu": False, "use_rope": True, "handle_nonsquare_inputs": True,
}  # head dim 36: three 12-wide RoPE slices and no unrotated tail
PREDICTOR_ARGS = {
    "img_size": (32, 32), "patch_size": 8, "num_frames": 8, "tubelet_size": 2, "embed_dim": 72,
    "predictor_embed_dim": 48, "depth": 2, "num_heads": 3, "mlp_ratio": 3.0, "qkv_bias": True,
    "norm_layer": {"type": "LayerNorm", "eps": 1e-06}, "use_silu": False, "is_frame_causal": True, "use_rope": True,
    "action_embed_dim": 7, "use_extrinsics": False,
}  # head dim 16: three 4-wide slices and a 4-wide tail
FIXTURE_TEST_FILES = [
    "tests/test_world_model_parity.py", "tests/test_cem.py", "tests/test_rope.py", "tests/test_pose.py",
    "tests/test_energy.py", "tests/test_energy_landscape.py", "tests/test_preprocessing.py",
]


# ---- the float64 reference: official semantics, written out (SPEC sections 2-6) ----

def _rope(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x (B, heads, L, hd), positions (L, 3): each slice of 2*floor(floor(hd/3)/2) rotated by one axis,
    in adjacent pairs (2i, 2i+1), element j using frequency omega[j mod s/2] (the released tiling)."""
    size = 2 * ((x.shape[-1] // 3) // 2)
    omega = 1.0 / 10000.0 ** (torch.arange(size // 2, dtype=torch.float64) / (size // 2))
    out = x.clone()
    for axis in range(3):
        part = x[..., axis * size:(axis + 1) * size]
        angle = positions[:, axis, None].double() * torch.cat([omega, omega])
        even, odd = part[..., 0::2], part[..., 1::2]
        rotated = torch.empty_like(part)
        rotated[..., 0::2] = even * angle.cos()[:, 0::2] - odd * angle.sin()[:, 0::2]
        rotated[..., 1::2] = odd * angle.cos()[:, 1::2] + even * angle.sin()[:, 1::2]
        out[..., axis * size:(axis + 1) * size] = rotated
    return out


def _linear(w, name, x):
    return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]


def _norm(w, name, x, eps=1e-6):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w[f"{name}.weight"] + w[f"{name}.bias"]


def _features_norm(x):  # the world model's parameter-free LayerNorm, eps 1e-5
    mean = x.mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(((x - mean) ** 2).mean(-1, keepdim=True) + 1e-5)


def _block(w, name, x, positions, heads, allowed, record):
    batch, length, dim = x.shape
    hd = dim // heads
    qkv = _linear(w, f"{name}.attn.qkv", _norm(w, f"{name}.norm1", x)).view(batch, length, 3, heads, hd)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    scores = _rope(q, positions) @ _rope(k, positions).transpose(-1, -2) / math.sqrt(hd)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    mixed = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, dim)
    record[f"{name}.attn"] = attn = _linear(w, f"{name}.attn.proj", mixed)
    x = x + attn
    hidden = _linear(w, f"{name}.mlp.fc1", _norm(w, f"{name}.norm2", x))
    record[f"{name}.mlp"] = mlp = _linear(w, f"{name}.mlp.fc2", 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2))))
    record[name] = x = x + mlp
    return x


def reference_encoder(w, video, record=None):
    record = {} if record is None else record
    a = ENCODER_ARGS
    patch, tubelet = a["patch_size"], a["tubelet_size"]
    x = F.conv3d(video, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=(tubelet, patch, patch))
    frames, rows, cols = x.shape[2:]
    record["patch_embed"] = x = x.flatten(2).transpose(1, 2)
    positions = torch.tensor([(t, r, c) for t in range(frames) for r in range(rows) for c in range(cols)])
    for i in range(a["depth"]):
        x = _block(w, f"blocks.{i}", x, positions, a["num_heads"], None, record)
    record["norm"] = x = _norm(w, "norm", x)
    return x


def reference_predictor(w, x, actions, states, record=None):
    """Official AC predictor: per frame [action, state, patches], block-causal, output t = frame t+1."""
    record = {} if record is None else record
    a = PREDICTOR_ARGS
    grid = a["img_size"][0] // a["patch_size"]
    n = grid * grid
    batch, frames = actions.shape[:2]
    record["predictor_embed"] = patches = _linear(w, "predictor_embed", x)
    record["action_encoder"] = action_tokens = _linear(w, "action_encoder", actions)
    record["state_encoder"] = state_tokens = _linear(w, "state_encoder", states)
    tokens, positions, frame_of = [], [], []
    for t in range(frames):
        tokens += [action_tokens[:, t:t + 1], state_tokens[:, t:t + 1], patches[:, t * n:(t + 1) * n]]
        positions += [(t, 0, 0), (t, 0, 0)] + [(t, r, c) for r in range(grid) for c in range(grid)]
        frame_of += [t] * (n + 2)
    x = torch.cat(tokens, 1)
    frame_of = torch.tensor(frame_of)
    allowed = frame_of[None, :] <= frame_of[:, None]
    for i in range(a["depth"]):
        x = _block(w, f"predictor_blocks.{i}", x, torch.tensor(positions), a["num_heads"], allowed, record)
    x = x.view(batch, frames, n + 2, -1)[:, :, 2:].reshape(batch, frames * n, -1)
    record["predictor_norm"] = x = _norm(w, "predictor_norm", x)
    record["predictor_proj"] = x = _linear(w, "predictor_proj", x)
    return x


def reference_rollout(w, context, actions, states):
    """The official planner's step: re-run the whole history, keep the last frame's tokens, normalise."""
    n = context.shape[1]
    history = context.expand(actions.shape[0], -1, -1)
    frames = []
    for h in range(actions.shape[1]):
        frame = _features_norm(reference_predictor(w, history, actions[:, : h + 1], states[:, : h + 1])[:, -n:])
        frames.append(frame)
        history = torch.cat([history, frame], 1)
    return torch.stack(frames, 1)


def _encode_frames(w, frames_chw):
    """(F, 3, S, S) preprocessed frames, each its own 2-frame tubelet -> (F, N, D) normalised."""
    clips = frames_chw[:, :, None].expand(-1, -1, ENCODER_ARGS["tubelet_size"], -1, -1)
    return _features_norm(reference_encoder(w, clips))


# ---- the fixture files ----

def _redrawn_weights(config: ModelConfig, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """Like the official fixtures: weights N(0, 1/fan_in), biases N(0, 0.1^2), LayerNorms 1+N(0, 0.2^2) / N(0, 0.1^2),
    q and k rows of every qkv doubled; plus the unused extrinsics encoder the released file carries."""
    model = WorldModel.from_config(config, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    parts = {}
    for part, module in (("encoder", model.encoder), ("predictor", model.predictor)):
        state = {}
        for key, tensor in module.state_dict().items():
            noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float64)
            if tensor.dim() >= 2:
                value = noise / math.sqrt(tensor[0].numel())
                if key.endswith("attn.qkv.weight"):
                    value[: 2 * tensor.shape[1]] *= 2
            elif "norm" in key.rsplit(".", 2)[-2] and key.endswith("weight"):
                value = 1 + 0.2 * noise
            else:
                value = 0.1 * noise
            state[key] = value.float().contiguous()
        parts[part] = state
    width, action_dim = PREDICTOR_ARGS["predictor_embed_dim"], PREDICTOR_ARGS["action_embed_dim"]
    parts["predictor"]["extrinsics_encoder.weight"] = torch.randn(width, action_dim - 1, generator=generator) / math.sqrt(6)
    parts["predictor"]["extrinsics_encoder.bias"] = 0.1 * torch.randn(width, generator=generator)
    return parts


class _ReferenceObjective:
    """CEM energies from the reference rollout: poses chained from the context pose, final frame vs goal (L1)."""

    device = torch.device("cpu")

    def __init__(self, w, context, pose, goal):
        self.w, self.context, self.pose, self.goal, self.calls = w, context, pose, goal, []

    def evaluate(self, actions):
        horizon = actions.shape[1]
        self.calls += [{"actions_in": actions[:, : h + 1].clone()} for h in range(horizon)]
        actions = actions.double()
        states = chain_poses(self.pose.reshape(7).double(), actions)[:, :-1]
        final = reference_rollout(self.w, self.context, actions, states)[:, -1]
        return (final - self.goal).abs().mean((1, 2)).float()


def write_fixture(folder: Path, name: str = NAME, seed: int = 77) -> None:
    """Write the three fixture files of the new architecture into `folder`."""
    record = {"encoder_ctor_args": ENCODER_ARGS, "predictor_ctor_args": PREDICTOR_ARGS}
    config = ModelConfig.from_official_config(record)
    parts = _redrawn_weights(config, seed)
    w = {key: value.double() for part in parts.values() for key, value in part.items()}
    tiny = torch.load(reference_dir() / "fixture_tiny_data.pt", weights_only=True)
    size, n = config.encoder.img_size, config.predictor.tokens_per_frame
    generator = torch.Generator().manual_seed(seed + 2)
    frames = 3
    inputs = {
        "video_clip": torch.randn(1, 3, 4, size, size, generator=generator),
        "ac_frames": torch.randn(1, 3, frames, size, size, generator=generator),
        "ac_states": torch.cat([torch.randn(1, frames, 6, generator=generator) * 0.3, torch.rand(1, frames, 1, generator=generator)], -1),
        "ac_actions": torch.cat(
            [0.05 * torch.randn(1, frames - 1, 3, generator=generator), 0.1 * torch.randn(1, frames - 1, 3, generator=generator),
             torch.rand(1, frames - 1, 1, generator=generator) * 2 - 1], -1),
    }
    x = {key: value.double() for key, value in inputs.items()}
    layers = {"encoder_video": {}, "encoder_ac": {}, "predictor_tf": {}}
    outputs = {"video_tokens": reference_encoder(w, x["video_clip"], layers["encoder_video"])}
    clips = x["ac_frames"].transpose(1, 2).flatten(0, 1)[:, :, None].expand(-1, -1, 2, -1, -1)
    outputs["ac_h_raw"] = reference_encoder(w, clips, layers["encoder_ac"]).reshape(1, frames * n, -1)
    outputs["ac_h"] = ac_h = _features_norm(outputs["ac_h_raw"])
    outputs["tf_pred_raw"] = reference_predictor(w, ac_h[:, :-n], x["ac_actions"], x["ac_states"][:, :-1], layers["predictor_tf"])
    outputs["tf_pred"] = tf_pred = _features_norm(outputs["tf_pred_raw"])
    auto_steps = frames - 1
    history = torch.cat([ac_h[:, :n], tf_pred[:, :n]], 1)
    for step in range(1, auto_steps):
        raw = reference_predictor(w, history, x["ac_actions"][:, : step + 1], x["ac_states"][:, : step + 1])
        history = torch.cat([history, _features_norm(raw[:, -n:])], 1)
    outputs["ar_pred"] = history[:, n:]
    outputs["loss_jloss"] = (tf_pred - ac_h[:, n:n + tf_pred.shape[1]]).abs().mean()
    outputs["loss_sloss"] = (outputs["ar_pred"] - ac_h[:, n:n + outputs["ar_pred"].shape[1]]).abs().mean()
    frame_of = torch.arange((frames - 1) * (n + 2)) // (n + 2)
    attn_mask = frame_of[None, :] <= frame_of[:, None]

    franka = tiny["preprocessing"]["franka_uint8_THWC"]
    nonsquare = tiny["preprocessing"]["nonsquare_uint8_THWC"]
    franka_latents = _encode_frames(w, transform_frames(franka, size).transpose(0, 1).double())
    nonsquare_latent = _encode_frames(w, transform_frames(nonsquare[:1], size).transpose(0, 1).double())
    wm_tiny = tiny["world_model"]
    context, goal = franka_latents[:1], franka_latents[1:]
    rollout = reference_rollout(w, context, wm_tiny["rollout_actions"].double(), wm_tiny["rollout_poses"][:, :-1].double())
    world_model = {
        "rep_image0": context, "rep_image1_goal": goal, "rep_image_nonsquare": nonsquare_latent,
        "rollout_context_rep": context[:, None], "rollout_goal_rep": goal[:, None],
        "rollout_frames": torch.cat([context[:, None], rollout], 1),
        "rollout_energy_l1": (rollout[:, -1] - goal).abs().mean((1, 2)),
    }
    grid = tiny["energy_landscape"]
    axis = torch.from_numpy(np.linspace(-grid["grid_size"], grid["grid_size"], grid["nsamples"]))
    xyz = torch.cartesian_prod(axis, axis, axis)
    grid_actions = torch.cat([xyz, torch.zeros(len(xyz), 4, dtype=xyz.dtype)], 1)[:, None]
    pred_next = reference_rollout(w, context, grid_actions, grid["states"].double())[:, 0]
    landscape = {"h": franka_latents.reshape(1, 2 * n, -1), "pred_next": pred_next, "energy": (pred_next - goal).abs().mean((1, 2))}

    cem_tiny = tiny["cem"]
    args = cem_tiny["mpc_args"]
    objective = _ReferenceObjective(w, context, cem_tiny["context_pose"], goal)
    planner_config = PlannerConfig(
        horizon=args["rollout"], samples=args["samples"], topk=args["topk"], iterations=args["cem_steps"],
        maxnorm=args["maxnorm"], momentum_mean=args["momentum_mean"], momentum_std=args["momentum_std"],
        momentum_mean_gripper=args["momentum_mean_gripper"], momentum_std_gripper=args["momentum_std_gripper"],
    )
    plan = CEM(planner_config, RecordedNoise(cem_tiny["randn_draws"])).solve(objective)
    cem = {
        key: cem_tiny[key] for key in ("mpc_args", "torch_manual_seed_before_call", "context_pose", "randn_draws")
    } | {
        "context_rep": context.float(), "goal_rep": goal.float(), "world_model_calls": objective.calls,
        "energies_per_iteration": plan.iteration_energies, "output_action": plan.actions,
    }

    def as_float(tree):
        if isinstance(tree, dict):
            return {key: as_float(value) for key, value in tree.items()}
        return tree.float() if isinstance(tree, torch.Tensor) and tree.dtype == torch.float64 else tree

    exact = {"outputs": outputs | {"attn_mask_used": attn_mask}, "layers": layers, "energy_landscape": landscape,
             "world_model": world_model | {key: wm_tiny[key] for key in ("rollout_context_pose", "rollout_actions", "rollout_poses")}}
    note = f"generated by tests/{Path(__file__).name}: a textbook float64 implementation of the official semantics"
    torch.save({"meta": {"fixture": name, "note": note}, **exact}, folder / f"fixture_{name}_f64_outputs.pt")
    data = as_float(exact)
    data["world_model"]["franka_states"] = wm_tiny["franka_states"]
    data["energy_landscape"] |= {key: grid[key] for key in ("clip_notebook_transform", "action_grid", "states", "grid_size", "nsamples")}
    data["energy_landscape"]["clip_notebook_transform"] = transform_frames(franka, size)[None]
    torch.save(
        data | {"config": record, "meta": {"fixture": name, "note": note}, "provenance": note, "inputs": inputs,
                "ar_auto_steps": auto_steps, "cem": cem, "helpers": tiny["helpers"], "preprocessing": tiny["preprocessing"]},
        folder / f"fixture_{name}_data.pt",
    )
    torch.save(
        {part: {f"module.{key}": value for key, value in state.items()} for part, state in parts.items()} | {"epoch": 0},
        folder / f"fixture_{name}_checkpoint.pt",
    )


def test_a_new_architecture_fixture_passes_the_whole_fixture_suite(tmp_path):
    write_fixture(tmp_path)
    environment = dict(os.environ, JEPA_REFERENCE_DIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", NAME, *FIXTURE_TEST_FILES],
        cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=900,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-2000:]
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    assert passed >= 30 and "skipped" not in summary and "failed" not in summary, summary
