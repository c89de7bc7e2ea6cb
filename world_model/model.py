"""`WorldModel`: the frozen V-JEPA 2-AC encoder and predictor behind a small inference API."""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .checkpoint import build_modules, load_checkpoint, save_safetensors
from .config import PRESETS, ModelConfig
from .encoder import VisionTransformer
from .predictor import ACPredictor
from .preprocessing import ImageBatch, normalize_latents, preprocess_images
from .shapes import ArchitectureHints

logger = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "assets"
DEMO_WEIGHTS = ASSETS / "demo.safetensors"
# Embedded trained models, by name: the sim's (the default everywhere), robosuite's Panda scene, and a
# wider predictor for that scene trained on grasps that also raise with open fingers (lift).
EMBEDDED_WEIGHTS = {"demo": DEMO_WEIGHTS, "robosuite": ASSETS / "robosuite.safetensors",
                    "robosuite-lift": ASSETS / "robosuite-lift.safetensors"}
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`"auto"` -> CUDA when available, else CPU; anything else is passed to `torch.device`."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available (use 'auto' or 'cpu')")
    return resolved


def frame_latents(encoder: VisionTransformer, pixels: torch.Tensor) -> torch.Tensor:
    """Preprocessed (B, 3, S, S) -> (B, N, D) normalised latents, as the AC pipeline encodes
    frames (SPEC section 4): each image is repeated into its own 2-frame tubelet, encoded, then
    LayerNorm-ed without parameters. The one place for it: `WorldModel` and training both call it."""
    tubelet = encoder.config.tubelet_size
    return normalize_latents(encoder(pixels[:, :, None].expand(-1, -1, tubelet, -1, -1)))


