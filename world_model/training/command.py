"""`jepa-planner train`: train a world model from pixels, or post-train an AC predictor on a frozen encoder.

    jepa-planner train --data /work/data/sim64 --out runs/demo --steps 3000          # from pixels, EMA targets
    jepa-planner train --mode post-train --model vjepa2-ac-vitg.pt --data DIR --out runs/droid
    jepa-planner train ... --resume                                                   # continue from runs/demo/checkpoint.pt
    jepa-planner train --mode post-train --data LEROBOT_DIR --camera-key observation.images.wrist \
        --action-meaning from-states --out runs/lab                                  # any LeRobot v3.0 dataset

Post-training encodes every training frame once into a latent cache (latent_cache.py) and trains
the predictor from it; `--latent-cache off` runs the frozen encoder on every step instead.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from world_model.config import PRESETS
from world_model.model import WorldModel, load_world_model, resolve_device
from world_model.training.conditioning import standardize_conditioning
from world_model.training.data import ClipDataset, load_episodes
from world_model.training.latent_cache import build_or_load, default_cache_dir
from world_model.training.trainer import MODES, TrainConfig, Trainer

REPO_ROOT = Path(__file__).resolve().parents[2]
NOT_RECORDED = {"resume", "no_progress", "func", "latent_cache"}  # latent_cache: same losses either way
MIN_EPISODES = 2  # options that do not change the trained model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    parser.add_argument("--data", required=True, nargs="+", metavar="FOLDER",
                        help="LeRobot v3.0 dataset folder(s) (from `jepa-planner collect`, or any with a camera and "
                             "an end-effector state); several are trained on together, episodes in the order given")
    parser.add_argument("--camera-key", default=None,
                        help="camera feature to train on (default: observation.image, or the only camera)")
    parser.add_argument("--action-meaning", default=None,
                        choices=("achieved", "commanded-delta", "absolute-pose", "from-states"),
                        help="what the dataset's action column means (required for datasets not recorded by "
                             "jepa-planner; see robot_bridge/EPISODES.md)")
    parser.add_argument("--latent-cache", default="auto",
                        help="post-train: folder of the frozen-encoder latent cache; auto = "
                             "$XDG_CACHE_HOME/jepa-planner/latents; off = encode on every step")
    parser.add_argument("--out", required=True, help="run folder: checkpoint.pt, model.safetensors, loss.png, ...")
    parser.add_argument("--mode", choices=MODES, default=defaults.mode,
                        help="from-pixels: encoder + predictor with an EMA target encoder; "
                             "post-train: frozen encoder, predictor trained from scratch (official DROID recipe)")
    parser.add_argument("--model", default="demo",
                        help="from-pixels: the AC preset whose architecture is initialised randomly, or a "
                             ".safetensors model to continue training; "
                             "post-train: the frozen encoder's source (demo = the embedded model, released .pt, .safetensors)")
    parser.add_argument("--predictor", default=None, metavar="WIDTHxDEPTH|continue",
                        help="post-train: a fresh predictor of this size instead of the source's (e.g. 256x6; "
                             "heads = width / 64, MLP 4 x width); continue: keep training the source's own "
                             "predictor (a longer schedule or new data on a post-trained model)")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--clip-frames", type=int, default=defaults.clip_frames, help="frames per training clip")
    parser.add_argument("--rollout-steps", type=int, default=defaults.rollout_steps,
                        help="auto-regressive steps of the rollout loss (official: 2)")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate")
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    parser.add_argument("--decay-steps", type=int, default=defaults.decay_steps, help="final linear decay to 0")
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--ema-decay", type=float, default=defaults.ema_decay)
    parser.add_argument("--grad-clip", type=float, default=defaults.grad_clip, help="max gradient norm; 0 = off")
    parser.add_argument("--conditioning-init", choices=("standardized", "default"), default="standardized",
                        help="standardized: scale the fresh action/state embeddings to the data's spread "
                             "(see training/conditioning.py); default: the plain transformer init")
    parser.add_argument("--static-fraction", type=float, default=defaults.static_fraction,
                        help="fraction of clips replaced by the arm holding still (zero actions, repeated "
                             "frame), so that 'do nothing' is predicted well; see TrainConfig")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--episodes", type=int, default=None, help="use only the first N episodes")
    parser.add_argument("--validation-fraction", type=float, default=0.05, help="episodes held out for diagnostics")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop (checkpoint + model saved) after this much training time")
    parser.add_argument("--until-step", type=int, default=None,
                        help="stop at this step of the --steps schedule (reproduces a run that --max-minutes ended)")
    parser.add_argument("--log-every", type=int, default=defaults.log_every)
    parser.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    parser.add_argument("--validate-every", type=int, default=defaults.validate_every, help="0 = only at the end")
    parser.add_argument("--validation-clips", type=int, default=defaults.validation_clips,
                        help="clips per diagnostics pass")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        config = TrainConfig(**{field.name: getattr(args, field.name) for field in dataclasses.fields(TrainConfig)})
        predictor_size = parse_predictor_size(args.predictor, config.mode)
    except ValueError as exc:
        print(f"jepa-planner train: {exc}", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    if (out_dir / "checkpoint.pt").exists() and not args.resume:
        print(f"jepa-planner train: {out_dir} already holds a run; pass --resume or choose another --out", file=sys.stderr)
        return 2
    device = resolve_device(args.device)
    try:  # everything about the data is checked before a run folder exists
        episodes = [episode for folder in args.data
                    for episode in load_episodes(folder, None, args.camera_key, args.action_meaning)][:args.episodes]
        dataset = ClipDataset(episodes, config.clip_frames)
        if dataset.episode_count < MIN_EPISODES:
            raise ValueError(f"{dataset.episode_count} episode(s) of at least {config.clip_frames} frames; training "
                             f"needs {MIN_EPISODES} (one is held out for validation)")
        train_set, validation_set = dataset.split(args.validation_fraction, config.seed)
    except (OSError, ValueError, KeyError) as exc:
        print(f"jepa-planner train: {' '.join(args.data)}: {exc}", file=sys.stderr)
        return 2
    torch.manual_seed(config.seed)
    model, fresh_predictor = build_model(config.mode, args.model, config.seed, predictor_size)
    cache_record = None
    if config.mode == "post-train" and args.latent_cache != "off":
        cache_dir = default_cache_dir() if args.latent_cache == "auto" else Path(args.latent_cache)
        latents, cache_record = build_or_load(cache_dir, model.encoder, train_set.frames, device,
                                              torch.bfloat16 if config.bf16 else None)
        train_set.attach_latents(latents)
    if fresh_predictor and args.conditioning_init == "standardized":
        standardize_conditioning(model.predictor, train_set.real_actions(), train_set.states)
    provenance = {
        "command": command_line(args),
        "seed": config.seed,
        "mode": config.mode,
        "model": args.model,
        "data": {"paths": [str(Path(folder).resolve()) for folder in args.data], "episodes": dataset.episode_count,
                 "frames": len(dataset.frames), "fingerprint": fingerprint(dataset),
                 "action_meaning": args.action_meaning or "achieved",
                 "validation_episodes": validation_set.episode_count,
                 "collections": [collection_record(folder) for folder in args.data]},
        "latent_cache": cache_record,
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "host": f"{platform.node()} {platform.machine()} {torch.get_num_threads()} threads, {device}",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    trainer = Trainer(config, model.encoder, model.predictor, train_set, validation_set, out_dir, device,
                      export_world_model, provenance)
    if args.resume and trainer.resume():
        print(f"resuming {out_dir} at step {trainer.step}")
    summary = trainer.fit(show_progress=not args.no_progress)
    print(f"trained {summary['steps']} steps in {summary['wall_time_s']:.0f} s; model: {out_dir / 'model.safetensors'}")
    print(f"validation: prediction L1 {summary['prediction_l1']:.4f} vs copy-last {summary['copy_last_l1']:.4f} "
          f"(ratio {summary['prediction_over_copy_last']:.3f}); probe EE position R^2 {summary['probe_position_r2']:.3f}; "
          f"energy argmin error {100 * summary['landscape_argmin_error_m']:.1f} cm "
          f"(random {100 * summary['landscape_random_error_m']:.1f} cm)")
    return 0


CONTINUE_PREDICTOR = "continue"


def parse_predictor_size(text: str | None, mode: str) -> tuple[int, int] | str | None:
    """`--predictor WIDTHxDEPTH` -> (width, depth), `continue` -> CONTINUE_PREDICTOR; only post-training
    chooses its predictor."""
    if text is None:
        return None
    if mode != "post-train":
        raise ValueError("--predictor chooses the predictor of --mode post-train")
    if text == CONTINUE_PREDICTOR:
        return CONTINUE_PREDICTOR
    width, _, depth = text.lower().partition("x")
    if not (width.isdigit() and depth.isdigit()) or int(width) < 64 or int(width) % 64 or int(depth) < 1:
        raise ValueError(f"--predictor takes WIDTHxDEPTH with a width that is a multiple of 64, e.g. 256x6; got {text!r}")
    return int(width), int(depth)


def build_model(mode: str, source: str, seed: int,
                predictor_size: tuple[int, int] | str | None = None) -> tuple[WorldModel, bool]:
    """(model, whether its predictor is freshly initialised).

    from-pixels: a fresh model of a preset, or a saved model to continue training (fine-tuning);
    post-train: the source's encoder (frozen) and a fresh predictor (of `predictor_size` (width, depth) if
    given), or the source's own predictor when `predictor_size` is CONTINUE_PREDICTOR.
    """
    if mode == "from-pixels":
        if source in PRESETS:
            return WorldModel.from_config(PRESETS[source], seed), True
        loaded = load_world_model(source, device="cpu")
        return WorldModel(loaded.encoder.requires_grad_(True), loaded.predictor.requires_grad_(True)), False
    loaded = load_world_model(source, device="cpu")
    if predictor_size == CONTINUE_PREDICTOR:
        return WorldModel(loaded.encoder.requires_grad_(False), loaded.predictor.requires_grad_(True)), False
    config = loaded.config
    if predictor_size is not None:
        width, depth = predictor_size
        config = dataclasses.replace(config, predictor=dataclasses.replace(
            config.predictor, predictor_embed_dim=width, depth=depth, num_heads=width // 64, mlp_hidden=4 * width))
    fresh = WorldModel.from_config(config, seed)
    return WorldModel(loaded.encoder.requires_grad_(False), fresh.predictor.requires_grad_(True)), True


def export_world_model(path: Path, encoder: torch.nn.Module, predictor: torch.nn.Module, metadata: dict) -> None:
    WorldModel(encoder, predictor).save(path, metadata)


def fingerprint(dataset: ClipDataset) -> str:
    """sha256 of states and actions: identifies the data without hashing every frame."""
    digest = hashlib.sha256()
    digest.update(dataset.states.numpy().tobytes())
    digest.update(dataset.actions.numpy().tobytes())
    digest.update(dataset.frames[:: max(1, len(dataset.frames) // 64)].numpy().tobytes())
    return digest.hexdigest()[:16]


def command_line(args: argparse.Namespace) -> str:
    """The full command with every setting spelt out, so defaults changing later cannot change it."""
    words = ["jepa-planner", "train"]
    for name, value in vars(args).items():
        if name in NOT_RECORDED or value is None or value is False:
            continue
        words.append("--" + name.replace("_", "-"))
        if isinstance(value, list):
            words.extend(str(item) for item in value)
        elif value is not True:
            words.append(str(value))
    return shlex.join(words)


def collection_record(data: str) -> dict | None:
    """How the data was recorded (`jepa-planner collect` stores it in meta/info.json)."""
    info = json.loads((Path(data) / "meta" / "info.json").read_text())
    return info.get("collection")


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "world_model"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
