"""A checkpoint's architecture from its tensors, plus the few numbers tensors cannot show.

Shapes fix the widths, depths, MLP sizes, patch and tubelet size, input channels, qkv bias,
action dim, mask-token count and whether the unused extrinsics encoder is present. They cannot
tell the head counts (the qkv weight is (3D, D) for any head count), the image size (RoPE has no
position table), the predictor's context length `num_frames` (its mask is not stored) or the
LayerNorm epsilon. Those come from `ArchitectureHints`, filled from (first wins) the caller's
options, a config record stored inside or next to the checkpoint, and the presets whose shapes
agree with the file on that number.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch

from .config import EncoderConfig, MaskTokenPredictorConfig, ModelConfig, PredictorConfig

# Official constructor defaults for what shapes cannot tell and every released file shares.
DEFAULT_NUM_FRAMES = 64  # the hub's AC predictor: 32 time steps of context
DEFAULT_NORM_EPS = 1e-6


class ArchitectureError(ValueError):
    """The tensors do not describe a supported architecture, or a needed number is unknown."""


@dataclass(frozen=True)
class ArchitectureHints:
    """What the tensor shapes cannot tell; None = unknown. `image_size` is the square input side."""

    encoder_heads: int | None = None
    predictor_heads: int | None = None
    image_size: int | None = None
    num_frames: int | None = None
    norm_eps: float | None = None

    REQUIRED = ("encoder_heads", "predictor_heads", "image_size")

    @classmethod
    def of(cls, config: ModelConfig) -> "ArchitectureHints":
        predictor = config.predictor
        return cls(
            encoder_heads=config.encoder.num_heads,
            predictor_heads=predictor.num_heads,
            image_size=config.encoder.img_size,
            num_frames=getattr(predictor, "num_frames", None),
            norm_eps=config.encoder.norm_eps,
        )

    def or_else(self, other: "ArchitectureHints") -> "ArchitectureHints":
        """Each field from `self`, or from `other` where `self` does not know it."""
        return ArchitectureHints(
            **{f.name: _first(getattr(self, f.name), getattr(other, f.name)) for f in dataclasses.fields(self)}
        )

    def missing(self) -> list[str]:
        return [name for name in self.REQUIRED if getattr(self, name) is None]


def shape_fields(
    encoder_state: Mapping[str, torch.Tensor], predictor_state: Mapping[str, torch.Tensor]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(encoder fields, predictor fields) that the tensors' shapes fix, as config keyword arguments.

    The predictor dict carries a `kind` ("ac" or "mask_token"). Raises ArchitectureError when a
    tensor the architecture always has is missing or the shapes contradict each other.
    """
    patch = _tensor(encoder_state, "patch_embed.proj.weight", "encoder", ndim=5)
    width, in_chans, tubelet, patch_h, patch_w = patch.shape
    if patch_h != patch_w:
        raise ArchitectureError(f"encoder patch_embed.proj.weight {tuple(patch.shape)}: only square patches exist")
    encoder = {
        "embed_dim": width,
        "depth": _depth(encoder_state, "blocks", "encoder"),
        "mlp_hidden": _tensor(encoder_state, "blocks.0.mlp.fc1.weight", "encoder", ndim=2).shape[0],
        "patch_size": patch_h,
        "tubelet_size": tubelet,
        "in_chans": in_chans,
        "qkv_bias": "blocks.0.attn.qkv.bias" in encoder_state,
    }
    embed = _tensor(predictor_state, "predictor_embed.weight", "predictor", ndim=2)
    predictor_width, encoder_width = embed.shape
    if encoder_width != width:
        raise ArchitectureError(f"predictor_embed.weight {tuple(embed.shape)} does not take the encoder's width {width}")
    predictor = {
        "embed_dim": width,
        "predictor_embed_dim": predictor_width,
        "depth": _depth(predictor_state, "predictor_blocks", "predictor"),
        "mlp_hidden": _tensor(predictor_state, "predictor_blocks.0.mlp.fc1.weight", "predictor", ndim=2).shape[0],
        "qkv_bias": "predictor_blocks.0.attn.qkv.bias" in predictor_state,
    }
    if "action_encoder.weight" in predictor_state:
        action_dim = _tensor(predictor_state, "action_encoder.weight", "predictor", ndim=2).shape[1]
        extrinsics = predictor_state.get("extrinsics_encoder.weight")
        if extrinsics is not None and tuple(extrinsics.shape) != (predictor_width, action_dim - 1):
            # The official predictor sizes it (width, action_dim - 1); it is unused, but a wrong shape means a foreign file.
            raise ArchitectureError(
                f"extrinsics_encoder.weight {tuple(extrinsics.shape)} should be {(predictor_width, action_dim - 1)}"
            )
        predictor |= {"kind": "ac", "patch_size": patch_h, "tubelet_size": tubelet, "action_dim": action_dim}
    else:
        tokens = [key for key in predictor_state if re.fullmatch(r"mask_tokens\.\d+", key)]
        if not tokens:
            raise ArchitectureError("the predictor has neither action_encoder.* (AC) nor mask_tokens.* (plain V-JEPA 2)")
        predictor |= {"kind": "mask_token", "num_mask_tokens": len(tokens)}
    return encoder, predictor


