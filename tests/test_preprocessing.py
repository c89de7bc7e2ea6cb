"""Preprocessing: bit-exact against the official transforms, crops, latent normalisation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import fixture_names
from world_model.preprocessing import (
    center_square_box,
    droid_box,
    normalize_latents,
    preprocess_images,
    transform_frames,
)

TRANSFORMS = [
    ("franka_uint8_THWC", "franka_notebook_transform_CTHW", "center"),
    ("nonsquare_uint8_THWC", "nonsquare_notebook_transform_CTHW", "center"),
    ("widescreen_uint8_THWC", "widescreen_train_transform_CTHW", "droid"),
]


@pytest.mark.parametrize("name", fixture_names())
@pytest.mark.parametrize("source, target, crop", TRANSFORMS, ids=[t[1] for t in TRANSFORMS])
def test_transform_is_bit_exact_with_official(reference_folder, name, source, target, crop):
    recorded = torch.load(reference_folder / f"fixture_{name}_data.pt", weights_only=True)["preprocessing"]
    out = transform_frames(recorded[source], recorded["crop_size"], crop)
    assert out.dtype == torch.float32
    assert torch.equal(out, recorded[target])


def test_crop_boxes():
    assert center_square_box(40, 72) == (0, 16, 40, 40)
    assert center_square_box(72, 40) == (16, 0, 40, 40)
    assert droid_box(36, 64) == (0, 7, 36, 49)  # 16:9 -> centred 1.35:1 window
    assert droid_box(720, 1280) == (0, 154, 720, 972)
    assert droid_box(100, 50) == (16, 0, 67, 50)  # too tall -> aspect 0.75
    assert droid_box(100, 100) == (0, 0, 100, 100)


def test_center_and_droid_agree_on_square_frames_and_differ_on_wide_ones():
    rng = np.random.default_rng(0)
    square = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    wide = rng.integers(0, 256, (36, 64, 3), dtype=np.uint8)
    assert torch.equal(preprocess_images(square, 32, "center"), preprocess_images(square, 32, "droid"))
    assert not torch.allclose(preprocess_images(wide, 32, "center"), preprocess_images(wide, 32, "droid"))


def test_preprocess_shapes_and_errors():
    image = np.full((50, 70, 3), 128, dtype=np.uint8)
    assert preprocess_images(image, 32).shape == (1, 3, 32, 32)
    assert preprocess_images(np.stack([image] * 3), 32).shape == (3, 3, 32, 32)
    assert preprocess_images([image, image[:20]], 32).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="crop"):
        preprocess_images(image, 32, crop="random")
    with pytest.raises(TypeError, match="uint8"):
        preprocess_images(image.astype(np.float64), 32)


def test_normalize_latents_is_parameter_free_layer_norm_eps_1e5():
    latents = torch.randn(2, 5, 8, dtype=torch.float64) * 3 + 1
    mean = latents.mean(-1, keepdim=True)
    var = latents.var(-1, unbiased=False, keepdim=True)
    torch.testing.assert_close(normalize_latents(latents), (latents - mean) / torch.sqrt(var + 1e-5))
