"""Checkpoint loading: released layout, strictness with named keys, mmap/assign, safetensors records."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from world_model import PRESETS, ModelConfig, WorldModel, load_world_model
from world_model.checkpoint import (
    CheckpointError,
    build_modules,
    load_checkpoint,
    read_safetensors,
    resolve_config,
    strip_released_prefixes,
)
from world_model.config import EncoderConfig, PredictorConfig
from world_model.shapes import ArchitectureHints


@pytest.fixture(scope="module")
def tiny_blob(reference_folder):
    return torch.load(reference_folder / "fixture_tiny_checkpoint.pt", map_location="cpu", weights_only=True)


def _write(blob, path):
    torch.save(blob, path)
    return path


def _meta_state(name: str, prefix: str) -> tuple[dict, dict]:
    with torch.device("meta"):
        encoder, predictor = build_modules(PRESETS[name])
    return ({prefix + k: v for k, v in encoder.state_dict().items()}, {prefix + k: v for k, v in predictor.state_dict().items()})


def test_released_fixture_loads_by_shape_with_extrinsics_ignored(reference_folder, tiny_blob):
    config, encoder, predictor, _ = load_checkpoint(reference_folder / "fixture_tiny_checkpoint.pt")
    assert config == PRESETS["tiny"]
    assert "module.extrinsics_encoder.weight" in tiny_blob["predictor"]
    assert not hasattr(predictor, "extrinsics_encoder")
    torch.testing.assert_close(encoder.norm.bias, tiny_blob["encoder"]["module.norm.bias"], atol=0, rtol=0)
    assert not any(p.is_meta for p in [*encoder.parameters(), *predictor.parameters()])


def _resolve(name: str, prefix: str, **hints) -> ModelConfig:
    encoder, predictor = _meta_state(name, prefix)
    return resolve_config(
        "memory.pt", strip_released_prefixes(encoder), strip_released_prefixes(predictor), hints=ArchitectureHints(**hints)
    )


def test_released_architectures_from_shapes_and_presets():
    assert _resolve("ac_vit_giant", "module.") == PRESETS["ac_vit_giant"]
    assert _resolve("vit_large", "module.backbone.") == PRESETS["vit_large"]
    # vitg.pt serves 256 and 384 px with identical tensors: the error names the one missing number.
    with pytest.raises(CheckpointError, match=r"cannot tell the image size, .* pass image_size= \(or config=\)"):
        _resolve("vit_giant", "module.backbone.")
    assert _resolve("vit_giant", "module.backbone.", image_size=384) == PRESETS["vit_giant_384"]


NEW_ARCHITECTURE = ModelConfig(
    EncoderConfig(embed_dim=72, depth=3, num_heads=2, mlp_hidden=100, img_size=32, patch_size=8, tubelet_size=2),
    PredictorConfig(
        embed_dim=72, predictor_embed_dim=48, depth=1, num_heads=3, mlp_hidden=80, img_size=32, patch_size=8, num_frames=6
    ),
)


def _write_released(config: ModelConfig, path, **extra):
    encoder, predictor = WorldModel.from_config(config, seed=3).encoder, WorldModel.from_config(config, seed=3).predictor
    blob = {
        "encoder": {f"module.{k}": v for k, v in encoder.state_dict().items()},
        "predictor": {f"module.{k}": v for k, v in predictor.state_dict().items()},
        **extra,
    }
    return _write(blob, path)


def test_unknown_architecture_needs_heads_and_image_size_named_in_one_error(tmp_path):
    path = _write_released(NEW_ARCHITECTURE, tmp_path / "new.pt")
    with pytest.raises(CheckpointError) as error:
        load_world_model(path, device="cpu")
    message = str(error.value)
    for needed in ("encoder head count", "predictor head count", "image size", "encoder_heads=", "new.config.json"):
        assert needed in message
    model = load_world_model(path, device="cpu", encoder_heads=2, predictor_heads=3, image_size=32, num_frames=6)
    assert model.config == NEW_ARCHITECTURE


@pytest.mark.parametrize("where", ["inside", "beside"])
def test_config_record_inside_or_beside_the_file(tmp_path, where):
    record = NEW_ARCHITECTURE.to_dict()
    if where == "inside":
        path = _write_released(NEW_ARCHITECTURE, tmp_path / "new.pt", architecture=record)
    else:
        path = _write_released(NEW_ARCHITECTURE, tmp_path / "new.pt")
        (tmp_path / "new.config.json").write_text(json.dumps(record))
    assert load_world_model(path, device="cpu").config == NEW_ARCHITECTURE
    # An explicit option wins over the record for what shapes cannot tell.
    assert load_world_model(path, device="cpu", num_frames=4).config.predictor.num_frames == 4


def test_record_contradicting_the_tensors_is_refused(tmp_path):
    record = NEW_ARCHITECTURE.to_dict()
    record["encoder"]["depth"] = 4
    path = _write_released(NEW_ARCHITECTURE, tmp_path / "new.pt", architecture=record)
    with pytest.raises(CheckpointError, match="encoder.depth: record 4, tensors 3"):
        load_world_model(path, device="cpu")


def test_heads_that_do_not_divide_the_width_are_a_checkpoint_error(tmp_path):
    path = _write_released(NEW_ARCHITECTURE, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="not divisible by 5 heads"):
        load_world_model(path, device="cpu", encoder_heads=5, predictor_heads=3, image_size=32)


@pytest.mark.parametrize(
    "edit, named",
    [
        (lambda b: b["encoder"].pop("module.blocks.1.mlp.fc2.bias"), "missing keys (1): blocks.1.mlp.fc2.bias"),
        (lambda b: b["predictor"].__setitem__("module.mask_tokens.0", torch.zeros(1, 1, 64)), "unexpected keys (1): mask_tokens.0"),
        (
            lambda b: b["predictor"].__setitem__("module.state_encoder.weight", torch.zeros(64, 6)),
            "mis-shaped keys (1): state_encoder.weight (file (64, 6), model (64, 7))",
        ),
    ],
    ids=["missing", "unexpected", "misshaped"],
)
def test_mismatched_file_names_the_keys(tmp_path, tiny_blob, edit, named):
    blob = {part: dict(tiny_blob[part]) for part in ("encoder", "predictor")}
    edit(blob)
    path = _write(blob, tmp_path / "edited.pt")
    for config in (PRESETS["tiny"], None):  # explicit, or derived from the shapes (the tiny preset's numbers)
        with pytest.raises(CheckpointError) as error:
            load_checkpoint(path, config=config)
        assert named in str(error.value)



def test_wrong_config_is_rejected_not_partially_loaded(reference_folder):
    with pytest.raises(CheckpointError, match="mis-shaped keys"):
        load_world_model(reference_folder / "fixture_tiny_checkpoint.pt", device="cpu", config=PRESETS["small"])


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04" + bytes(100)], ids=["empty", "text", "bad-zip"])
def test_corrupt_files_give_clear_errors(tmp_path, content):
    for suffix in (".pt", ".safetensors"):
        path = tmp_path / f"corrupt{suffix}"
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match="not a readable"):
            load_checkpoint(path)


def test_truncated_and_foreign_files(tmp_path, reference_folder):
    data = (reference_folder / "fixture_tiny_checkpoint.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(truncated)
    with pytest.raises(CheckpointError, match="'encoder' and 'predictor'"):
        load_checkpoint(_write({"model": {}}, tmp_path / "foreign.pt"))
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "absent.pt")


def test_pickled_code_is_refused(tmp_path):
    """weights_only=True: a checkpoint that would run code on load is rejected, not executed."""
    path = _write({"encoder": {}, "predictor": {}, "payload": ModelConfig}, tmp_path / "unsafe.pt")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(path)


def test_safetensors_round_trip_keeps_weights_architecture_and_metadata(tmp_path, reference_folder):
    original = load_world_model(reference_folder / "fixture_tiny_checkpoint.pt", device="cpu")
    path = tmp_path / "model.safetensors"
    original.save(path, metadata={"provenance": {"steps": 3}, "note": "round trip"})
    config, _, _, metadata = read_safetensors(path)
    assert config == PRESETS["tiny"]
    assert json.loads(metadata["architecture"]) == PRESETS["tiny"].to_dict()
    assert json.loads(metadata["provenance"]) == {"steps": 3} and metadata["note"] == "round trip"
    reloaded = load_world_model(path, device="cpu")
    for (key, a), b in zip(original.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), key
    image = torch.randint(0, 256, (48, 48, 3), dtype=torch.uint8)
    assert torch.equal(original.encode(image), reloaded.encode(image))


def test_custom_architecture_round_trips_without_a_preset(tmp_path):
    """Our files carry their own architecture record, so non-preset sizes reload exactly."""
    config = ModelConfig(
        EncoderConfig(embed_dim=48, depth=1, num_heads=2, mlp_hidden=96, img_size=32),
        PredictorConfig(embed_dim=48, predictor_embed_dim=32, depth=1, num_heads=1, mlp_hidden=64, img_size=32, num_frames=6),
    )
    WorldModel.from_config(config, seed=1).save(tmp_path / "custom.safetensors")
    assert load_world_model(tmp_path / "custom.safetensors", device="cpu").config == config


def test_safetensors_without_record_or_with_missing_tensor(tmp_path, reference_folder):
    save_file({"encoder.norm.weight": torch.ones(96)}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(CheckpointError, match="architecture record"):
        load_checkpoint(tmp_path / "bare.safetensors")
    model = load_world_model(reference_folder / "fixture_tiny_checkpoint.pt", device="cpu")
    model.save(tmp_path / "full.safetensors")
    _, encoder, predictor, metadata = read_safetensors(tmp_path / "full.safetensors")
    tensors = {f"encoder.{k}": v for k, v in encoder.items()} | {f"predictor.{k}": v for k, v in predictor.items()}
    del tensors["predictor.predictor_proj.bias"]
    save_file(tensors, str(tmp_path / "partial.safetensors"), metadata=metadata)
    with pytest.raises(CheckpointError, match="missing keys \\(1\\): predictor_proj.bias"):
        load_checkpoint(tmp_path / "partial.safetensors")


# Runs in a fresh process so that the writer's freed buffers do not blur the measurement.
MEMORY_PROBE = """
import json, sys
from world_model import ModelConfig
from world_model.checkpoint import load_checkpoint
def rss_mb():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS'):
            return int(line.split()[1]) / 1024
