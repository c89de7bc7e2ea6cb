"""Every released architecture, built on the `meta` device, has exactly the keys and shapes of
the official checkpoint manifests, and the same parameter counts."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import manifest_files
from world_model.checkpoint import IGNORED_PREDICTOR_PREFIXES, architecture_shapes
from world_model.config import PRESETS, PredictorConfig
from world_model.rope import rope_slice_dim

MANIFESTS = manifest_files()


def count(shapes: dict[str, tuple]) -> int:
    return sum(math.prod(shape) for shape in shapes.values())


def _preset_name(manifest: dict) -> str:
    return manifest["hub_entry_point"].removeprefix("vjepa2_")


@pytest.mark.skipif(not MANIFESTS, reason="no manifest_*.json in any reference folder")
@pytest.mark.parametrize("path", MANIFESTS, ids=[p.stem for p in MANIFESTS])
def test_architecture_matches_manifest(path: Path):
    manifest = json.loads(path.read_text())
    config = PRESETS[_preset_name(manifest)]
    prefix = manifest["on_disk_key_prefix"]
    encoder_shapes, predictor_shapes = architecture_shapes(config)

    on_disk = manifest["checkpoint"]
    assert {prefix + k: list(v) for k, v in encoder_shapes.items()} == on_disk["encoder"]
    file_predictor = {k.removeprefix(prefix): tuple(v) for k, v in on_disk["predictor"].items()}
    ignored = {k: v for k, v in file_predictor.items() if k.startswith(IGNORED_PREDICTOR_PREFIXES)}
    if config.is_action_conditioned:
        assert set(ignored) == {"extrinsics_encoder.weight", "extrinsics_encoder.bias"}
    else:
        assert not ignored
    assert predictor_shapes == {k: v for k, v in file_predictor.items() if k not in ignored}

    assert count(encoder_shapes) == manifest["encoder_param_count"]
    # The manifest counts the unused extrinsics encoder, which the file carries and we skip.
    assert count(predictor_shapes) + count(ignored) == manifest["predictor_param_count"]


@pytest.mark.skipif(not MANIFESTS, reason="no manifest_*.json in any reference folder")
@pytest.mark.parametrize("path", MANIFESTS, ids=[p.stem for p in MANIFESTS])
def test_numerics_relevant_fields_match_manifest(path: Path):
    """What shapes cannot show: head counts, RoPE split, norm eps, image size, context limit."""
    manifest = json.loads(path.read_text())
    config = PRESETS[_preset_name(manifest)]
    arch = manifest["encoder_arch"]
    encoder = config.encoder
    assert (encoder.num_heads, encoder.head_dim, encoder.norm_eps) == (arch["num_heads"], arch["head_dim"], arch["norm_eps"])
    assert [encoder.img_size] * 2 == arch["img_size"] and encoder.patch_size == arch["patch_size"]
    assert [rope_slice_dim(encoder.head_dim)] * 3 == arch["rope_dims_d_h_w"]
    arch = manifest["predictor_arch"]
    predictor = config.predictor
    assert (predictor.num_heads, predictor.norm_eps) == (arch["num_heads"], arch["norm_eps"])
    assert [rope_slice_dim(predictor.predictor_embed_dim // predictor.num_heads)] * 3 == arch["rope_dims_d_h_w"]
    if isinstance(predictor, PredictorConfig):
        assert predictor.max_time_steps == arch["max_time_steps"]
        assert (predictor.grid_size, predictor.grid_size) == (arch["grid_height"], arch["grid_width"])
        assert predictor.action_dim == arch["action_embed_dim"]
    else:
        assert predictor.num_mask_tokens == arch["num_mask_tokens"]
