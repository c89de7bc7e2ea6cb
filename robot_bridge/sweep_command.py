"""`jepa-planner eval-sweep`: quality per compute, success rate against seconds per action.

A client of the service like `jepa-planner eval` (whose harness runs every cell): it starts one
`jepa-planner serve` (or uses `--http`/`--endpoint`), then for every task x budget x planner runs the
same episodes and writes one table (markdown + JSON) and one PNG under `--out`; per-cell media go
to `--media`. `--resume` keeps the cells already in `--out` (same env, model, seed, steps, loop) and
runs only the rest, so a long sweep can be stopped and continued. See robot_bridge/evaluation/sweep.py
for what each planner is.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

from . import robosuite_env
from .eval_command import default_model

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
DEFAULT_BUDGETS = ("64x2h2", "128x4h2", "256x5h2", "400x10h2", "800x10h1")
# The service's plan budget for the sweep: the largest cell at up to this many tokens per frame (the
# released ViT-g at 256 px has 256; the default budget would refuse 400x10 / 800x10 there).
TOKENS_PER_FRAME_ALLOWANCE = 1024
# What a resumed sweep must share with the saved one for its cells to count.
RESUME_MATCH = ("env", "model", "seed", "loop", "threads")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .evaluation.sweep import PLANNERS

    parser.add_argument("--env", choices=("sim", "robosuite"), default="sim", help="simulator (default %(default)s)")
    parser.add_argument("--tasks", nargs="+", default=["reach", "push"], help="tasks (default: reach push)")
    parser.add_argument("--budgets", nargs="+", default=list(DEFAULT_BUDGETS),
                        help="SAMPLESxITERATIONS[hHORIZON][:MAX_EPISODES] each; horizon 2 unless given "
                             "(default: %(default)s)")
    parser.add_argument("--planners", nargs="+", choices=list(PLANNERS), default=list(PLANNERS),
                        help="cold-cem (official, no warm start), warm-cem, warm-icem (default: all)")
    parser.add_argument("--episodes", nargs="+", default=["10"],
                        help="episodes per cell: N, or TASK=N per task (a budget's :MAX_EPISODES caps it)")
    parser.add_argument("--seed", type=int, default=1, help="episode i of every cell uses the seed sequence (seed, i)")
    parser.add_argument("--steps", type=int, default=None, help="executed plans per episode (default: the task's)")
    parser.add_argument("--model", default=None,
                        help="preset, embedded model, .safetensors or .pt (default: the env's embedded model: demo for "
                             "sim, robosuite for robosuite)")
    parser.add_argument("--random-init", action="store_true", help="the same architecture with random weights")
    parser.add_argument("--loop", choices=("blocking", "paced"), default="blocking",
                        help="blocking: the paper's loop, each plan answers the observation just before it (wall "
                             "time ~ plan time per step); paced: eval's streaming loop slowed to 2x the measured "
                             "plan time (default %(default)s)")
    parser.add_argument("--device", default="auto", help="the service's device (when this command starts it)")
    parser.add_argument("--threads", type=int, default=None, help="the service's torch CPU threads for planning")
    parser.add_argument("--plan-budget", type=int, default=None,
                        help="JEPA_PLAN_BUDGET for the service this command starts (default: the largest cell at "
                             f"{TOKENS_PER_FRAME_ALLOWANCE} tokens per frame)")
    parser.add_argument("--http", default=None, help="use this running service instead (its JEPA_PLAN_BUDGET must "
                                                     "allow the largest budget); needs --endpoint")
    parser.add_argument("--endpoint", default=None, help="that service's ZeroMQ bridge endpoint")
    parser.add_argument("--out", type=Path, default=Path("docs/quality_per_compute"),
                        help="quality_per_compute.{md,json,png} (default %(default)s)")
    parser.add_argument("--media", type=Path, default=Path("demo-out/sweep"), help="per-cell GIFs, PNGs, summaries")
    parser.add_argument("--resume", action="store_true", help="keep the cells already measured in --out")
    parser.add_argument("--json", action="store_true", help="print the claim verdicts as one JSON object last")


def _usage(message: str) -> int:
    print(f"jepa-planner eval-sweep: {message}", file=sys.stderr)
    return EXIT_USAGE


def run(args: argparse.Namespace) -> int:
    from .evaluation.sweep import Budget, parse_episodes, plan_cells
    from .evaluation.tasks import DEFAULT_RADIUS_M, DEFAULT_STEPS, TASKS

    unknown = [task for task in args.tasks if task not in TASKS[args.env]]
    if unknown:
        return _usage(f"--env {args.env} has the tasks {', '.join(TASKS[args.env])}, not {', '.join(unknown)}")
    if args.env == "robosuite" and not robosuite_env.have_robosuite():
        return robosuite_env.rerun_in_robosuite_environment("robot_bridge.sweep_command",
                                                           robosuite_env.as_argv(args, add_arguments), "eval-sweep")
    os.environ.setdefault("MUJOCO_GL", "egl")  # before the first `import mujoco`
    if (args.http is None) != (args.endpoint is None):
        return _usage("--http and --endpoint go together (a running service's HTTP URL and bridge endpoint)")
    if args.steps is not None and args.steps < 1:
        return _usage("--steps must be at least 1")
    args.model = args.model or default_model(args.env)
    tasks = list(dict.fromkeys(args.tasks))
    try:
        budgets = [Budget.parse(text) for text in args.budgets]
        episodes = parse_episodes(args.episodes, tasks)
    except ValueError as error:
        return _usage(str(error))
    cells = plan_cells(tasks, list(dict.fromkeys(args.planners)), budgets, episodes)
    label = "random-init" if args.random_init else (args.model if args.http is None else args.http)
    context = {
        "env": args.env, "model": label, "seed": args.seed, "loop": args.loop, "threads": args.threads,
    }
    steps = {task: args.steps or DEFAULT_STEPS[task] for task in tasks}
    radius = {task: DEFAULT_RADIUS_M[task] for task in tasks}
    command = "jepa-planner eval-sweep " + shlex.join(robosuite_env.as_argv(args, add_arguments))
    plan_budget = args.plan_budget or max(budget.rollout_cost for budget in budgets) * TOKENS_PER_FRAME_ALLOWANCE
    return _sweep(args, cells, context, command, steps, radius, label, plan_budget)


def _sweep(args: argparse.Namespace, cells, context: dict, command: str, steps: dict, radius: dict, label: str,
           plan_budget: int) -> int:
    from .evaluation.sweep import done, load_saved, run_cell, with_cells, write_report
    from .service_process import RejectedSettings, ServiceError

    match = {key: context[key] for key in RESUME_MATCH}
    saved, commands = load_saved(args.out / "quality_per_compute.json", match) if args.resume else ([], [])
    todo = [cell for cell in cells if not done(saved, cell, steps[cell.task], radius[cell.task])]
    # The commands that measured cells (a re-run one once; one that only rewrites the table not at all).
    context = {**context, "commands": list(dict.fromkeys([*commands, command] if todo else commands))}
    print(f"eval-sweep: {len(cells)} cells ({len(cells) - len(todo)} already measured), "
          f"{sum(cell.episodes for cell in todo)} episodes to run, model {label}, {args.loop} loop", flush=True)
    if not todo:  # everything asked for is measured: only the table and plot are written again
        return _report(args, context, saved)
    from .eval_command import service_and_arm

    measured, started = list(saved), time.monotonic()
    try:
        with service_and_arm(args, {**os.environ, "JEPA_PLAN_BUDGET": str(plan_budget)}) as (service, endpoint, arm, limits):
            for number, cell in enumerate(todo, 1):
                print(f"eval-sweep: cell {number}/{len(todo)} {cell.name}, {cell.episodes} episodes "
                      f"({time.monotonic() - started:.0f} s into the sweep)", flush=True)
                result = run_cell(cell, env=args.env, seed=args.seed, steps=steps, radius=radius,
                                  blocking=args.loop == "blocking", media=args.media, label=label, service=service,
                                  endpoint=endpoint, arm=arm, limits=limits,
                                  log=lambda line: print(f"  {line}", flush=True))
                measured = with_cells(measured, result)
                write_report(args.out, context, measured)  # after every cell: a stopped sweep keeps what it measured
                print(f"eval-sweep: {cell.name}: {result['successes']}/{result['episodes']}, "
                      f"{result['mean_plan_s'] or float('nan'):.3f} s/action, {result['wall_s']:.0f} s", flush=True)
    except RejectedSettings as error:
        print(f"jepa-planner eval-sweep: {error}", file=sys.stderr)
        return EXIT_USAGE
    except ServiceError as error:
        print(f"jepa-planner eval-sweep: {error}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"eval-sweep: {time.monotonic() - started:.0f} s", flush=True)
    return _report(args, context, measured)


def _report(args: argparse.Namespace, context: dict, cells: list[dict]) -> int:
    from .evaluation.sweep import write_report

    verdicts = write_report(args.out, context, cells)
    print((args.out / "quality_per_compute.md").read_text(), flush=True)
    print(f"eval-sweep: table, JSON and plot in {args.out}", flush=True)
    if args.json:
        print(json.dumps(verdicts))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """`python -m robot_bridge.sweep_command ...`: the same command without the torch-side CLI."""
    parser = argparse.ArgumentParser(prog="eval-sweep", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
