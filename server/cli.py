"""The `jepa-planner` console script.

Each subcommand lives beside the code it drives, in a module that defines
`add_arguments(parser)` and `run(args) -> int`. Only the chosen command's module is
imported, so `jepa-planner --help` stays instant and a broken optional dependency of one
command never breaks another.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). `bench` has its own sub-table below.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("server.serve_command", "run the planning service (HTTP + ZeroMQ bridge)"),
    "sim-arm": ("robot_bridge.sim_arm_command", "run the simulated Franka-style arm against a service"),
    "arm": ("robot_bridge.arm_command", "run a real Franka (franky or pylibfranka) or the sim arm against a service"),
    "demo": ("robot_bridge.eval_command", "closed-loop reaching demo: service + sim arm + goal images"),
    "eval": ("robot_bridge.eval_command", "closed-loop episodes in the sim or robosuite through a service, scored"),
    "eval-sweep": ("robot_bridge.sweep_command", "quality per compute: success vs seconds per action, planners x budgets"),
    "replay": ("robot_bridge.replay", "stream a recorded episode to a service and report"),
    "collect": ("robot_bridge.collect", "record exploratory sim-arm episodes for training"),
    "convert-franka-example": ("robot_bridge.franka_example", "convert the reference 2-frame Franka example to an episode"),
    "train": ("world_model.training.command", "train or post-train a world model"),
    "convert": ("robot_bridge.convert", "LeRobot v3.0 datasets, older recordings or the Franka example to episodes"),
    "energy": ("planner.energy_landscape", "plot the energy landscape over an action grid to PNG"),
    "grasp-scenes": ("robot_bridge.evaluation.grasp_scenes", "robosuite scenes: close-then-raise vs raise at the cube"),
    "probe-grasp": ("planner.grasp_probe", "does a model imagine a closed hand carrying the cube? (on grasp-scenes)"),
    "keys": ("robot_bridge.keys", "generate ZeroMQ CURVE key pairs"),
    "gpu-check": ("server.gpu_check", "on a CUDA machine: parity, bf16, ViT-g plan and fleet benchmarks, one JSON"),
}

BENCHMARKS: dict[str, tuple[str, str]] = {
    "world-model": ("world_model.bench", "encode ms/image and rollout samples/s, cached vs full"),
    "plan": ("planner.bench", "seconds per planned action: reference-style baseline vs ours"),
    "server": ("server.bench", "act latency percentiles under concurrent sessions"),
    "hardening": ("server.bench_hardening", "/healthz under slow connections; peak RSS of concurrent large uploads"),
    "batch": ("planner.batch_bench", "plans/s of N sessions planned together vs one after another"),
    "fleet": ("robot_bridge.fleet_bench", "N simulated robots over the bridge: batched vs one session at a time"),
    "post-train": ("world_model.training.latent_bench", "post-training steps/s and peak memory with/without the latent cache"),
    "scheduler": ("server.bench_scheduler", "victim act latency beside a heavy robot; SIGTERM during a long plan"),
}

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _table_help(table: dict[str, tuple[str, str]]) -> str:
    width = max(len(name) for name in table)
    return "\n".join(f"  {name.ljust(width)}  {text}" for name, (_, text) in table.items())


def _run_module(module_name: str, prog: str, argv: list[str], description: str) -> int:
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=prog, description=description)
    module.add_arguments(parser)
    args = parser.parse_args(argv)
    return int(module.run(args) or EXIT_OK)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = (
        "usage: jepa-planner COMMAND [options]\n\ncommands:\n"
        + _table_help(COMMANDS)
        + "\n  bench " + " ".ljust(max(len(n) for n in COMMANDS) - 5)
        + "benchmarks: " + ", ".join(BENCHMARKS)
        + "\n\n`jepa-planner COMMAND --help` describes each command."
    )
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return EXIT_OK if argv else EXIT_USAGE
    name, rest = argv[0], argv[1:]
    try:
        if name == "bench":
            if not rest or rest[0] in ("-h", "--help") or rest[0] not in BENCHMARKS:
                print("usage: jepa-planner bench NAME [options]\n\nbenchmarks:\n" + _table_help(BENCHMARKS))
                return EXIT_OK if rest and rest[0] in ("-h", "--help") else EXIT_USAGE
            module_name, text = BENCHMARKS[rest[0]]
            return _run_module(module_name, f"jepa-planner bench {rest[0]}", rest[1:], text)
        if name not in COMMANDS:
            print(f"jepa-planner: unknown command {name!r}\n\n{usage}", file=sys.stderr)
            return EXIT_USAGE
        module_name, text = COMMANDS[name]
        return _run_module(module_name, f"jepa-planner {name}", rest, text)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
