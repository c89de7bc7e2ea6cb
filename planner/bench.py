"""`jepa-planner bench plan`: seconds per planned action, reference-style baseline vs ours.

Both planners run CEM with the same config, noise and inputs in the same process, so their
plans must agree (printed as a check). The baseline plans the way the official code does: at
every imagined step it reruns the predictor over the whole history (frames 0..h), and it chains
poses one sample at a time on the CPU. Ours samples the whole horizon at once, chains poses in
one batched call on the model's device and runs one KV-cached rollout for all samples.

Predictor FLOPs are counted analytically for the cached rollout (the useful work; the baseline's
recomputation is not credited), and compared with the matmul throughput measured in this run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from planner.cem import CEM
from planner.config import PlannerConfig
from planner.noise import SeededNoise
from planner.objective import GoalObjective
from planner.pose import compose_pose
from planner.search import (
    Plan,
    SearchState,
    clip_to_limits,
    final_actions,
    initial_state,
    momentum_weights,
    to_actions,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="demo", help="world model preset or weights file (default: demo; random init if it has no weights)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--horizon", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--topk", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="timed plans per planner (median reported)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--bf16", action="store_true", help="ours under bf16 autocast (the baseline stays float32)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="time only ours (the full-recompute baseline of a giant model takes minutes)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def load_bench_model(source: str, device: str):
    """The named model and where its weights came from; presets other than "demo" have none and are
    randomly initialised, which is fine for timing (the arithmetic does not depend on the values)."""
    from world_model import PRESETS, load_world_model

    origin = "random init (preset without weights)" if source in PRESETS and source != "demo" else "loaded"
    return load_world_model(source, device=device), origin


def predictor_flops(config, samples: int, horizon: int) -> float:
    """FLOPs of one cached rollout: per step only the new frame's N+2 tokens are computed."""
    n, d, width, hidden = config.tokens_per_frame, config.embed_dim, config.predictor_embed_dim, config.mlp_hidden
    new_tokens = n + 2
    total = 0.0
    for h in range(horizon):
        context = (h + 1) * new_tokens
        per_layer = 2 * new_tokens * width * (3 * width + width + 2 * hidden)  # qkv, proj, mlp
        per_layer += 2 * 2 * new_tokens * context * width  # q @ k^T and attn @ v
        embed = 2 * n * d * width + 2 * 2 * config.action_dim * width
        readout = 2 * n * width * d
        total += config.depth * per_layer + embed + readout
    return samples * total


def measure_matmul_gflops(device: torch.device, predictor_config, rows: int, bf16: bool = False, repeats: int = 10) -> float:
    """The device's peak dense-product throughput: the best of a 2048^3 matmul and of the
    predictor's own linear shapes (rows x width x hidden) run through the predictor's code path
    (oneDNN on CPU), in the precision ours computes in. Best of `repeats`, so a shared machine's
    load lowers it less than it lowers the (median) planning time: the peak fraction errs low."""
    from world_model.layers import linear

    width, hidden = predictor_config.predictor_embed_dim, predictor_config.mlp_hidden
    square = 2048
    a = torch.randn(square, square, device=device)
    b = torch.randn(square, square, device=device)
    cases = [(2 * square**3, lambda: a @ b)]
    for fan_in, fan_out in ((width, hidden), (hidden, width)):
        layer = torch.nn.Linear(fan_in, fan_out, device=device).requires_grad_(False)
        x = torch.randn(rows, fan_in, device=device)
        cases.append((2 * rows * fan_in * fan_out, lambda layer=layer, x=x: linear(layer, x)))
    best_gflops = 0.0
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for flops, product in cases:
            product()  # warm-up: kernel selection
            for _ in range(repeats):
                _sync(device)
                started = time.perf_counter()
                product()
                _sync(device)
                best_gflops = max(best_gflops, flops / (time.perf_counter() - started) / 1e9)
    return best_gflops


class ReferenceStylePlanner:
    """CEM as the official code runs it: per-step full recompute, per-sample CPU pose chaining."""

    def __init__(self, config: PlannerConfig, noise: SeededNoise):
        self.config = config
        self.noise = noise

    @torch.inference_mode()
    def solve(self, model, context: torch.Tensor, state: torch.Tensor, goal: torch.Tensor) -> Plan:
        from world_model.preprocessing import normalize_latents

        config, device = self.config, model.device
        n = model.tokens_per_frame
        search = initial_state(config, device)
        mean, std = search.mean, search.std
        mean_momentum, std_momentum = momentum_weights(config, device)
        iteration_energies = []
        for _ in range(config.iterations):
            noise = self.noise.standard_normal(config.samples, config.horizon, device)
            history = context.to(device).expand(config.samples, -1, -1)
            poses = [[state.cpu()] * config.samples]
            steps = []
            for h in range(config.horizon):
                steps.append(clip_to_limits(mean[h] + std[h] * noise[:, h], config.maxnorm))
                actions = to_actions(torch.stack(steps, dim=1))
                states = torch.stack([torch.stack(p) for p in zip(*poses)]).to(device)
                frame = normalize_latents(model.predictor(history, actions, states)[:, -n:])
                history = torch.cat((history, frame), dim=1)
                step_actions = actions[:, -1].cpu()
                poses.append([compose_pose(poses[-1][s], step_actions[s]) for s in range(config.samples)])
            energies = (history[:, -n:] - goal.to(device)).abs().mean(dim=(-2, -1))
            iteration_energies.append(energies)
            candidates = torch.stack(steps, dim=1)
            elites = candidates[torch.topk(energies, config.topk, largest=False).indices]
            mean = (1 - mean_momentum) * elites.mean(dim=0) + mean_momentum * mean
            std = (1 - std_momentum) * elites.std(dim=0, unbiased=True) + std_momentum * std
        return Plan(final_actions(mean), energies.min(), SearchState(mean, std), iteration_energies)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_alternating(planners: dict, repeats: int, device: torch.device) -> dict[str, tuple[float, Plan]]:
    """Median seconds per plan of each planner, runs interleaved so load changes hit both alike."""
    for plan_once in planners.values():
        plan_once()  # warm-up: allocator, kernels, lazy tables
    times = {name: [] for name in planners}
    plans = {}
    for _ in range(repeats):
        for name, plan_once in planners.items():
            _sync(device)
            started = time.perf_counter()
            plans[name] = plan_once()
            _sync(device)
            times[name].append(time.perf_counter() - started)
    return {name: (statistics.median(times[name]), plans[name]) for name in planners}


