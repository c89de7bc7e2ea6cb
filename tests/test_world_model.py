"""WorldModel facade: loading, encode/rollout contracts, cached rollout == full recompute."""
from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch

import world_model.model

from conftest import TEST_DEVICE
from world_model import PRESETS, WorldModel, load_world_model
from world_model.model import resolve_device


@pytest.fixture(scope="module")
def small_model() -> WorldModel:
    return load_world_model("small", device="cpu", seed=3)


def _actions_states(samples: int, horizon: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    actions = torch.randn(samples, horizon, 7, generator=generator) * 0.05
    states = torch.randn(samples, horizon, 7, generator=generator) * 0.5
    return actions, states


def test_tiny_fixture_rollout_matches_official_frames(reference_folder):
    data = torch.load(reference_folder / "fixture_tiny_data.pt", weights_only=True)
    recorded = data["world_model"]
    model = load_world_model(reference_folder / "fixture_tiny_checkpoint.pt", device="cpu")
    frames = model.rollout(recorded["rollout_context_rep"][:, 0], recorded["rollout_actions"], recorded["rollout_poses"][:, :3])
    torch.testing.assert_close(frames, recorded["rollout_frames"][:, 1:], atol=2e-4, rtol=0)


def test_encode_accepts_single_batched_and_mixed_size_images(small_model):
    rng = np.random.default_rng(0)
    square = rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)
    wide = rng.integers(0, 256, (40, 72, 3), dtype=np.uint8)
    single = small_model.encode(square)
    batch = small_model.encode(np.stack([square, square]))
    mixed = small_model.encode([square, wide])
    assert single.shape == (1, small_model.tokens_per_frame, small_model.embed_dim)
    assert batch.shape == mixed.shape == (2, small_model.tokens_per_frame, small_model.embed_dim)
    torch.testing.assert_close(batch[1], single[0])
    torch.testing.assert_close(mixed[0], single[0])
    # normalised latents: zero mean, unit variance per token
    torch.testing.assert_close(single.mean(-1), torch.zeros(1, small_model.tokens_per_frame), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "bad, error",
    [
        (np.zeros((8, 8, 3), dtype=np.float32), TypeError),
        (np.zeros((8, 8), dtype=np.uint8), ValueError),
        (np.zeros((8, 8, 4), dtype=np.uint8), ValueError),
        (np.zeros((0, 8, 3), dtype=np.uint8), ValueError),
        ([], ValueError),
        ("image.png", TypeError),
    ],
)
def test_encode_rejects_bad_images(small_model, bad, error):
    with pytest.raises(error):
        small_model.encode(bad)


def test_cached_rollout_equals_full_recompute(small_model):
    context = small_model.encode(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    actions, states = _actions_states(samples=5, horizon=4)
    cached = small_model.rollout(context, actions, states, cached=True)
    full = small_model.rollout(context, actions, states, cached=False)
    assert cached.shape == (5, 4, small_model.tokens_per_frame, small_model.embed_dim)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=0)


def test_rollout_samples_are_independent(small_model):
    """Sample i of a batch equals the same sequence rolled out alone (no cross-sample leakage)."""
    context = torch.nn.functional.layer_norm(torch.randn(1, small_model.tokens_per_frame, small_model.embed_dim), (small_model.embed_dim,))
    actions, states = _actions_states(samples=4, horizon=2, seed=5)
    batch = small_model.rollout(context, actions, states)
    alone = small_model.rollout(context, actions[2:3], states[2:3])
    torch.testing.assert_close(batch[2:3], alone, atol=1e-5, rtol=0)
    assert not torch.allclose(batch[0], batch[1])


def test_rollout_validates_shapes(small_model):
    n, d = small_model.tokens_per_frame, small_model.embed_dim
    actions, states = _actions_states(samples=3, horizon=2)
    with pytest.raises(ValueError, match="context"):
        small_model.rollout(torch.zeros(2, n, d), actions, states)
    with pytest.raises(ValueError, match="actions and states"):
        small_model.rollout(torch.zeros(1, n, d), actions[..., :6], states)
    too_long = _actions_states(samples=1, horizon=small_model.max_horizon + 1)
    with pytest.raises(ValueError, match="horizon"):
        small_model.rollout(torch.zeros(1, n, d), *too_long)


def test_random_preset_is_deterministic_and_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="world_model.model"):
        first = load_world_model("tiny", device="cpu", seed=7)
    assert "randomly initialised" in caplog.text
    second = load_world_model("tiny", device="cpu", seed=7)
    other = load_world_model("tiny", device="cpu", seed=8)
    for (key, a), b, c in zip(first.state_dict().items(), second.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b), key
    assert any(not torch.equal(a, c) for a, c in zip(first.state_dict().values(), other.state_dict().values()))


