"""`jepa-planner bench world-model`: encode latency and rollout throughput, KV-cached vs full recompute.

The full recompute (every imagined step re-runs the whole history, as the official planner
does) is the baseline measured in the same run; `cache_speedup` is cached / full throughput.

`--blocks` instead measures loading (seconds, resident memory) and one encoder block and one
predictor block, the unit of cost at ViT-g size. `--write-random PATH` writes a released-layout
checkpoint of random weights for `--preset`'s architecture (e.g. `ac_vit_giant`, 5.3 GB) to load.
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import time
from pathlib import Path

import torch

from .checkpoint import build_modules
from .config import PRESETS
from .model import WorldModel, load_world_model, resolve_device
from .rope import grid_positions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="demo", help="preset name or checkpoint path (default: demo)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="bfloat16 = autocast")
    parser.add_argument("--samples", type=int, default=256, help="candidate action sequences per rollout")
    parser.add_argument("--horizon", type=int, default=2, help="imagined steps per rollout")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement")
    parser.add_argument("--images", type=int, default=8, help="images per encode call")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of the results")
    parser.add_argument(
        "--blocks",
        action="store_true",
        help="measure load time and memory, one encoder block (one image) and one predictor block "
        "(--samples frames of one step) instead of encode and rollout",
    )
    parser.add_argument(
        "--write-random", type=Path, metavar="PATH",
        help="write a released-layout .pt of random weights with --preset's architecture to PATH and exit",
    )


def run(args: argparse.Namespace) -> int:
    if min(args.samples, args.horizon, args.repeats, args.images) < 1:
        print("samples, horizon, repeats and images must be positive")
        return 2
    if args.threads:
        # A CPU shared with other jobs can be faster on fewer threads than cores.
        torch.set_num_threads(args.threads)
    if args.write_random:
        return _write_random(args.preset, args.write_random)
    if args.blocks:
        return _run_blocks(args)
    model = _load(args.preset, args.device, args.dtype)
    if args.horizon > model.max_horizon:
        print(f"horizon {args.horizon} exceeds this model's limit of {model.max_horizon}")
        return 2
    generator = torch.Generator().manual_seed(0)
    size = model.image_size
    images = torch.randint(0, 256, (args.images, size, size, 3), dtype=torch.uint8, generator=generator)
    context = model.encode(images[:1])
    actions = torch.randn(args.samples, args.horizon, 7, generator=generator).mul_(0.05).to(model.device)
    states = torch.randn(args.samples, args.horizon, 7, generator=generator).to(model.device)

    encode_s, cached_s, full_s = _median_seconds(
        [
            lambda: model.encode(images),
            lambda: model.rollout(context, actions, states, cached=True),
            lambda: model.rollout(context, actions, states, cached=False),
        ],
        model.device,
        args.repeats,
    )
    result = {
        "preset": args.preset,
        "device": str(model.device),
        "dtype": str(model.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "samples": args.samples,
        "horizon": args.horizon,
        "tokens_per_frame": model.tokens_per_frame,
        "encode_ms": 1e3 * encode_s / args.images,
        "rollout_ms_cached": 1e3 * cached_s,
        "rollout_ms_full": 1e3 * full_s,
        "rollout_samples_per_s_cached": args.samples / cached_s,
        "rollout_samples_per_s_full": args.samples / full_s,
        "cache_speedup": full_s / cached_s,
    }
    print(f"world model {args.preset} on {result['device']} ({result['dtype']}, {result['threads']} threads), "
          f"{model.tokens_per_frame} tokens/frame")
    print(f"encode:           {result['encode_ms']:9.2f} ms/image (batch {args.images})")
    print(f"rollout cached:   {result['rollout_samples_per_s_cached']:9.0f} samples/s "
          f"({result['rollout_ms_cached']:.1f} ms for {args.samples} x {args.horizon} steps)")
    print(f"rollout full:     {result['rollout_samples_per_s_full']:9.0f} samples/s ({result['rollout_ms_full']:.1f} ms)")
    print(f"cache speedup:    {result['cache_speedup']:9.2f}x")
    if args.json:
        print(json.dumps(result))
    return 0


def _write_random(preset: str, path: Path) -> int:
    """Random N(0, 0.02^2) weights in the released layout (`module.` keys), tensor by tensor."""
    if preset not in PRESETS or not PRESETS[preset].is_action_conditioned:
        print(f"--write-random needs an action-conditioned preset name, got {preset!r}")
        return 2
    with torch.device("meta"):
        encoder, predictor = build_modules(PRESETS[preset])
    generator = torch.Generator().manual_seed(0)
    blob = {
        part: {f"module.{key}": torch.randn(t.shape, generator=generator).mul_(0.02) for key, t in module.state_dict().items()}
        for part, module in (("encoder", encoder), ("predictor", predictor))
    }
    torch.save(blob, path)
    print(f"wrote random {preset} weights to {path} ({path.stat().st_size / 2**30:.2f} GiB)")
    return 0


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS"))


def _run_blocks(args: argparse.Namespace) -> int:
    """Load time and memory, then the median time of one encoder and one predictor block."""
    rss_before = _rss_mb()
    start = time.perf_counter()
    model = _load(args.preset, args.device, args.dtype)
    load_s = time.perf_counter() - start
    rss_loaded = _rss_mb()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    generator = torch.Generator().manual_seed(0)
    encoder, predictor = model.encoder, model.predictor
    dtype = model.predictor.predictor_proj.weight.dtype
    tokens = torch.randn(1, model.tokens_per_frame, model.embed_dim, generator=generator).to(model.device, dtype)
    grid = (1, model.image_size // encoder.config.patch_size, model.image_size // encoder.config.patch_size)
    rope = encoder._rope.get(grid, lambda: grid_positions(*grid), model.device, model.dtype)
    width = predictor.config.predictor_embed_dim
    steps = torch.randn(args.samples, predictor.tokens_per_step, width, generator=generator).to(model.device, dtype)
    step_rope = predictor._frame_rope(0, 1, steps)
    with torch.inference_mode(), model._autocast():
        encoder_s, predictor_s = _median_seconds(
            [lambda: encoder.blocks[0](tokens, rope), lambda: predictor.predictor_blocks[0](steps, step_rope)],
            model.device,
            args.repeats,
        )
    result = {
        "preset": args.preset,
        "device": str(model.device),
        "dtype": str(model.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "load_s": load_s,
        "load_rss_mb": rss_loaded - rss_before,
        "load_peak_rss_mb": peak_mb,
        "encoder_block_ms": 1e3 * encoder_s,
        "encoder_block_tokens": model.tokens_per_frame,
        "predictor_block_ms": 1e3 * predictor_s,
        "predictor_block_tokens": args.samples * predictor.tokens_per_step,
    }
    print(f"world model {args.preset} on {result['device']} ({result['dtype']}, {result['threads']} threads)")
    print(f"load:             {load_s:9.2f} s, resident memory +{result['load_rss_mb']:.0f} MB "
          f"(process peak {peak_mb:.0f} MB)")
    print(f"encoder block:    {result['encoder_block_ms']:9.2f} ms ({model.tokens_per_frame} tokens, one image)")
    print(f"predictor block:  {result['predictor_block_ms']:9.2f} ms ({args.samples} x {predictor.tokens_per_step} tokens)")
    if args.json:
        print(json.dumps(result))
    return 0


def _load(source: str, device: str, dtype: str) -> WorldModel:
    try:
        return load_world_model(source, device=device, dtype=dtype)
    except FileNotFoundError:
        if source != "demo":
            raise
        # Timing does not depend on the weights: an untrained demo architecture measures the same.
        logging.getLogger(__name__).warning("demo weights not trained yet; timing a randomly initialised demo model")
        model = WorldModel.from_config(PRESETS["demo"]).to(resolve_device(device)).eval().requires_grad_(False)
        model.autocast_dtype = torch.bfloat16 if dtype == "bfloat16" else None
        return model


def _median_seconds(calls, device: torch.device, repeats: int) -> list[float]:
    """Median wall time per call. The calls take turns, so load from other processes on a shared
    machine hits the cached and the full rollout alike and their ratio stays meaningful."""
    for call in calls:
        call()  # warm-up: allocator, RoPE tables, masks, kernel selection
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for call, record in zip(calls, times):
            _synchronize(device)
            start = time.perf_counter()
            call()
            _synchronize(device)
            record.append(time.perf_counter() - start)
    return [statistics.median(record) for record in times]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
