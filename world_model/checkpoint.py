"""Checkpoint files <-> modules.

Two formats:
* Released `.pt` training checkpoints (`vjepa2-ac-vitg.pt`, `vitl.pt`, ... and the fixtures):
  a dict whose `encoder` and `predictor` entries are state dicts with `module.` (AC) or
  `module.backbone.` (plain V-JEPA 2) key prefixes. Read memory-mapped with
  `weights_only=True`; modules are built on the `meta` device and the file's tensors are
  assigned into them, so a 12 GB file never needs a second in-RAM copy. Only `encoder` and
  `predictor` are touched (the optimizer state and target encoder stay on disk).
* Our own `.safetensors`: keys `encoder.*` / `predictor.*`, plus string metadata holding the
  architecture record (`ModelConfig.to_dict()`) and provenance.
Loading is strict: anything missing, unexpected or mis-shaped is an error that names the keys.
The one tolerated extra is the AC predictor's `extrinsics_encoder.*`, which the released file
carries although extrinsics are switched off.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .config import PRESETS, ModelConfig, PredictorConfig
from .encoder import VisionTransformer
from .mask_predictor import MaskTokenPredictor
from .predictor import ACPredictor

IGNORED_PREDICTOR_PREFIXES = ("extrinsics_encoder.",)
RELEASED_PREFIXES = ("module.", "backbone.")
SAFETENSORS_FORMAT = "jepa-planner/world-model/1"
_LISTED_KEYS = 8


class CheckpointError(ValueError):
    """A checkpoint file cannot be read, or does not match the architecture."""


def build_modules(config: ModelConfig) -> tuple[VisionTransformer, nn.Module]:
    """The encoder and predictor of `config`, on the current default device."""
    predictor_cls = ACPredictor if isinstance(config.predictor, PredictorConfig) else MaskTokenPredictor
    return VisionTransformer(config.encoder), predictor_cls(config.predictor)


def strip_released_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`module.backbone.blocks.0...` -> `blocks.0...` (DDP and multi-sequence wrapper prefixes)."""
    stripped = {}
    for key, tensor in state.items():
        name = key
        while name.startswith(RELEASED_PREFIXES):
            name = name.split(".", 1)[1]
        if name in stripped:
            raise CheckpointError(f"two checkpoint keys map to {name!r} after removing prefixes")
        stripped[name] = tensor
    return stripped


def read_released_checkpoint(path: str | os.PathLike) -> tuple[dict, dict]:
    """(encoder state dict, predictor state dict) of a released-layout `.pt`, prefixes removed."""
    try:
        blob = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # torch raises many types for truncated, foreign or pickle-unsafe files
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(blob, dict) or not all(isinstance(blob.get(part), dict) for part in ("encoder", "predictor")):
        found = sorted(blob) if isinstance(blob, dict) else type(blob).__name__
        raise CheckpointError(f"{path}: expected a dict with 'encoder' and 'predictor' state dicts, found {found}")
    return strip_released_prefixes(blob["encoder"]), strip_released_prefixes(blob["predictor"])


@functools.lru_cache(maxsize=None)
def architecture_shapes(config: ModelConfig) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """Key -> shape of the encoder and predictor of `config` (built on `meta`: no memory, no init)."""
    with torch.device("meta"):
        encoder, predictor = build_modules(config)
    return _shapes(encoder.state_dict()), _shapes(predictor.state_dict())


def infer_config(encoder_state: Mapping[str, torch.Tensor], predictor_state: Mapping[str, torch.Tensor]) -> ModelConfig:
    """The preset architecture whose every key and shape matches, if exactly one does.

    Shapes alone cannot give the head count or the image size (vitg.pt serves 256 and 384 px),
    so the file is matched against the known presets instead of being guessed from.
    """
    wanted = (_shapes(encoder_state), _shapes(_without_ignored(predictor_state)))
    matches: dict[ModelConfig, list[str]] = {}
    width = encoder_state.get("patch_embed.proj.weight", torch.empty(0)).shape[:1]
    for name, config in PRESETS.items():
        if width != (config.encoder.embed_dim,):
            continue  # cheap pre-filter: building every preset, even on `meta`, takes seconds
        if architecture_shapes(config) == wanted:
            matches.setdefault(config, []).append(name)
    if len(matches) == 1:
        return next(iter(matches))
    if not matches:
        raise CheckpointError(
            f"no preset architecture has exactly these keys and shapes (encoder width {tuple(width)}, "
            f"{len(encoder_state)} encoder / {len(predictor_state)} predictor tensors); pass an explicit config"
        )
    names = sorted(", ".join(group) for group in matches.values())
    raise CheckpointError(f"the shapes fit several architectures ({'; '.join(names)}); pass an explicit config")


