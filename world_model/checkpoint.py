"""Checkpoint files <-> modules.

Two formats:
* Released `.pt` training checkpoints (`vjepa2-ac-vitg.pt`, `vitl.pt`, ... and the fixtures):
  a dict whose `encoder` and `predictor` entries are state dicts with `module.` (AC) or
  `module.backbone.` (plain V-JEPA 2) key prefixes. The architecture comes from the tensors'
  shapes plus a config record or the caller's options (`resolve_config`). Read memory-mapped with
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

import contextlib
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
from .shapes import ArchitectureError, ArchitectureHints, build_config, contradictions, preset_hints, shape_fields
from .encoder import VisionTransformer
from .mapped import releasing_copied_sources
from .mask_predictor import MaskTokenPredictor
from .predictor import ACPredictor

IGNORED_PREDICTOR_PREFIXES = ("extrinsics_encoder.",)
RELEASED_PREFIXES = ("module.", "backbone.")
SAFETENSORS_FORMAT = "jepa-planner/world-model/1"
# Entries of a released-layout `.pt` that may hold its config record.
RECORD_KEYS = ("config", "architecture")
HINT_NAMES = {
    "encoder_heads": "encoder head count",
    "predictor_heads": "predictor head count",
    "image_size": "image size",
}
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


def read_released_checkpoint(path: str | os.PathLike) -> tuple[dict, dict, Any]:
    """(encoder state dict, predictor state dict, config record or None) of a released-layout `.pt`.

    Prefixes are removed. The record is the file's own `config` entry if it has one (the
    fixtures' format: official constructor arguments) or `architecture` (`ModelConfig.to_dict()`).
    """
    try:
        blob = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # torch raises many types for truncated, foreign or pickle-unsafe files
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(blob, dict) or not all(isinstance(blob.get(part), dict) for part in ("encoder", "predictor")):
        found = sorted(blob) if isinstance(blob, dict) else type(blob).__name__
        raise CheckpointError(f"{path}: expected a dict with 'encoder' and 'predictor' state dicts, found {found}")
    record = next((blob[key] for key in RECORD_KEYS if blob.get(key) is not None), None)
    return strip_released_prefixes(blob["encoder"]), strip_released_prefixes(blob["predictor"]), record


def config_record_paths(path: str | os.PathLike) -> list[Path]:
    """Where a config record beside a released-layout checkpoint may be, in the order tried.

    `<name>.config.json` beside `<name>.pt`, and for a golden fixture `fixture_<x>_checkpoint.pt`
    its `fixture_<x>_data.pt`, whose `config` entry records the official constructor arguments.
    """
    path = Path(path)
    candidates = [path.with_name(path.stem + ".config.json")]
    if path.name.endswith("_checkpoint.pt"):
        candidates.append(path.with_name(path.name.removesuffix("_checkpoint.pt") + "_data.pt"))
    return candidates


def read_config_record(path: Path) -> Any:
    """The record in a `.config.json`, or the `config` entry of a fixture data `.pt`."""
    try:
        if path.suffix == ".json":
            return json.loads(path.read_text())
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)["config"]
    except Exception as exc:  # unreadable JSON / pickle, or no `config` entry
        raise CheckpointError(f"{path}: not a readable config record ({type(exc).__name__}: {exc})") from exc


def config_from_record(record: Any, source: Any) -> ModelConfig:
    """A record in either format: official constructor arguments (`encoder_ctor_args` and
    `predictor_ctor_args`, as the fixtures store them) or our `ModelConfig.to_dict()`."""
    try:
        if isinstance(record, Mapping) and "encoder_ctor_args" in record:
            return ModelConfig.from_official_config(record)
        if isinstance(record, Mapping) and "encoder" in record:
            return ModelConfig.from_dict(record)
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{source}: invalid config record ({type(exc).__name__}: {exc})") from exc
    raise CheckpointError(f"{source}: a config record needs encoder_ctor_args/predictor_ctor_args or encoder/predictor")


def resolve_config(
    path: str | os.PathLike,
    encoder_state: Mapping[str, torch.Tensor],
    predictor_state: Mapping[str, torch.Tensor],
    record: Any = None,
    hints: ArchitectureHints | None = None,
) -> ModelConfig:
    """The architecture of a released-layout file: every shape-determined field from its tensors,
    the rest (head counts, image size, context length, norm eps) from `hints` (the caller's
    options), else the config record inside the file or beside it, else the presets with these
    shapes. A record that contradicts the tensors is an error; so is a required number nobody knows.
    """
    try:
        encoder_fields, predictor_fields = shape_fields(encoder_state, predictor_state)
    except ArchitectureError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    source = f"{path} (its config record)"
    if record is None:
        for candidate in config_record_paths(path):
            if candidate.is_file():
                record, source = read_config_record(candidate), candidate
                break
    known = hints or ArchitectureHints()
    if record is not None:
        recorded = config_from_record(record, source)
        disagreements = contradictions(recorded, encoder_fields, predictor_fields)
        if disagreements:
            raise CheckpointError(f"{source} does not describe the tensors of {path}: " + "; ".join(disagreements))
        known = known.or_else(ArchitectureHints.of(recorded))
    known = known.or_else(preset_hints(encoder_fields, predictor_fields, PRESETS.values()))
    missing = known.missing()
    if missing:
        places = ", ".join(str(candidate) for candidate in config_record_paths(path))
        raise CheckpointError(
            f"{path}: the tensor shapes cannot tell the {', '.join(HINT_NAMES[name] for name in missing)}, and no "
            f"config record (inside the file, or at {places}) or preset with these shapes gives "
            f"{'it' if len(missing) == 1 else 'them'}; pass "
            + ", ".join(f"{name}=" for name in missing)
            + " (or config=) to load_world_model"
        )
    try:
        return build_config(encoder_fields, predictor_fields, known)
    except ArchitectureError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


@functools.lru_cache(maxsize=None)
def architecture_shapes(config: ModelConfig) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """Key -> shape of the encoder and predictor of `config` (built on `meta`: no memory, no init)."""
    with torch.device("meta"):
        encoder, predictor = build_modules(config)
    return _shapes(encoder.state_dict()), _shapes(predictor.state_dict())


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


def load_checkpoint(
    path: str | os.PathLike, config: ModelConfig | None = None, hints: ArchitectureHints | None = None
):
    """(config, encoder, predictor, metadata) from a released `.pt` or one of our `.safetensors`.

    `config` overrides everything else; for a released `.pt`, `hints` give what the tensor
    shapes cannot (see `resolve_config`). Modules come back on the CPU in the file's dtype,
    their parameters being the loaded tensors themselves.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        recorded, encoder_state, predictor_state, metadata = read_safetensors(path)
        config = config or recorded
    else:
        encoder_state, predictor_state, record = read_released_checkpoint(path)
        config = config or resolve_config(path, encoder_state, predictor_state, record, hints)
        metadata = {"source": str(path)}
    with torch.device("meta"):
        encoder, predictor = build_modules(config)
    # Pages of a torch.load(mmap=True) file that loading copies are released as it goes (mapped.py).
    releasing = releasing_copied_sources() if path.suffix != ".safetensors" else contextlib.nullcontext()
    with releasing:
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