def build_config(
    encoder_fields: Mapping[str, Any], predictor_fields: Mapping[str, Any], hints: ArchitectureHints
) -> ModelConfig:
    """The config of shape fields plus complete hints (`missing()` empty)."""
    eps = _first(hints.norm_eps, DEFAULT_NORM_EPS)
    predictor = dict(predictor_fields)
    kind = predictor.pop("kind")
    try:
        encoder = EncoderConfig(
            **encoder_fields, num_heads=hints.encoder_heads, img_size=hints.image_size, norm_eps=eps
        )
        if kind == "ac":
            predictor_config = PredictorConfig(
                **predictor,
                num_heads=hints.predictor_heads,
                img_size=hints.image_size,
                num_frames=_first(hints.num_frames, DEFAULT_NUM_FRAMES),
                norm_eps=eps,
            )
        else:
            predictor_config = MaskTokenPredictorConfig(**predictor, num_heads=hints.predictor_heads, norm_eps=eps)
    except ValueError as exc:
        raise ArchitectureError(f"the tensors' shapes and {hints} do not fit: {exc}") from exc
    return ModelConfig(encoder, predictor_config)


def preset_hints(
    encoder_fields: Mapping[str, Any], predictor_fields: Mapping[str, Any], presets: Iterable[ModelConfig]
) -> ArchitectureHints:
    """The numbers on which every preset with exactly these shape fields agrees (None where they differ)."""
    agreeing: dict[str, set] = {}
    for config in presets:
        if _fields_of(config) != (dict(encoder_fields), dict(predictor_fields)):
            continue
        for name, value in dataclasses.asdict(ArchitectureHints.of(config)).items():
            agreeing.setdefault(name, set()).add(value)
    return ArchitectureHints(**{name: next(iter(values)) for name, values in agreeing.items() if len(values) == 1})


def contradictions(config: ModelConfig, encoder_fields: Mapping[str, Any], predictor_fields: Mapping[str, Any]) -> list[str]:
    """Where a recorded config disagrees with what the tensors show, as readable 'field: record X, tensors Y'."""
    recorded_encoder, recorded_predictor = _fields_of(config)
    found = []
    for part, recorded, actual in (
        ("encoder", recorded_encoder, encoder_fields),
        ("predictor", recorded_predictor, predictor_fields),
    ):
        for name, value in actual.items():
            if recorded.get(name) != value:
                found.append(f"{part}.{name}: record {recorded.get(name)!r}, tensors {value!r}")
    return found


def _fields_of(config: ModelConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The shape fields a config implies (what `shape_fields` would read from its weights)."""
    encoder = {name: getattr(config.encoder, name) for name in
               ("embed_dim", "depth", "mlp_hidden", "patch_size", "tubelet_size", "in_chans", "qkv_bias")}
    p = config.predictor
    predictor = {name: getattr(p, name) for name in ("embed_dim", "predictor_embed_dim", "depth", "mlp_hidden", "qkv_bias")}
    if isinstance(p, PredictorConfig):
        predictor |= {"kind": "ac", "patch_size": p.patch_size, "tubelet_size": p.tubelet_size, "action_dim": p.action_dim}
    else:
        predictor |= {"kind": "mask_token", "num_mask_tokens": p.num_mask_tokens}
    return encoder, predictor


def _tensor(state: Mapping[str, torch.Tensor], key: str, part: str, ndim: int) -> torch.Tensor:
    tensor = state.get(key)
    if tensor is None:
        raise ArchitectureError(f"the {part} has no {key!r}, which every V-JEPA 2 {part} has ({len(state)} tensors found)")
    if tensor.dim() != ndim:
        raise ArchitectureError(f"{part} {key} has shape {tuple(tensor.shape)}, expected {ndim} dimensions")
    return tensor


def _depth(state: Mapping[str, torch.Tensor], prefix: str, part: str) -> int:
    layers = {int(m.group(1)) for key in state if (m := re.match(rf"{prefix}\.(\d+)\.", key))}
    if not layers:
        raise ArchitectureError(f"the {part} has no {prefix}.N.* tensors")
    if layers != set(range(len(layers))):
        raise ArchitectureError(f"the {part}'s {prefix} are numbered {sorted(layers)}, not 0..{len(layers) - 1}")
    return len(layers)


def _first(*values):
    return next((value for value in values if value is not None), None)
