"""`jepa-planner bench batch`: plans per second of N sessions planned together (`step_together`:
one batched rollout per iteration for all of them) vs one after another (`controller.step` in a
loop), with the same model, settings, goals and noise, so the two make the same plans (printed as
a check). This isolates the batching gain from the service (HTTP, bridge, scheduling).

On a CPU the arithmetic per plan is fixed, so batching gains only what it saves per call (Python
and kernel-launch overhead, small matrix products): much for a tiny model, little for a large one.
"""
from __future__ import annotations

import argparse
import json

import torch

from planner.batch import step_together
from planner.bench import load_bench_model, time_alternating
from planner.config import PlannerConfig
from planner.controller import RecedingHorizonController
from planner.noise import SeededNoise


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="demo", help="world model preset or weights file (default: demo; random init if it has no weights)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--sessions", default="1,4,16,64", help="comma-separated session counts (default %(default)s)")
    parser.add_argument("--samples", type=int, default=64, help="samples per session (default %(default)s)")
    parser.add_argument("--horizon", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--topk", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per way (median reported)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--bf16", action="store_true", help="run the predictor under bf16 autocast")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def session_inputs(model, count: int) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Per session: an observed latent, a goal latent (normalised random frames) and a pose."""
    generator = torch.Generator().manual_seed(0)
    frames = torch.randn(2 * count, model.tokens_per_frame, model.embed_dim, generator=generator)
    frames = torch.nn.functional.layer_norm(frames, (model.embed_dim,)).to(model.device)
    offsets = torch.rand(count, 3, generator=generator) * 0.1
    states = [torch.tensor([0.5 + dx, dy - 0.05, 0.3 + dz, 3.1, 0.0, 0.0, 0.2]) for dx, dy, dz in offsets.tolist()]
    return list(frames[:count]), list(frames[count:]), states


def measure(model, config: PlannerConfig, count: int, repeats: int) -> dict:
    latents, goals, states = session_inputs(model, count)

    def controllers() -> list[RecedingHorizonController]:
        return [RecedingHorizonController(model, config, goal, SeededNoise(seed, model.device)) for seed, goal in enumerate(goals)]

    alone, together = controllers(), controllers()
    timed = time_alternating({
        "loop": lambda: [controller.step(z, s) for controller, z, s in zip(alone, latents, states)],
        "together": lambda: step_together(together, latents, states),
    }, repeats, model.device)
    (loop_s, loop_steps), (together_s, together_steps) = timed["loop"], timed["together"]
    # Both ways ran the same number of steps from the same noise: their latest plans must agree.
    difference = max(float((a.plan - b.plan).abs().max()) for a, b in zip(loop_steps, together_steps))
    return {
        "sessions": count, "loop_s": loop_s, "together_s": together_s,
        "loop_plans_per_s": count / loop_s, "plans_per_s": count / together_s, "speedup": loop_s / together_s,
        "plans_max_abs_diff": difference,
    }


def run(args: argparse.Namespace) -> int:
    try:
        counts = [int(part) for part in args.sessions.split(",") if part.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        print(f"bench batch: --sessions must be positive integers separated by commas, got {args.sessions!r}")
        return 2
    config = PlannerConfig(horizon=args.horizon, samples=args.samples, iterations=args.iterations,
                           topk=min(args.topk, args.samples), autocast_bf16=args.bf16)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, origin = load_bench_model(args.preset, args.device)
    print(f"model {args.preset} ({origin}) on {model.device}, {torch.get_num_threads()} threads, "
          f"{model.tokens_per_frame} tokens/frame")
    print(f"CEM per session: {config.samples} samples, horizon {config.horizon}, {config.iterations} iterations, "
          f"top-{config.topk}, bf16={config.autocast_bf16}")
    rows = []
    for count in counts:
        row = measure(model, config, count, args.repeats)
        rows.append(row)
        print(f"{count:4d} sessions: loop of controller.step {row['loop_plans_per_s']:8.1f} plans/s, "
              f"step_together {row['plans_per_s']:8.1f} plans/s, {row['speedup']:.2f}x; "
              f"plans agree to {row['plans_max_abs_diff']:.1e}")
    if args.json:
        print(json.dumps({
            "preset": args.preset, "weights": origin, "device": str(model.device), "threads": torch.get_num_threads(),
            "samples": config.samples, "horizon": config.horizon, "iterations": config.iterations, "topk": config.topk,
            "bf16": config.autocast_bf16, "repeats": args.repeats, "results": rows,
        }))
    return 0