config = ModelConfig.from_dict(json.loads(sys.argv[2]))
before = rss_mb()
loaded = load_checkpoint(sys.argv[1], config=config)
print(rss_mb() - before)
"""


def test_loading_maps_the_file_instead_of_copying_it(tmp_path):
    """A ~90 MB checkpoint loads with far less than its size in new resident memory
    (meta-device build + mmap + assign: no random init, no second copy). The one copy is the
    qkv rows, permuted once into the attention's order; the file pages it read are released."""
    config = ModelConfig(
        EncoderConfig(embed_dim=512, depth=7, num_heads=8, mlp_hidden=2048, img_size=32),
        PredictorConfig(embed_dim=512, predictor_embed_dim=256, depth=1, num_heads=4, mlp_hidden=1024, img_size=32, num_frames=4),
    )
    with torch.device("meta"):
        encoder, predictor = build_modules(config)
    blob = {
        "encoder": {f"module.{k}": torch.zeros(v.shape) for k, v in encoder.state_dict().items()},
        "predictor": {f"module.{k}": torch.zeros(v.shape) for k, v in predictor.state_dict().items()},
    }
    size_mb = sum(t.numel() * 4 for part in blob.values() for t in part.values()) / 2**20
    qkv_mb = sum(t.numel() * 4 for part in blob.values() for k, t in part.items() if ".attn.qkv." in k) / 2**20
    path = tmp_path / "big.pt"
    torch.save(blob, path)
    del blob
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(path), json.dumps(config.to_dict())],
        capture_output=True,
        text=True,
        check=True,
    )
    grown_mb = float(result.stdout.strip())
    assert size_mb > 80
    assert qkv_mb < 0.3 * size_mb
    assert grown_mb < qkv_mb + 0.1 * size_mb, f"loading a {size_mb:.0f} MB file ({qkv_mb:.0f} MB qkv) grew resident memory by {grown_mb:.0f} MB"


