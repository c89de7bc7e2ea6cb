"""`jepa-planner sim-arm`: a simulated arm, connected to a service exactly as a real arm would be.

`--env sim` is the project's MuJoCo arm; `--env robosuite --task Lift` is robosuite's Panda, which
runs from its own virtual environment (robosuite pins an older mujoco and numpy; `make robosuite`
makes it): this command re-runs itself there. Either arm goes through the same `ArmClient` (safety
limits, hold on silence, stop) as a lab's real arm; `--record DIR` attaches an episode recorder.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from . import robosuite_env
from .arm import SafetyLimits
from .client import ArmClient, stop_on_signals
from .security import ClientKeys, InsecureEndpoint
from .service import DEFAULT_ENDPOINT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", choices=("sim", "robosuite"), default="sim",
                        help="sim: the project's MuJoCo arm; robosuite: robosuite's Panda (default %(default)s)")
    parser.add_argument("--task", default="Lift", help="robosuite task: Lift, Stack, PickPlace, Door (default %(default)s)")
    parser.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help="bridge service endpoint (default %(default)s)")
    parser.add_argument("--robot-id", default="sim0", help="robot id announced to the service (default %(default)s)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="camera height and width in pixels (default 256 for sim, 64 for robosuite)")
    parser.add_argument("--seed", type=int, default=0, help="scene seed: cube position (default %(default)s)")
    parser.add_argument("--rate", type=float, default=None, help="control rate in Hz (default: the sim's own, 4 Hz)")
    parser.add_argument("--steps", type=int, default=None, help="stop after this many control periods")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--action-timeout", type=float, default=0.5, help="hold when no fresh action for this long (s)")
    parser.add_argument("--blocking", action="store_true",
                        help="the paper's mode: hold still, send one observation, wait for its action, execute, repeat")
    parser.add_argument("--plan-deadline", type=float, default=60.0,
                        help="with --blocking: longest wait for one plan before asking again (s, default %(default)s)")
    parser.add_argument("--image-format", choices=("jpeg", "raw"), default="jpeg")
    parser.add_argument("--workspace", type=float, nargs=6, metavar=("XMIN", "YMIN", "ZMIN", "XMAX", "YMAX", "ZMAX"),
                        help="safety box for the end effector in metres (default: SafetyLimits defaults)")
    parser.add_argument("--max-step", type=float, default=None, help="max translation per control period in metres")
    parser.add_argument("--server-key", type=Path, help="the service's public key file (NAME.key) to pin (CURVE)")
    parser.add_argument("--client-key", type=Path, help="this arm's key pair file (NAME.key_secret) (CURVE)")
    parser.add_argument("--record", type=Path, help="record the episode into this folder")
    parser.add_argument("--summary", type=Path, help="write the run summary as JSON here")


def _limits(args: argparse.Namespace) -> SafetyLimits:
    if args.env == "robosuite":
        from .robosuite_arm import ROBOSUITE_LIMITS as defaults
    else:
        defaults = SafetyLimits()
    return defaults.overridden(args.workspace, args.max_step)


def _keys(args: argparse.Namespace) -> ClientKeys | None:
    if (args.server_key is None) != (args.client_key is None):
        raise ValueError("CURVE needs both --server-key and --client-key")
    return ClientKeys(args.client_key, args.server_key) if args.server_key else None


def _make_arm(args: argparse.Namespace):
    os.environ.setdefault("MUJOCO_GL", "egl")  # before the first `import mujoco`: it picks its GL backend then
    if args.env == "robosuite":
        from .robosuite_arm import RobosuiteArm, RobosuiteConfig

        size = args.image_size or 64
        config = RobosuiteConfig(task=args.task, image_height=size, image_width=size)
        return RobosuiteArm(config, seed=args.seed)
    from .sim import SimArm, SimConfig

    size = args.image_size or 256
    return SimArm(SimConfig(image_height=size, image_width=size), seed=args.seed)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.env == "robosuite" and not robosuite_env.have_robosuite():
        return robosuite_env.rerun_in_robosuite_environment("robot_bridge.sim_arm_command",
                                                           robosuite_env.as_argv(args, add_arguments), "sim-arm")
    try:
        limits, keys = _limits(args), _keys(args)
        arm = _make_arm(args)
    except ValueError as error:
        print(f"sim-arm: {error}")
        return 2
    subscribers = []
    if args.record is not None:
        from .recording import EpisodeRecorder

        subscribers.append(EpisodeRecorder(args.record, task=f"sim-arm seed {args.seed}"))
    try:
        client = ArmClient(arm, args.endpoint, args.robot_id, args.rate, limits, args.action_timeout,
                           keys=keys, image_format=args.image_format, subscribers=subscribers,
                           blocking=args.blocking, plan_deadline_s=args.plan_deadline)
    except (InsecureEndpoint, ValueError, OSError) as error:
        arm.close()
        print(f"sim-arm: {error}")
        return 2
    try:
        with stop_on_signals(client):  # Ctrl-C / kill: hold, finish the episode, exit
            summary = client.run(max_steps=args.steps, duration_s=args.duration)
    finally:
        client.close()
        arm.close()
    report = {"steps": summary.steps, "reason": summary.reason, "stats": summary.stats}
    print(json.dumps(report))
    if args.summary is not None:
        args.summary.write_text(json.dumps(report, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m robot_bridge.sim_arm_command ...`: the same command without the torch-side CLI."""
    parser = argparse.ArgumentParser(prog="sim-arm", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