def run(args: argparse.Namespace) -> int:
    config = PlannerConfig(
        horizon=args.horizon, samples=args.samples, iterations=args.iterations, topk=args.topk, autocast_bf16=args.bf16
    )
    if args.threads:
        # On a CPU shared with other jobs, fewer threads than cores can be faster: every op's
        # parallel region waits for its slowest (preempted) thread.
        torch.set_num_threads(args.threads)
    model, origin = load_bench_model(args.preset, args.device)
    device = model.device
    generator = torch.Generator().manual_seed(0)
    frames = torch.randn(2, model.tokens_per_frame, model.embed_dim, generator=generator)
    context, goal = torch.nn.functional.layer_norm(frames, (model.embed_dim,)).to(device).unbind(0)
    state = torch.tensor([0.58, -0.002, 0.25, -3.07, 0.03, -1.91, 0.5])

    def ours():
        objective = GoalObjective(model, context, state, goal, autocast_bf16=config.autocast_bf16, max_batch=config.max_batch)
        return CEM(config, SeededNoise(0, device)).solve(objective)

    def baseline():
        return ReferenceStylePlanner(config, SeededNoise(0, device)).solve(model, context[None], state, goal[None])

    planners = {"ours": ours} if args.no_baseline else {"baseline": baseline, "ours": ours}
    timed = time_alternating(planners, args.repeats, device)
    ours_s, our_plan = timed["ours"]
    baseline_s, baseline_plan = timed.get("baseline", (None, None))
    flops = config.iterations * predictor_flops(model.predictor.config, config.samples, config.horizon)
    rows = config.samples * (model.tokens_per_frame + 2)
    matmul = measure_matmul_gflops(device, model.predictor.config, rows, bf16=config.autocast_bf16)
    predictor_gflops = flops / ours_s / 1e9
    imagined = config.iterations * config.samples * config.horizon
    result = {
        "preset": args.preset,
        "weights": origin,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "samples": config.samples,
        "horizon": config.horizon,
        "iterations": config.iterations,
        "topk": config.topk,
        "bf16": config.autocast_bf16,
        "tokens_per_frame": model.tokens_per_frame,
        "baseline_s_per_action": baseline_s,
        "s_per_action": ours_s,
        "speedup": None,
        "baseline_imagined_frames_per_s": None,
        "imagined_frames_per_s": imagined / ours_s,
        "predictor_gflop_per_action": flops / 1e9,
        "predictor_gflops": predictor_gflops,
        "matmul_gflops": matmul,
        "peak_fraction": predictor_gflops / matmul,
        "first_iteration_energy_max_abs_diff": None,
        "plans_max_abs_diff": None,
    }
    if baseline_plan is not None:
        result.update({
            "speedup": baseline_s / ours_s,
            "baseline_imagined_frames_per_s": imagined / baseline_s,
            # Same noise, so the first iteration scores identical candidates: the energies must agree.
            # Later iterations may diverge where a random model's energies are near-ties in the top-k.
            "first_iteration_energy_max_abs_diff": float(
                (baseline_plan.iteration_energies[0] - our_plan.iteration_energies[0]).abs().max()
            ),
            "plans_max_abs_diff": float((baseline_plan.actions - our_plan.actions).abs().max()),
        })
    print(f"model {args.preset} ({origin}) on {device}, {torch.get_num_threads()} threads, {model.tokens_per_frame} tokens/frame")
    print(f"CEM: {config.samples} samples, horizon {config.horizon}, {config.iterations} iterations, top-{config.topk}, bf16={config.autocast_bf16}")
    if baseline_plan is not None:
        print(f"baseline (full recompute, per-sample CPU poses): {baseline_s:.3f} s/action, {result['baseline_imagined_frames_per_s']:.0f} imagined frames/s")
    print(f"ours (one batched KV-cached rollout):             {ours_s:.3f} s/action, {result['imagined_frames_per_s']:.0f} imagined frames/s")
    if baseline_plan is not None:
        print(
            f"speedup {result['speedup']:.1f}x; same-candidate energies agree to {result['first_iteration_energy_max_abs_diff']:.1e}, "
            f"plans to {result['plans_max_abs_diff']:.1e}"
        )
    print(
        f"predictor {predictor_gflops:.1f} GFLOP/s ({flops / 1e9:.2f} GFLOP/action) vs matmul {matmul:.1f} GFLOP/s "
        f"= {100 * result['peak_fraction']:.0f}% of peak ({'bf16' if config.autocast_bf16 else 'float32'})"
    )
    if args.json:
        print(json.dumps(result))
    return 0