@pytest.mark.parametrize("name", ["demo", "robosuite", "robosuite-lift"])
def test_embedded_model_without_weights_says_how_to_train(monkeypatch, tmp_path, name):
    monkeypatch.setitem(world_model.model.EMBEDDED_WEIGHTS, name, tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match=f"the {name} world model .*jepa-planner train"):
        load_world_model(name)


def test_the_embedded_lift_model_is_stored_in_bf16_loads_as_float32_and_records_how_to_remake_it():
    from world_model.checkpoint import read_safetensors

    path = world_model.model.EMBEDDED_WEIGHTS["robosuite-lift"]
    config, encoder, predictor, _ = read_safetensors(path)
    assert {tensor.dtype for tensor in [*encoder.values(), *predictor.values()]} == {torch.bfloat16}
    assert (config.predictor.predictor_embed_dim, config.predictor.depth) == (256, 6)
    model = load_world_model("robosuite-lift", device="cpu")
    assert model.predictor.predictor_proj.weight.dtype == torch.float32
    stored = predictor["predictor_proj.weight"]
    assert torch.equal(model.predictor.predictor_proj.weight, stored.float())
    provenance = json.loads(path.with_name("robosuite-lift.provenance.json").read_text())
    assert all(step.startswith("jepa-planner ") for step in provenance["reproduce"]["steps"])


def test_unknown_source_and_plain_preset_are_rejected():
    with pytest.raises(FileNotFoundError, match="preset"):
        load_world_model("no_such_model")
    with pytest.raises(ValueError, match="action-conditioned"):
        load_world_model("vit_large")


def test_properties_and_device_resolution(small_model):
    assert small_model.image_size == 64 and small_model.tokens_per_frame == 16 and small_model.embed_dim == 128
    assert small_model.device == torch.device("cpu") and small_model.dtype == torch.float32
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")
    assert set(PRESETS) >= {"vit_large", "vit_huge", "vit_giant", "vit_giant_384", "ac_vit_giant", "tiny", "small", "demo"}


def test_bf16_autocast_smoke(reference_folder):
    """bf16 autocast is an approximation (SPEC: ~0.07-0.2 abs on the fixtures). Loose, stated bounds:
    float32 outputs, finite, max abs error < 0.5 and mean abs error < 0.05 against the fp32 reference."""
    recorded = torch.load(reference_folder / "fixture_tiny_data.pt", weights_only=True)["world_model"]
    model = load_world_model(reference_folder / "fixture_tiny_checkpoint.pt", device=TEST_DEVICE, dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and model.predictor.predictor_proj.weight.dtype == torch.float32
    for cached in (True, False):
        frames = model.rollout(
            recorded["rollout_context_rep"][:, 0], recorded["rollout_actions"], recorded["rollout_poses"][:, :3], cached=cached
        ).cpu()
        error = (frames - recorded["rollout_frames"][:, 1:]).abs()
        assert frames.dtype == torch.float32 and torch.isfinite(frames).all()
        assert error.max() < 0.5 and error.mean() < 0.05


@pytest.mark.skipif(not os.environ.get("JEPA_TEST_COMPILE"), reason="torch.compile takes ~1 min on CPU; set JEPA_TEST_COMPILE=1")
def test_compiled_model_matches_eager():
    eager = load_world_model("small", device="cpu", seed=2)
    compiled = load_world_model("small", device="cpu", seed=2, compile=True)
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    context = eager.encode(image)
    torch.testing.assert_close(compiled.encode(image), context, atol=1e-5, rtol=0)
    actions, states = _actions_states(samples=8, horizon=2)
    torch.testing.assert_close(compiled.rollout(context, actions, states), eager.rollout(context, actions, states), atol=1e-5, rtol=0)


def test_training_after_inference_mode_use_still_backpropagates():
    """Memoised RoPE tables, qkv orders and masks must not be inference tensors: a trainer that
    ran `encode`/`rollout` (inference mode) for diagnostics then trains on the same modules."""
    wm = WorldModel.from_config(PRESETS["tiny"], seed=0)
    latent = wm.encode(np.zeros((48, 48, 3), np.uint8))
    wm.rollout(latent, torch.zeros(2, 2, 7), torch.zeros(2, 2, 7))
    with torch.inference_mode():
        wm.predictor(torch.zeros(1, 18, 96), torch.zeros(1, 2, 7), torch.zeros(1, 2, 7))

    features = wm.encoder(torch.randn(1, 3, 2, 48, 48))
    prediction = wm.predictor(features.repeat(1, 2, 1), torch.zeros(1, 2, 7), torch.zeros(1, 2, 7))
    (features.square().mean() + prediction.square().mean()).backward()
    grads = [p.grad for p in wm.predictor.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
