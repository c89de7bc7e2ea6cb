"""`jepa-planner bench world-model`: encode latency and rollout throughput, KV-cached vs full recompute.

The full recompute (every imagined step re-runs the whole history, as the official planner
does) is the baseline measured in the same run; `cache_speedup` is cached / full throughput.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import time

import torch

from .config import PRESETS
from .model import WorldModel, load_world_model, resolve_device


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


def run(args: argparse.Namespace) -> int:
    if min(args.samples, args.horizon, args.repeats, args.images) < 1:
        print("samples, horizon, repeats and images must be positive")
        return 2
    if args.threads:
        # A CPU shared with other jobs can be faster on fewer threads than cores.
        torch.set_num_threads(args.threads)
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
