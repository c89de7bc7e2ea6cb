"""Parity with the official V-JEPA 2-AC code on every golden fixture: the repository's own
(tests/fixtures/vjepa2) and those of every folder in JEPA_REFERENCE_DIR.

Each `fixture_<name>_checkpoint.pt` is loaded through the public loader alone, which reads the
architecture from the tensors plus the constructor arguments recorded in the fixture's `_data.pt`
beside it (checked equal to that record), then every recorded output is matched:
float32 against the float32 fixture (atol 2e-4) and float64 against `*_f64_outputs.pt` (atol 1e-9).
A fixture dropped into the folder is picked up with no code change.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from conftest import TEST_DEVICE, fixture_file, fixture_names
from world_model import ModelConfig, WorldModel, load_world_model
from world_model.predictor import block_causal_mask
from world_model.preprocessing import normalize_latents, transform_frames

PRECISIONS = {"float32": 2e-4, "float64": 1e-9}
CASES = [pytest.param(name, precision, id=f"{name}-{precision}") for name in fixture_names() for precision in PRECISIONS]


@functools.lru_cache(maxsize=None)
def _fixture(name: str, precision: str):
    data = torch.load(fixture_file(name, "data"), weights_only=True)
    expected = data if precision == "float32" else torch.load(fixture_file(name, "f64_outputs"), weights_only=True)
    model = load_world_model(fixture_file(name, "checkpoint"), device=TEST_DEVICE, dtype=precision)
    assert model.config == ModelConfig.from_official_config(data["config"])
    return data, expected, model


def _check(actual: torch.Tensor, expected: torch.Tensor, precision: str, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    error = (actual.double().cpu() - expected.double()).abs().max().item()
    assert error <= PRECISIONS[precision], f"{what}: max abs error {error:.3g} > {PRECISIONS[precision]:g}"


def _cast(model: WorldModel, tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(model.device, model.dtype)


def _ac_features(model: WorldModel, frames: torch.Tensor) -> torch.Tensor:
    """Training's forward_target before normalisation: (B, C, Tf, H, W) -> (B, Tf*N, D), frames encoded apart."""
    batch, _, count = frames.shape[:3]
    clips = frames.transpose(1, 2).flatten(0, 1)[:, :, None].expand(-1, -1, 2, -1, -1)
    return model.encoder(_cast(model, clips)).reshape(batch, count * model.tokens_per_frame, model.embed_dim)


def _action_grid(extent: float, steps: int) -> torch.Tensor:
    """The notebook's xyz grid (x-major, then y, then z), zero rotation and gripper: (steps**3, 1, 7) float64."""
    axis = torch.from_numpy(np.linspace(-extent, extent, steps))
    xyz = torch.cartesian_prod(axis, axis, axis)
    return torch.cat([xyz, torch.zeros(len(xyz), 4, dtype=xyz.dtype)], dim=1)[:, None]


needs_fixtures = pytest.mark.skipif(not CASES, reason="no golden fixtures in any reference folder")


@needs_fixtures
@pytest.mark.parametrize("name, precision", CASES)
def test_encoder_video_tokens(name, precision):
    data, expected, model = _fixture(name, precision)
    with torch.no_grad():
        tokens = model.encoder(_cast(model, data["inputs"]["video_clip"]))
    _check(tokens, expected["outputs"]["video_tokens"], precision, "video_tokens")


@needs_fixtures
@pytest.mark.parametrize("name, precision", CASES)
def test_world_model_features(name, precision):
    data, expected, model = _fixture(name, precision)
    with torch.no_grad():
        raw = _ac_features(model, data["inputs"]["ac_frames"])
    _check(raw, expected["outputs"]["ac_h_raw"], precision, "ac_h_raw")
    _check(normalize_latents(raw), expected["outputs"]["ac_h"], precision, "ac_h")


@needs_fixtures
@pytest.mark.parametrize("name, precision", CASES)
def test_teacher_forced_prediction(name, precision):
    data, expected, model = _fixture(name, precision)
    inputs, outputs, n = data["inputs"], expected["outputs"], model.tokens_per_frame
    with torch.no_grad():
        raw = model.predictor(
            _cast(model, outputs["ac_h"][:, :-n]), _cast(model, inputs["ac_actions"]), _cast(model, inputs["ac_states"][:, :-1])
        )
    predicted = normalize_latents(raw)
    _check(raw, outputs["tf_pred_raw"], precision, "tf_pred_raw")
    _check(predicted, outputs["tf_pred"], precision, "tf_pred")
    loss = (predicted - _cast(model, outputs["ac_h"][:, n:n + predicted.shape[1]])).abs().mean()
    _check(loss, outputs["loss_jloss"], precision, "loss_jloss")


@needs_fixtures
@pytest.mark.parametrize("name, precision", CASES)
def test_autoregressive_prediction(name, precision):
    """Training's rollout term: feed back layer-normed predictions, condition on ground-truth states."""
    data, expected, model = _fixture(name, precision)
    inputs, outputs, n = data["inputs"], expected["outputs"], model.tokens_per_frame
    actions, states = _cast(model, inputs["ac_actions"]), _cast(model, inputs["ac_states"])
    history = _cast(model, torch.cat([outputs["ac_h"][:, :n], outputs["tf_pred"][:, :n]], dim=1))
    with torch.no_grad():
        for step in range(1, data["ar_auto_steps"]):
            raw = model.predictor(history, actions[:, : step + 1], states[:, : step + 1])
            history = torch.cat([history, normalize_latents(raw[:, -n:])], dim=1)
    predicted = history[:, n:]
    _check(predicted, outputs["ar_pred"], precision, "ar_pred")
    loss = (predicted - _cast(model, outputs["ac_h"][:, n:n + predicted.shape[1]])).abs().mean()
    _check(loss, outputs["loss_sloss"], precision, "loss_sloss")


