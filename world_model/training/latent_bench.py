"""`jepa-planner bench post-train`: post-training steps/s and peak memory with and without the latent cache.

Steps/s: one process trains the same model twice, from frames and from cached latents, alternating
one step of each, so a shared machine's changing load hits both alike. Peak memory: each variant
then runs alone in a fresh process, so its peak is its own (CUDA peak allocated on a GPU, peak
resident set size on a CPU). Random weights and random frames are enough
for speed. Besides the measured models, it estimates the released ViT-g AC model from FLOPs: the
share of a step the frozen encoder takes is what the cache saves (the estimate is checked against
the measured models, whose FLOP shares it prints next to their measured speed-ups).

    jepa-planner bench post-train                        # demo model and a ViT-S-sized AC model, CPU, 1 thread
    jepa-planner bench post-train --models demo --steps 20 --json out.json
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from world_model.config import PRESETS, EncoderConfig, ModelConfig, PredictorConfig

# A ViT-S-sized encoder at 128 px (64 tokens per frame) with a 6-layer predictor: ~10x the demo model.
BENCH_MODELS: dict[str, ModelConfig] = {
    "demo": PRESETS["demo"],
    "ac_vit_small_128": ModelConfig(
        EncoderConfig(embed_dim=384, depth=12, num_heads=6, mlp_hidden=1536, img_size=128),
        PredictorConfig(embed_dim=384, predictor_embed_dim=256, depth=6, num_heads=4, mlp_hidden=1024,
                        img_size=128, num_frames=16),
    ),
}


def transformer_flops(width: int, depth: int, mlp_hidden: int, tokens: int) -> float:
    """Forward multiply-adds x2 of `depth` pre-norm blocks over `tokens` tokens (attention included)."""
    per_token = 2 * (4 * width * width + 2 * width * mlp_hidden)
    attention = 2 * 2 * tokens * width
    return depth * tokens * (per_token + attention)


def step_flops(config: ModelConfig, batch: int, clip_frames: int, rollout_steps: int) -> dict[str, float]:
    """FLOPs of one post-training step: encoder forward on every frame vs predictor forward + backward."""
    encoder, predictor = config.encoder, config.predictor
    tokens = encoder.tokens_per_frame
    encode = batch * clip_frames * transformer_flops(encoder.embed_dim, encoder.depth, encoder.mlp_hidden, tokens)
    per_frame = tokens + 2  # action and state tokens
    predict = 0.0
    for frames in [clip_frames - 1] + list(range(2, rollout_steps + 1)):  # teacher forcing, then each rollout step
        predict += batch * transformer_flops(predictor.predictor_embed_dim, predictor.depth, predictor.mlp_hidden,
                                             frames * per_frame)
    return {"encoder": encode, "predictor_forward_backward": 3 * predict}


def _synthetic_dataset(config: ModelConfig, episodes: int, length: int, clip_frames: int, seed: int):
    from world_model.training.data import ClipDataset

    rng = np.random.default_rng(seed)
    size = config.encoder.img_size
    data = []
    for _ in range(episodes):
        frames = rng.integers(0, 256, (length, size, size, 3), dtype=np.uint8)
        states = np.cumsum(rng.normal(0, 0.01, (length, 7)), axis=0).astype(np.float32)
        data.append((frames, states, np.diff(states, axis=0)))
    return ClipDataset(data, clip_frames)


def _build_trainer(name: str, cached: bool, options: dict, folder: Path):
    """A post-training Trainer on synthetic data; with `cached`, on latents from a fresh store."""
    from world_model.model import WorldModel, resolve_device
    from world_model.training.latent_cache import build_or_load
    from world_model.training.trainer import TrainConfig, Trainer

    device = resolve_device(options["device"])
    config = BENCH_MODELS[name]
    dataset = _synthetic_dataset(config, options["episodes"], options["length"], options["clip_frames"], 0)
    model = WorldModel.from_config(config, seed=0)
    train = TrainConfig(mode="post-train", steps=options["steps"] + 2, batch_size=options["batch_size"],
                        clip_frames=options["clip_frames"], warmup_steps=1, decay_steps=1, validate_every=0,
                        bf16=options["bf16"], seed=0)
    cache_seconds = None
    if cached:
        started = time.perf_counter()
        latents, _ = build_or_load(folder / f"cache-{name}", model.encoder, dataset.frames, device,
                                   torch.bfloat16 if options["bf16"] else None, log=lambda *_: None)
        dataset.attach_latents(latents)
        cache_seconds = time.perf_counter() - started
    trainer = Trainer(train, model.encoder, model.predictor, dataset, dataset, folder / f"run-{cached}", device,
                      lambda *args: None, {})
    return trainer, device, cache_seconds


def _timed_step(trainer, device) -> float:
    started = time.perf_counter()
    trainer.train_step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def _interleaved_speed(name: str, options: dict, queue) -> None:
    """Runs in its own process: steps/s from frames and from latents, one step of each in turn."""
    torch.set_num_threads(options["threads"])
    with tempfile.TemporaryDirectory() as folder:
        pairs = [_build_trainer(name, cached, options, Path(folder)) for cached in (False, True)]
        seconds = [0.0, 0.0]
        for step in range(options["steps"] + 1):
            for index, (trainer, device, _) in enumerate(pairs):
                elapsed = _timed_step(trainer, device)
                if step:  # the first round warms up
                    seconds[index] += elapsed
    queue.put({"uncached_steps_per_s": options["steps"] / seconds[0], "cached_steps_per_s": options["steps"] / seconds[1],
               "cache_build_s": pairs[1][2]})


def _measure(name: str, cached: bool, options: dict, queue) -> None:
    """Runs in its own process: build, warm up, run a few training steps alone, report peak memory."""
    torch.set_num_threads(options["threads"])
    with tempfile.TemporaryDirectory() as folder:
        trainer, device, cache_seconds = _build_trainer(name, cached, options, Path(folder))
        _timed_step(trainer, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(2):
            _timed_step(trainer, device)
    result = {"model": name, "latent_cache": cached, "cache_build_s": cache_seconds,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        result["peak_cuda_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    queue.put(result)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default=",".join(BENCH_MODELS), help=f"comma list of {list(BENCH_MODELS)}")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per measurement")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--clip-frames", type=int, default=4)
    parser.add_argument("--episodes", type=int, default=8, help="synthetic episodes in the dataset")
    parser.add_argument("--length", type=int, default=12, help="frames per synthetic episode")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: a shared machine)")
    parser.add_argument("--json", type=Path, help="also write the results here")


def run(args: argparse.Namespace) -> int:
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = [name for name in names if name not in BENCH_MODELS]
    if unknown or args.steps < 1:
        print(f"bench post-train: unknown models {unknown} (have {list(BENCH_MODELS)}) or --steps < 1", file=sys.stderr)
        return 2
    options = {key: getattr(args, key) for key in ("steps", "batch_size", "clip_frames", "episodes", "length",
                                                   "device", "bf16", "threads")}
    context = multiprocessing.get_context("spawn")
    results = []
    for name in names:
        flops = step_flops(BENCH_MODELS[name], args.batch_size, args.clip_frames, 2)
        share = flops["encoder"] / sum(flops.values())
        speed = _in_process(context, _interleaved_speed, name, options)
        for cached in (False, True):
            result = _in_process(context, _measure, name, cached, options)
            result["steps_per_s"] = speed["cached_steps_per_s" if cached else "uncached_steps_per_s"]
            result["encoder_flop_share"] = share
            results.append(result)
            print(f"{name:18s} cache {'on ' if cached else 'off'}  {result['steps_per_s']:7.3f} steps/s  "
                  f"peak RSS {result['peak_rss_mb']:7.0f} MB"
                  + (f"  peak CUDA {result['peak_cuda_allocated_mb']:.0f} MB" if "peak_cuda_allocated_mb" in result else "")
                  + (f"  (cache built in {speed['cache_build_s']:.1f} s)" if cached else ""), flush=True)
        print(f"{name:18s} speed-up {speed['cached_steps_per_s'] / speed['uncached_steps_per_s']:.2f}x measured; "
              f"FLOP model predicts {1 / (1 - share):.2f}x (encoder share {100 * share:.0f}%)")
    giant = step_flops(PRESETS["ac_vit_giant"], args.batch_size, args.clip_frames, 2)
    share = giant["encoder"] / sum(giant.values())
    encoder_parameters = _encoder_parameters(PRESETS["ac_vit_giant"])
    estimate = {"model": "ac_vit_giant (estimate)", "encoder_flop_share": share, "speedup_estimate": 1 / (1 - share),
                "encoder_weights_gb_fp32": 4 * encoder_parameters / 1e9,
                "encoder_weights_gb_bf16": 2 * encoder_parameters / 1e9,
                "latent_mb_per_frame_fp32": PRESETS["ac_vit_giant"].encoder.tokens_per_frame * 1408 * 4 / 2**20}
    print(f"ac_vit_giant (estimate): encoder {100 * share:.0f}% of a step's FLOPs at batch {args.batch_size} x "
          f"{args.clip_frames} frames -> ~{estimate['speedup_estimate']:.1f}x steps/s with the cache; the frozen "
          f"encoder's {encoder_parameters / 1e9:.2f} B parameters ({estimate['encoder_weights_gb_bf16']:.1f} GB bf16) "
          f"and its activations leave the step; the store costs {estimate['latent_mb_per_frame_fp32']:.2f} MB per frame")
    if args.json:
        args.json.write_text(json.dumps({"options": options, "results": results, "vit_giant_estimate": estimate},
                                        indent=2))
    return 0


def _in_process(context, target, *args):
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def _encoder_parameters(config: ModelConfig) -> int:
    encoder = config.encoder
    per_block = 4 * encoder.embed_dim ** 2 + 2 * encoder.embed_dim * encoder.mlp_hidden
    patch = 3 * encoder.tubelet_size * encoder.patch_size ** 2 * encoder.embed_dim
    return encoder.depth * per_block + patch