def test_qkv_rows_are_permuted_once_in_memory_and_state_dicts_round_trip_bit_for_bit(tmp_path, reference_folder, tiny_blob):
    from world_model.layers import qkv_rows

    model = load_world_model(reference_folder / "fixture_tiny_checkpoint.pt", device="cpu")
    official = {part: strip_released_prefixes(tiny_blob[part]) for part in ("encoder", "predictor")}
    official["predictor"] = {k: v for k, v in official["predictor"].items() if not k.startswith("extrinsics_encoder.")}
    attention = model.encoder.blocks[0].attn
    order, _ = qkv_rows(attention.num_heads, attention.head_dim)
    held = attention.qkv.weight
    assert not torch.equal(held, official["encoder"]["blocks.0.attn.qkv.weight"])
    assert torch.equal(held, official["encoder"]["blocks.0.attn.qkv.weight"][order])
    for part, module in (("encoder", model.encoder), ("predictor", model.predictor)):
        written = module.state_dict()
        assert written.keys() == official[part].keys()
        for key, tensor in written.items():
            assert torch.equal(tensor, official[part][key]), f"{part}.{key}"
    # Through our safetensors file and back: the same official bytes, the same in-memory rows.
    model.save(tmp_path / "tiny.safetensors")
    _, encoder_state, _, _ = read_safetensors(tmp_path / "tiny.safetensors")
    assert torch.equal(encoder_state["blocks.0.attn.qkv.weight"], official["encoder"]["blocks.0.attn.qkv.weight"])
    reloaded = load_world_model(tmp_path / "tiny.safetensors", device="cpu")
    assert torch.equal(reloaded.encoder.blocks[0].attn.qkv.weight, held)
    assert torch.equal(reloaded.encoder.blocks[0].attn.qkv.bias, attention.qkv.bias)