@needs_fixtures
@pytest.mark.parametrize("name, precision", CASES)
def test_layer_activations(name, precision):
    """Every recorded submodule output, captured by forward hooks on the same module names."""
    data, expected, model = _fixture(name, precision)
    layers = expected.get("layers")
    if not layers:
        pytest.skip(f"fixture {name} records no per-layer activations")
    inputs, outputs, n = data["inputs"], data["outputs"], model.tokens_per_frame
    passes = {
        "encoder_video": (model.encoder, lambda: model.encoder(_cast(model, inputs["video_clip"]))),
        "encoder_ac": (model.encoder, lambda: _ac_features(model, inputs["ac_frames"])),
        "predictor_tf": (
            model.predictor,
            lambda: model.predictor(
                _cast(model, expected["outputs"]["ac_h"][:, :-n]),
                _cast(model, inputs["ac_actions"]),
                _cast(model, inputs["ac_states"][:, :-1]),
            ),
        ),
    }
    assert set(layers) <= set(passes), f"unknown activation sections {set(layers) - set(passes)}"
    for section, recorded in layers.items():
        module, run = passes[section]
        captured: dict[str, torch.Tensor] = {}
        hooks = [
            module.get_submodule(key).register_forward_hook(
                lambda _module, _args, out, key=key: captured.__setitem__(key, out)
            )
            for key in recorded
        ]
        try:
            with torch.no_grad():
                run()
        finally:
            for hook in hooks:
                hook.remove()
        for key, value in recorded.items():
            _check(captured[key], value, precision, f"{section}.{key}")


@needs_fixtures
@pytest.mark.parametrize("name, precision", CASES)
def test_encode_franka_and_nonsquare_frames(name, precision):
    data, expected, model = _fixture(name, precision)
    frames, recorded = data["preprocessing"], expected["world_model"]
    _check(model.encode(frames["franka_uint8_THWC"][0]), recorded["rep_image0"], precision, "rep_image0")
    _check(model.encode(frames["franka_uint8_THWC"][1]), recorded["rep_image1_goal"], precision, "rep_image1_goal")
    _check(model.encode(frames["nonsquare_uint8_THWC"][0]), recorded["rep_image_nonsquare"], precision, "rep_image_nonsquare")


@needs_fixtures
@pytest.mark.parametrize("name, precision", CASES)
@pytest.mark.parametrize("cached", [True, False], ids=["cached", "full"])
def test_rollout_frames_and_energy(name, precision, cached):
    """The official step_predictor closure, driven with the recorded poses as states."""
    data, expected, model = _fixture(name, precision)
    recorded = expected["world_model"]
    context = recorded["rollout_context_rep"][:, 0]
    horizon = recorded["rollout_actions"].shape[1]
    frames = model.rollout(context, recorded["rollout_actions"], recorded["rollout_poses"][:, :horizon], cached=cached)
    _check(frames, recorded["rollout_frames"][:, 1:], precision, "rollout_frames")
    energy = (frames[:, -1].flatten(1) - _cast(model, recorded["rollout_goal_rep"][:, 0].flatten(1))).abs().mean(1)
    _check(energy, recorded["rollout_energy_l1"], precision, "rollout_energy_l1")


@needs_fixtures
@pytest.mark.parametrize("name, precision", CASES)
def test_energy_landscape(name, precision):
    data, expected, model = _fixture(name, precision)
    franka = data["preprocessing"]["franka_uint8_THWC"]
    recorded, grid = expected["energy_landscape"], data["energy_landscape"]
    _check(transform_frames(franka, model.image_size)[None], data["energy_landscape"]["clip_notebook_transform"], "float32", "clip")
    latents = model.encode(franka)
    _check(latents.reshape(1, -1, model.embed_dim), recorded["h"], precision, "h")
    actions = _action_grid(grid["grid_size"], grid["nsamples"])
    torch.testing.assert_close(actions.float(), grid["action_grid"], atol=1e-7, rtol=0)
    # The float64 reference built its grid in float64 (np.linspace), not from the float32 record.
    actions = actions if precision == "float64" else grid["action_grid"]
    predicted = model.rollout(latents[:1], actions, grid["states"])[:, 0]
    _check(predicted, recorded["pred_next"], precision, "pred_next")
    _check((predicted - latents[1:]).abs().mean((1, 2)), recorded["energy"], precision, "energy")


@needs_fixtures
@pytest.mark.parametrize("name", fixture_names())
def test_block_causal_mask(name):
    data, _, model = _fixture(name, "float32")
    helper = data["helpers"]["block_causal_mask"]
    tokens_per_frame = helper["H"] * helper["W"] + helper["add_tokens"]
    assert torch.equal(block_causal_mask(helper["T"], tokens_per_frame), helper["out"])
    used = data["outputs"]["attn_mask_used"]
    frames = used.shape[0] // model.predictor.tokens_per_step
    assert torch.equal(block_causal_mask(frames, model.predictor.tokens_per_step), used)
