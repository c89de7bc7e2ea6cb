"""The training loop: seeded, resumable, periodic checkpoints and model exports, loss-curve PNG.

Two modes share one loop:
* ``post-train``: the encoder is frozen and only the AC predictor learns (the official DROID
  recipe, usable on top of the released ViT-g);
* ``from-pixels``: encoder and predictor learn together; targets come from an EMA copy of the
  encoder (see ema.py for why), and that EMA encoder is the one exported.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from world_model.training import diagnostics
from world_model.training.data import ClipDataset, Clips
from world_model.training.ema import ema_update, make_target
from world_model.training.encoding import encode_frames
from world_model.training.losses import PredictorLosses, predictor_losses
from world_model.training.plots import plot_losses
from world_model.training.schedule import adamw_parameter_groups, warmup_stable_decay

MODES = ("from-pixels", "post-train")
CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.safetensors"


@dataclass
class TrainConfig:
    mode: str = "from-pixels"
    steps: int = 3000
    batch_size: int = 32
    clip_frames: int = 4
    rollout_steps: int = 2
    lr: float = 5e-4
    warmup_steps: int = 200
    decay_steps: int = 600
    weight_decay: float = 0.04
    ema_decay: float = 0.996
    grad_clip: float = 1.0
    # Exploration data almost never holds still, so a fresh model predicts "do nothing" badly, and
    # a planner at its goal then drifts. Holding still is a real transition of a deterministic
    # scene (same frame, zero action, same state), so this fraction of each batch is made of them.
    static_fraction: float = 0.0
    seed: int = 0
    bf16: bool = False
    log_every: int = 25
    checkpoint_every: int = 250
    validate_every: int = 500
    validation_clips: int = 256  # clips per diagnostics pass (the periodic passes use half)
    max_minutes: float | None = None
    until_step: int | None = None  # stop (checkpoint + model) at this step of the schedule, e.g. to
                                   # reproduce a run that `max_minutes` ended early

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be positive")
        if not 0.0 <= self.static_fraction < 1.0:
            raise ValueError(f"static_fraction must be in [0, 1), got {self.static_fraction}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.warmup_steps + self.decay_steps > self.steps:
            raise ValueError(f"warmup_steps + decay_steps ({self.warmup_steps}+{self.decay_steps}) exceed steps ({self.steps})")


# export(path, encoder, predictor, metadata): atomically writes a loadable model (safetensors + architecture record).
ExportFn = Callable[[Path, torch.nn.Module, torch.nn.Module, dict], None]


class Trainer:
    def __init__(self, config: TrainConfig, encoder: torch.nn.Module, predictor: torch.nn.Module,
                 train_set: ClipDataset, validation_set: ClipDataset, out_dir: Path, device: torch.device,
                 export: ExportFn, provenance: dict):
        self.config = config
        self.device = device
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.train_set, self.validation_set = train_set, validation_set
        self.export = export
        self.provenance = provenance
        # Training from cached latents never runs the frozen encoder: it stays in host memory and
        # visits the device only to validate, so the device holds the predictor and its optimiser.
        self.encoder_parked = config.mode == "post-train" and train_set.latents is not None
        self.encoder = encoder.to("cpu") if self.encoder_parked else encoder.to(device)
        self.predictor = predictor.to(device).train()
        if config.mode == "from-pixels":
            self.encoder.train().requires_grad_(True)
            self.target_encoder = make_target(self.encoder)
            trained = [self.encoder, self.predictor]
        else:
            self.encoder.eval().requires_grad_(False)
            self.target_encoder = None
            trained = [self.predictor]
        self.parameters = [p for module in trained for p in module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(adamw_parameter_groups(trained, config.weight_decay),
                                           lr=config.lr, betas=(0.9, 0.999), eps=1e-8)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.elapsed_s = 0.0
        self.history: list[dict] = []
        self.validation: list[dict] = []

    @property
    def exported_encoder(self) -> torch.nn.Module:
        return self.target_encoder if self.target_encoder is not None else self.encoder

    def _autocast(self):
        if self.config.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.config
        lr = warmup_stable_decay(self.step, config.steps, config.lr, config.warmup_steps, config.decay_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        clips = self.train_set.sample(config.batch_size, self.generator)
        if config.static_fraction > 0:
            clips = clips.held_still(torch.rand(config.batch_size, generator=self.generator) < config.static_fraction)
        losses = self.batch_losses(clips.to(self.device))
        self.optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.parameters, config.grad_clip)
        self.optimizer.step()
        if self.target_encoder is not None:
            ema_update(self.target_encoder, self.encoder, config.ema_decay)
        self.step += 1
        return losses.teacher_forcing.detach(), losses.rollout.detach()

    def batch_losses(self, clips: Clips) -> PredictorLosses:
        """The training losses of one batch (on the device). Clips with cached latents (post-train
        only: the encoder is frozen) skip the encoder; otherwise their frames are encoded here."""
        with self._autocast():
            if clips.latents is not None:
                if self.target_encoder is not None:
                    raise ValueError("cached latents need a frozen encoder (post-train); from-pixels trains it")
                context = targets = clips.latents
            elif self.target_encoder is not None:
                context = encode_frames(self.encoder, clips.frames)
                with torch.no_grad():
                    targets = encode_frames(self.target_encoder, clips.frames)
            else:
                with torch.no_grad():
                    context = targets = encode_frames(self.encoder, clips.frames)
            return predictor_losses(self.predictor, context, targets, clips.actions, clips.states,
                                    self.config.rollout_steps)

    def fit(self, show_progress: bool = True) -> dict:
        config = self.config
        started = time.monotonic() - self.elapsed_s
        running = torch.zeros(2, device=self.device)
        since_log = 0
        stopped_early = False
        bar = tqdm(total=config.steps, initial=self.step, disable=not show_progress, desc=config.mode,
                   dynamic_ncols=True)
        while self.step < config.steps:
            teacher_forcing, rollout = self.train_step()
            running += torch.stack([teacher_forcing, rollout])  # stays on device: no sync per step
            since_log += 1
            bar.update(1)
            self.elapsed_s = time.monotonic() - started
            if self.step % config.log_every == 0 or self.step == config.steps:
                mean = (running / since_log).tolist()
                self.history.append({"step": self.step, "loss": mean[0] + mean[1], "teacher_forcing": mean[0],
                                     "rollout": mean[1], "lr": self.optimizer.param_groups[0]["lr"],
                                     "elapsed_s": round(self.elapsed_s, 1)})
                running.zero_()
                since_log = 0
                bar.set_postfix(loss=f"{mean[0] + mean[1]:.4f}", tf=f"{mean[0]:.4f}")
                if not show_progress:  # a log file still gets one line per logging interval
                    print(f"step {self.step}/{config.steps} loss {mean[0] + mean[1]:.4f} (teacher forcing "
                          f"{mean[0]:.4f}, rollout {mean[1]:.4f}) lr {self.history[-1]['lr']:.2e} "
                          f"{self.elapsed_s:.0f} s", flush=True)
            if config.validate_every and self.step % config.validate_every == 0:
                self.validate(clip_count=max(2, config.validation_clips // 2))
            out_of_time = self.step < config.steps and (
                (config.max_minutes is not None and self.elapsed_s > 60 * config.max_minutes)
                or (config.until_step is not None and self.step >= config.until_step))
            if self.step % config.checkpoint_every == 0 or out_of_time:
                self.save_checkpoint()
            if out_of_time:
                stopped_early = True
                break
        bar.close()
        final = self.validate(clip_count=config.validation_clips)
        self.save_checkpoint(final={"stopped_early": stopped_early, "validation": final})
        return {"steps": self.step, "wall_time_s": round(self.elapsed_s, 1), "stopped_early": stopped_early,
                **final}

    def validate(self, clip_count: int) -> dict:
        self.encoder.eval()
        self.predictor.eval()
        if self.encoder_parked:
            self.encoder.to(self.device)
        try:
            with self._autocast():
                result = diagnostics.measure(self.exported_encoder, self.predictor, self.validation_set, self.device,
                                             clip_count=clip_count, landscape_transitions=min(32, clip_count),
                                             seed=self.config.seed)
        finally:
            if self.encoder_parked:
                self.encoder.to("cpu")
        self.predictor.train()
        if self.target_encoder is not None:
            self.encoder.train()
        self.validation.append({"step": self.step, **result})
        tqdm.write(f"step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
        return result

    def state_dict(self) -> dict:
        return {
            "config": dataclasses.asdict(self.config),
            "step": self.step,
            "elapsed_s": self.elapsed_s,
            "encoder": self.encoder.state_dict(),
            "target_encoder": None if self.target_encoder is None else self.target_encoder.state_dict(),
            "predictor": self.predictor.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "history": self.history,
            "validation": self.validation,
        }

    def load_state_dict(self, state: dict) -> None:
        saved = dict(state["config"])
        current = dataclasses.asdict(self.config)
        # The schedule and the data stream must match, or "resume" silently trains something else.
        for key in ("mode", "steps", "batch_size", "clip_frames", "rollout_steps", "lr", "warmup_steps",
                    "decay_steps", "seed"):
            if saved[key] != current[key]:
                raise ValueError(f"cannot resume: checkpoint has {key}={saved[key]!r}, this run {current[key]!r}")
        self.encoder.load_state_dict(state["encoder"])
        if self.target_encoder is not None:
            self.target_encoder.load_state_dict(state["target_encoder"])
        self.predictor.load_state_dict(state["predictor"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.step = state["step"]
        self.elapsed_s = state["elapsed_s"]
        self.history = state["history"]
        self.validation = state["validation"]

    def resume(self) -> bool:
        path = self.out_dir / CHECKPOINT_NAME
        if not path.exists():
            return False
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=False))
        return True

    def save_checkpoint(self, final: dict | None = None) -> None:
        """Checkpoint for --resume, plus a usable model and the loss curve, all written atomically."""
        path = self.out_dir / CHECKPOINT_NAME
        temporary = path.with_suffix(".tmp")
        torch.save(self.state_dict(), temporary)
        os.replace(temporary, path)
        provenance = {**self.provenance, "steps": self.step, "wall_time_s": round(self.elapsed_s, 1),
                      "complete": final is not None, "train_config": dataclasses.asdict(self.config)}
        if final is not None:
            provenance.update(final)
        self.export(self.out_dir / MODEL_NAME, self.exported_encoder, self.predictor, provenance)
        _write_json(self.out_dir / "provenance.json", provenance)
        _write_json(self.out_dir / "history.json", {"train": self.history, "validation": self.validation})
        if self.history:
            plot_losses(self.history, self.validation, self.out_dir / "loss.png")


def _write_json(path: Path, payload: dict) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(temporary, path)