def load_state_strict(module: nn.Module, state: Mapping[str, torch.Tensor], part: str, source: Any) -> None:
    """Assign `state` into `module` (which may live on `meta`), naming every mismatch on failure."""
    state = _without_ignored(state) if part == "predictor" else dict(state)
    expected = _shapes(module.state_dict())
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{key} (file {tuple(state[key].shape)}, model {expected[key]})"
        for key in set(state) & set(expected)
        if tuple(state[key].shape) != expected[key]
    )
    problems = [
        f"{label} ({len(keys)}): {_listing(keys)}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", misshaped))
        if keys
    ]
    if problems:
        raise CheckpointError(f"{source}: {part} does not match the architecture; " + "; ".join(problems))
    module.load_state_dict(state, strict=True, assign=True)


def load_checkpoint(path: str | os.PathLike, config: ModelConfig | None = None):
    """(config, encoder, predictor, metadata) from a released `.pt` or one of our `.safetensors`.

    `config` overrides the architecture record / shape matching. Modules come back on the CPU
    in the file's dtype, their parameters being the loaded tensors themselves.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        recorded, encoder_state, predictor_state, metadata = read_safetensors(path)
        config = config or recorded
    else:
        encoder_state, predictor_state = read_released_checkpoint(path)
        config = config or infer_config(encoder_state, predictor_state)
        metadata = {"source": str(path)}
    with torch.device("meta"):
        encoder, predictor = build_modules(config)
    load_state_strict(encoder, encoder_state, "encoder", path)
    load_state_strict(predictor, predictor_state, "predictor", path)
    return config, encoder, predictor, metadata


def save_safetensors(
    path: str | os.PathLike,
    config: ModelConfig,
    encoder: nn.Module,
    predictor: nn.Module,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write weights plus the architecture record; atomic (temp file, then rename)."""
    tensors = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    tensors |= {f"predictor.{k}": v for k, v in predictor.state_dict().items()}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    record = {key: value if isinstance(value, str) else json.dumps(value) for key, value in (metadata or {}).items()}
    record |= {"format": SAFETENSORS_FORMAT, "architecture": json.dumps(config.to_dict())}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata=record)
    os.replace(partial, path)


def read_safetensors(path: str | os.PathLike) -> tuple[ModelConfig, dict, dict, dict[str, str]]:
    """(recorded config, encoder state, predictor state, metadata) of one of our safetensors files."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    if metadata.get("format") != SAFETENSORS_FORMAT or "architecture" not in metadata:
        raise CheckpointError(f"{path}: no jepa-planner architecture record (format {metadata.get('format')!r})")
    try:
        config = ModelConfig.from_dict(json.loads(metadata["architecture"]))
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{path}: invalid architecture record ({exc})") from exc
    parts: dict[str, dict[str, torch.Tensor]] = {"encoder": {}, "predictor": {}}
    for key, tensor in tensors.items():
        part, _, name = key.partition(".")
        if part not in parts:
            raise CheckpointError(f"{path}: unexpected tensor {key!r} (expected encoder.* / predictor.*)")
        parts[part][name] = tensor
    return config, parts["encoder"], parts["predictor"], metadata


def _shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple]:
    return {key: tuple(tensor.shape) for key, tensor in state.items()}


def _without_ignored(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith(IGNORED_PREDICTOR_PREFIXES)}


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LISTED_KEYS])
    return shown + (f", ... and {len(keys) - _LISTED_KEYS} more" if len(keys) > _LISTED_KEYS else "")