def test_a_plain_vjepa2_file_gives_a_frozen_encoder_and_no_world_model(tmp_path):
    from world_model.config import MaskTokenPredictorConfig

    config = ModelConfig(
        EncoderConfig(embed_dim=48, depth=1, num_heads=2, mlp_hidden=96, img_size=32),
        MaskTokenPredictorConfig(embed_dim=48, predictor_embed_dim=32, depth=1, num_heads=2, mlp_hidden=64, num_mask_tokens=3),
    )
    encoder, predictor = build_modules(config)
    prefix = "module.backbone."
    path = _write(
        {"encoder": {prefix + k: v for k, v in encoder.state_dict().items()},
         "predictor": {prefix + k: v for k, v in predictor.state_dict().items()}},
        tmp_path / "plain.pt",
    )
    loaded, encoder, predictor, _ = load_checkpoint(path, hints=ArchitectureHints(encoder_heads=2, predictor_heads=2, image_size=32))
    assert loaded == config
    assert encoder(torch.randn(1, 3, 2, 32, 32)).shape == (1, 4, 48)
    with pytest.raises(NotImplementedError, match="frozen encoder"):
        predictor(torch.zeros(1, 4, 48))
    with pytest.raises(ValueError, match="plain V-JEPA 2 checkpoint"):
        load_world_model(path, device="cpu", encoder_heads=2, predictor_heads=2, image_size=32)
