"""Architecture descriptions of the V-JEPA 2 family, and the named presets.

A config holds exactly what decides the weight shapes and the numerics; nothing else. The
official constructors take many more keywords (drop rates, init std, ...) that do not matter
at inference; `from_official_kwargs` accepts them and rejects only flags we do not implement,
so a config recorded by the official code can never be silently misread.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Union

# The ViT-g MLP ratio; every released AC size and both test fixtures use it for the encoder.
GIANT_MLP_RATIO = 48 / 11


@dataclass(frozen=True)
class EncoderConfig:
    """The V-JEPA 2 video ViT (RoPE, no class token, no position embedding)."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_hidden: int
    img_size: int = 256  # the square crop the world model feeds it; the encoder itself accepts any H, W % 16 == 0
    patch_size: int = 16
    tubelet_size: int = 2
    in_chans: int = 3
    qkv_bias: bool = True
    norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def tokens_per_frame(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    def __post_init__(self) -> None:
        _check_heads(self.embed_dim, self.num_heads)
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")

    @classmethod
    def from_official_kwargs(cls, kwargs: Mapping[str, Any]) -> "EncoderConfig":
        """From the keyword arguments of the official `VisionTransformer` constructor."""
        _reject_unsupported(kwargs, {"use_rope": True, "use_silu": False, "handle_nonsquare_inputs": True})
        return cls(
            embed_dim=int(kwargs["embed_dim"]),
            depth=int(kwargs["depth"]),
            num_heads=int(kwargs["num_heads"]),
            mlp_hidden=int(kwargs["embed_dim"] * kwargs.get("mlp_ratio", 4.0)),
            img_size=_square_size(kwargs.get("img_size", 224)),
            patch_size=int(kwargs.get("patch_size", 16)),
            tubelet_size=int(kwargs.get("tubelet_size", 2)),
            in_chans=int(kwargs.get("in_chans", 3)),
            qkv_bias=bool(kwargs.get("qkv_bias", True)),
            norm_eps=_norm_eps(kwargs),
        )


@dataclass(frozen=True)
class PredictorConfig:
    """The action-conditioned (AC) predictor of V-JEPA 2-AC."""

    embed_dim: int  # encoder width: input and output feature size
    predictor_embed_dim: int
    depth: int
    num_heads: int
    mlp_hidden: int
    img_size: int = 256
    patch_size: int = 16
    tubelet_size: int = 2
    num_frames: int = 64  # official ctor argument; the predictor handles num_frames // tubelet_size steps
    action_dim: int = 7
    qkv_bias: bool = True
    norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.predictor_embed_dim // self.num_heads

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def tokens_per_frame(self) -> int:
        return self.grid_size**2

    @property
    def max_time_steps(self) -> int:
        return self.num_frames // self.tubelet_size

    def __post_init__(self) -> None:
        _check_heads(self.predictor_embed_dim, self.num_heads)

    @classmethod
    def from_official_kwargs(cls, kwargs: Mapping[str, Any]) -> "PredictorConfig":
        """From the keyword arguments of the official `vit_ac_predictor` / `VisionTransformerPredictorAC`."""
        _reject_unsupported(
            kwargs, {"use_rope": True, "use_silu": False, "is_frame_causal": True, "use_extrinsics": False}
        )
        dim = int(kwargs["predictor_embed_dim"])
        return cls(
            embed_dim=int(kwargs["embed_dim"]),
            predictor_embed_dim=dim,
            depth=int(kwargs["depth"]),
            num_heads=int(kwargs["num_heads"]),
            mlp_hidden=int(dim * kwargs.get("mlp_ratio", 4.0)),
            img_size=_square_size(kwargs.get("img_size", 224)),
            patch_size=int(kwargs.get("patch_size", 16)),
            tubelet_size=int(kwargs.get("tubelet_size", 2)),
            num_frames=int(kwargs.get("num_frames", 1)),
            action_dim=int(kwargs.get("action_embed_dim", 7)),
            qkv_bias=bool(kwargs.get("qkv_bias", True)),
            norm_eps=_norm_eps(kwargs),
        )


@dataclass(frozen=True)
class MaskTokenPredictorConfig:
    """The mask-token predictor shipped with the plain V-JEPA 2 files (weight layout only)."""

    embed_dim: int
    predictor_embed_dim: int = 384
    depth: int = 12
    num_heads: int = 12
    mlp_hidden: int = 1536
    num_mask_tokens: int = 10
    qkv_bias: bool = True
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        _check_heads(self.predictor_embed_dim, self.num_heads)


@dataclass(frozen=True)
class ModelConfig:
    """An encoder plus its predictor: one released file, or one of our safetensors checkpoints."""

    encoder: EncoderConfig
    predictor: Union[PredictorConfig, MaskTokenPredictorConfig]

    @property
    def is_action_conditioned(self) -> bool:
        return isinstance(self.predictor, PredictorConfig)

    def to_dict(self) -> dict[str, Any]:
        """The architecture record stored beside our weights (JSON-serialisable)."""
        kind = "ac" if self.is_action_conditioned else "mask_token"
        return {
            "encoder": dataclasses.asdict(self.encoder),
            "predictor": {"kind": kind, **dataclasses.asdict(self.predictor)},
        }

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> "ModelConfig":
        predictor = dict(record["predictor"])
        kind = predictor.pop("kind")
        predictor_cls = {"ac": PredictorConfig, "mask_token": MaskTokenPredictorConfig}.get(kind)
        if predictor_cls is None:
            raise ValueError(f"unknown predictor kind {kind!r} in architecture record")
        return cls(encoder=EncoderConfig(**record["encoder"]), predictor=predictor_cls(**predictor))

    @classmethod
    def from_official_config(cls, config: Mapping[str, Any]) -> "ModelConfig":
        """From a fixture's `data["config"]` (official encoder and AC predictor constructor arguments)."""
        return cls(
            encoder=EncoderConfig.from_official_kwargs(config["encoder_ctor_args"]),
            predictor=PredictorConfig.from_official_kwargs(config["predictor_ctor_args"]),
        )


def _check_heads(width: int, heads: int) -> None:
    if width % heads:
        raise ValueError(f"width {width} is not divisible by {heads} heads")


def _square_size(size: Any) -> int:
    if isinstance(size, (tuple, list)):
        if len(size) != 2 or size[0] != size[1]:
            raise ValueError(f"only square image sizes are supported, got {tuple(size)}")
        size = size[0]
    return int(size)


def _norm_eps(kwargs: Mapping[str, Any]) -> float:
    norm = kwargs.get("norm_layer", {"type": "LayerNorm", "eps": 1e-6})
    if not isinstance(norm, Mapping) or norm.get("type") != "LayerNorm":
        raise ValueError(f"unsupported norm_layer {norm!r}: only LayerNorm is implemented")
    return float(norm.get("eps", 1e-6))


def _reject_unsupported(kwargs: Mapping[str, Any], required: Mapping[str, Any]) -> None:
    for name, value in required.items():
        if name in kwargs and bool(kwargs[name]) != value:
            raise ValueError(f"{name}={kwargs[name]!r} is not implemented (only {name}={value})")


def _giant_encoder(img_size: int = 256) -> EncoderConfig:
    return EncoderConfig(embed_dim=1408, depth=40, num_heads=22, mlp_hidden=6144, img_size=img_size)


PRESETS: dict[str, ModelConfig] = {
    # Plain V-JEPA 2 files (vitl.pt, vith.pt, vitg.pt, vitg-384.pt): encoder + mask-token predictor.
    "vit_large": ModelConfig(
        EncoderConfig(embed_dim=1024, depth=24, num_heads=16, mlp_hidden=4096),
        MaskTokenPredictorConfig(embed_dim=1024),
    ),
    "vit_huge": ModelConfig(
        EncoderConfig(embed_dim=1280, depth=32, num_heads=16, mlp_hidden=5120),
        MaskTokenPredictorConfig(embed_dim=1280),
    ),
    "vit_giant": ModelConfig(_giant_encoder(), MaskTokenPredictorConfig(embed_dim=1408)),
    "vit_giant_384": ModelConfig(_giant_encoder(384), MaskTokenPredictorConfig(embed_dim=1408)),
    # vjepa2-ac-vitg.pt: the released world model.
    "ac_vit_giant": ModelConfig(
        _giant_encoder(),
        PredictorConfig(embed_dim=1408, predictor_embed_dim=1024, depth=24, num_heads=16, mlp_hidden=4096),
    ),
    # The two golden-fixture sizes (head dim 32 for tiny on purpose: a different RoPE split).
    "tiny": ModelConfig(
        EncoderConfig(embed_dim=96, depth=2, num_heads=3, mlp_hidden=int(96 * GIANT_MLP_RATIO), img_size=48),
        PredictorConfig(
            embed_dim=96, predictor_embed_dim=64, depth=2, num_heads=2, mlp_hidden=256, img_size=48, num_frames=8
        ),
    ),
    "small": ModelConfig(
        EncoderConfig(embed_dim=128, depth=4, num_heads=2, mlp_hidden=int(128 * GIANT_MLP_RATIO), img_size=64),
        PredictorConfig(
            embed_dim=128, predictor_embed_dim=128, depth=4, num_heads=2, mlp_hidden=512, img_size=64, num_frames=16
        ),
    ),
    # The embedded default model (world_model/assets/demo.safetensors): 64 px, 16 tokens per frame.
    "demo": ModelConfig(
        EncoderConfig(embed_dim=128, depth=4, num_heads=2, mlp_hidden=int(128 * GIANT_MLP_RATIO), img_size=64),
        PredictorConfig(
            embed_dim=128, predictor_embed_dim=128, depth=4, num_heads=2, mlp_hidden=512, img_size=64, num_frames=16
        ),
    ),
}