class WorldModel(nn.Module):
    """Encoder + AC predictor. `encode` and `rollout` run under `torch.inference_mode`.

    Weights stay in their own dtype; `autocast_dtype=torch.bfloat16` runs both calls under
    `torch.autocast` and returns float32 latents.
    """

    def __init__(self, encoder: VisionTransformer, predictor: ACPredictor, autocast_dtype: torch.dtype | None = None):
        super().__init__()
        enc, pred = encoder.config, predictor.config
        if (enc.embed_dim, enc.img_size, enc.patch_size) != (pred.embed_dim, pred.img_size, pred.patch_size):
            raise ValueError(
                f"encoder (width, image, patch) {(enc.embed_dim, enc.img_size, enc.patch_size)} does not fit "
                f"predictor {(pred.embed_dim, pred.img_size, pred.patch_size)}"
            )
        self.encoder = encoder
        self.predictor = predictor
        self.autocast_dtype = autocast_dtype

    @classmethod
    def from_config(cls, config: ModelConfig, seed: int = 0) -> "WorldModel":
        """A freshly initialised model (deterministic in `seed`; the global RNG is left untouched)."""
        if not config.is_action_conditioned:
            raise ValueError("a world model needs an action-conditioned predictor; this config has a mask-token one")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder, predictor = build_modules(config)
            encoder.reset_parameters()
            predictor.reset_parameters()
        return cls(encoder, predictor)

    @property
    def config(self) -> ModelConfig:
        return ModelConfig(self.encoder.config, self.predictor.config)

    @property
    def image_size(self) -> int:
        return self.encoder.config.img_size

    @property
    def tokens_per_frame(self) -> int:
        return self.predictor.config.tokens_per_frame

    @property
    def embed_dim(self) -> int:
        return self.encoder.config.embed_dim

    @property
    def max_horizon(self) -> int:
        """Longest `rollout` (the predictor's context limit)."""
        return self.predictor.config.max_time_steps

    @property
    def device(self) -> torch.device:
        return self.predictor.predictor_proj.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype: the autocast dtype if set, else the weights' dtype."""
        return self.autocast_dtype or self.predictor.predictor_proj.weight.dtype

    def encode(self, images: ImageBatch, crop: str = "center") -> torch.Tensor:
        """uint8 RGB (H, W, 3) | (B, H, W, 3) | list of (H, W, 3), any size -> (B, N, D) normalised latents.

        `crop="center"` is the official inference transform; `"droid"` the DROID training crop.
        """
        with torch.inference_mode():
            pixels = preprocess_images(images, self.image_size, crop, self.device)
            return self.encode_pixels(pixels)

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed (B, 3, S, S) -> (B, N, D) normalised latents (`frame_latents` in the model's
        device, dtype and autocast). Not under inference mode, so training code can call it inside
        `torch.no_grad()`."""
        pixels = pixels.to(self.device, self.predictor.predictor_proj.weight.dtype)
        with self._autocast():
            latents = frame_latents(self.encoder, pixels)
        return latents.float() if self.autocast_dtype else latents

    def rollout(
        self, context: torch.Tensor, actions: torch.Tensor, states: torch.Tensor, cached: bool = True
    ) -> torch.Tensor:
        """Imagine H frames for S candidate action sequences from one shared (or per-sample) start.

        context (1|S, N, D) normalised latents of frame 0; actions (S, H, 7); states (S, H, 7) with
        states[:, h] the state at frame h. Returns (S, H, N, D): normalised predictions of frames
        1..H. `cached=False` recomputes the whole history at every step (the official procedure).
        """
        with torch.inference_mode():
            context, actions, states = self._rollout_inputs(context, actions, states)
            with self._autocast():
                frames = (self._rollout_cached if cached else self._rollout_full)(context, actions, states)
            return frames.float() if self.autocast_dtype else frames

    def save(self, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> None:
        """Weights + architecture record (+ `metadata`, e.g. provenance) as safetensors."""
        save_safetensors(path, self.config, self.encoder, self.predictor, metadata)

    def _rollout_cached(self, context: torch.Tensor, actions: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        horizon = actions.shape[1]
        cache = self.predictor.new_cache(horizon)
        frames = []
        frame = context
        for h in range(horizon):
            frame = normalize_latents(self.predictor.step(frame, actions[:, h], states[:, h], cache))
            frames.append(frame)
        return torch.stack(frames, dim=1)

    def _rollout_full(self, context: torch.Tensor, actions: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        samples, horizon = actions.shape[:2]
        n = self.tokens_per_frame
        history = context.expand(samples, -1, -1)
        frames = []
        for h in range(horizon):
            predicted = self.predictor(history, actions[:, : h + 1], states[:, : h + 1])[:, -n:]
            frame = normalize_latents(predicted)
            frames.append(frame)
            history = torch.cat([history, frame.to(history.dtype)], dim=1)
        return torch.stack(frames, dim=1)

    def _rollout_inputs(self, context, actions, states):
        n, d = self.tokens_per_frame, self.embed_dim
        if actions.dim() != 3 or actions.shape[-1] != self.predictor.config.action_dim or states.shape != actions.shape:
            raise ValueError(f"actions and states must both be (S, H, 7), got {tuple(actions.shape)} and {tuple(states.shape)}")
        samples, horizon = actions.shape[:2]
        if not 0 < horizon <= self.max_horizon:
            raise ValueError(f"horizon must be in 1..{self.max_horizon}, got {horizon}")
        if context.dim() != 3 or context.shape[1:] != (n, d) or context.shape[0] not in (1, samples):
            raise ValueError(f"context must be (1 or {samples}, {n}, {d}), got {tuple(context.shape)}")
        dtype = self.predictor.predictor_proj.weight.dtype
        return (t.to(self.device, dtype, non_blocking=True) for t in (context, actions, states))

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


def load_world_model(
    source: str | os.PathLike = "demo",
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "float32",
    *,
    config: ModelConfig | None = None,
    encoder_heads: int | None = None,
    predictor_heads: int | None = None,
    image_size: int | None = None,
    num_frames: int | None = None,
    seed: int = 0,
    compile: bool = False,
) -> WorldModel:
    """A `WorldModel` from a preset name, a released `.pt` or one of our `.safetensors` files.

    * `"demo"`: the embedded model, `world_model/assets/demo.safetensors`; `"robosuite"`: the one
      trained in robosuite's Lift scene, `world_model/assets/robosuite.safetensors`; `"robosuite-lift"`:
      its encoder with a 256 x 6 predictor that imagines grasps (stored in bf16, loaded as float32).
    * another AC preset name (`ac_vit_giant`, `small`, `tiny`): randomly initialised from `seed`,
      with a warning; useful for tests and benchmarks only.
    * a path: weights loaded strictly; the architecture comes from `config`, the file's
      architecture record (safetensors), or for a released `.pt` from its tensor shapes plus what
      shapes cannot tell: `encoder_heads`, `predictor_heads`, `image_size` and `num_frames` (the
      predictor's context, default 64) from these options, else a config record inside the file
      or beside it (`<name>.config.json`; a fixture's `_data.pt`), else a preset of these shapes.
      Anything still unknown is a `CheckpointError` that names it.
    `dtype`: "float32" or "float64" set the weights' dtype; "bfloat16" keeps float32 weights and
    runs under bf16 autocast. `compile=True` wraps encoder and predictor blocks in `torch.compile`.
    """
    compute = DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if compute not in DTYPES.values():
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    hints = ArchitectureHints(encoder_heads, predictor_heads, image_size, num_frames)
    model = _load_modules(source, config, hints, seed)
    weights_dtype = torch.float32 if compute == torch.bfloat16 else compute
    model = model.to(device=resolve_device(device), dtype=weights_dtype).eval().requires_grad_(False)
    model.autocast_dtype = torch.bfloat16 if compute == torch.bfloat16 else None
    if compile:
        model.encoder.compile()
        for block in model.predictor.predictor_blocks:
            block.compile(dynamic=True)
    return model


def _load_modules(source: str | os.PathLike, config: ModelConfig | None, hints: ArchitectureHints, seed: int) -> WorldModel:
    name = str(source)
    if name in EMBEDDED_WEIGHTS and not Path(name).exists():
        weights = EMBEDDED_WEIGHTS[name]
        if not weights.is_file():
            raise FileNotFoundError(
                f"the {name} world model is not trained yet ({weights} is missing); "
                "create it with `jepa-planner train` (see world_model/README.md)"
            )
        return _from_file(weights, config)
    if name in PRESETS and not Path(name).exists():
        logger.warning("preset %r has no weights: randomly initialised (seed %d), predictions are meaningless", name, seed)
        return WorldModel.from_config(config or PRESETS[name], seed)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{source!r} is neither a file, an embedded model ({', '.join(EMBEDDED_WEIGHTS)}) "
                                f"nor a preset ({', '.join(PRESETS)})")
    return _from_file(path, config, hints)


def _from_file(path: Path, config: ModelConfig | None, hints: ArchitectureHints | None = None) -> WorldModel:
    config, encoder, predictor, _ = load_checkpoint(path, config, hints)
    if not config.is_action_conditioned:
        raise ValueError(f"{path} is a plain V-JEPA 2 checkpoint (mask-token predictor), not an action-conditioned world model")
    return WorldModel(encoder, predictor)
