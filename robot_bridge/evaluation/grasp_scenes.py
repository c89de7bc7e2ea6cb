"""`jepa-planner grasp-scenes`: robosuite scenes that ask whether a world model knows a closed hand carries the cube.

Each scene: robosuite's Panda around Lift's cube with the fingers open (the lift task's second
sub-goal), the third sub-goal's image (the cube raised LIFT_RAISED_M in the closed hand, from a
scripted grasp), and what really happens over two control periods from there: close then raise, and
raise without closing. Then the same question at the end of the lift (keys prefixed `hold_`): the
cube carried up to the lifted goal, that goal's image, and two periods of keeping the hand closed
against opening it (the cube falls). `jepa-planner probe-grasp` then compares, for a model, the
energies of those real outcomes against the ones it imagines for the same actions (planner/grasp_probe.py).

Torch-free; runs in robosuite's environment (re-runs itself there, as `eval --env robosuite` does).
Writes one .npz: `start_image`, `start_state`, `goal_image`, and per branch (`closed`, `open`) the
states after each period (`{branch}_states`, (S, 2, 7)), the pose changes each period asked for
(`{branch}_commanded`, (S, 2, 7): the labels of a model trained with `--action-meaning commanded-delta`),
the image after the second (`{branch}_image`) and how far the cube rose over those two periods
(`{branch}_cube_rise`, metres).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from robot_bridge import robosuite_env
from robot_bridge.poses import pose_difference
from robot_bridge.evaluation.tasks import LIFT_CLOSING_STAGE, LIFT_RAISED_M, RS_DRIVE_PERIODS, lift_stages

BRANCHES = {"closed": 1.0, "open": 0.0}  # the gripper target of the first period
HOLD_PREFIX = "hold_"  # the scene at the lifted goal: keep holding or let go


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="the .npz to write")
    parser.add_argument("--scenes", type=int, default=8, help="scenes to record (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="robosuite's seed for the cube placements")


def record_scene(arm) -> dict[str, np.ndarray]:
    arm.reset()
    # The lift task's own scripted grasp: to the open hand around the cube, then closed and raised.
    stages = lift_stages(arm.state(), arm.object_position().copy())
    for pose in stages[:LIFT_CLOSING_STAGE]:
        arm.drive_to(pose, RS_DRIVE_PERIODS)
    at_cube = arm.observe()
    cube_there = arm.object_position()[2]  # the open fingers may press it into the table a little
    saved = arm.save_state()
    scene = {"start_image": at_cube.image, "start_state": at_cube.state}
    for pose in stages[LIFT_CLOSING_STAGE:LIFT_CLOSING_STAGE + 2]:
        arm.drive_to(pose, RS_DRIVE_PERIODS)
    scene["goal_image"] = arm.render()
    scene.update(record_branches(arm, saved, at_cube.state, cube_there, rise=LIFT_RAISED_M))
    arm.restore_state(saved)
    scene.update(record_hold(arm, stages))
    return scene


def record_hold(arm, stages: list[np.ndarray]) -> dict[str, np.ndarray]:
    """From the open hand around the cube: the rest of the scripted lift (the lifted goal's image), then
    two periods in place with the hand kept closed or opened (`{branch}_cube_rise` is negative: fallen)."""
    for pose in stages[LIFT_CLOSING_STAGE:]:
        arm.drive_to(pose, RS_DRIVE_PERIODS)
    held = arm.observe()
    cube_there = arm.object_position()[2]
    saved = arm.save_state()
    scene = {"start_image": held.image, "start_state": held.state, "goal_image": held.image,
             **record_branches(arm, saved, held.state, cube_there, rise=0.0)}
    return {HOLD_PREFIX + key: value for key, value in scene.items()}


def record_branches(arm, saved: np.ndarray, start: np.ndarray, cube_there: float, rise: float) -> dict[str, np.ndarray]:
    """Per branch, from `saved`: one period towards `start` with the branch's gripper target, one more
    raised by `rise`; the states after each, the last image and how far the cube rose."""
    scene = {}
    for branch, gripper in BRANCHES.items():
        arm.restore_state(saved)
        first = start.copy()
        first[6] = gripper
        arm.move_to(first)
        after_first = arm.state()
        second = first.copy()
        second[2] += rise
        arm.move_to(second)
        scene[f"{branch}_states"] = np.stack([after_first, arm.state()])
        scene[f"{branch}_commanded"] = np.stack([pose_difference(start, first), pose_difference(after_first, second)])
        scene[f"{branch}_image"] = arm.render()
        scene[f"{branch}_cube_rise"] = np.float64(arm.object_position()[2] - cube_there)
    return scene


def run(args: argparse.Namespace) -> int:
    if args.scenes < 1:
        print("jepa-planner grasp-scenes: --scenes must be at least 1", file=sys.stderr)
        return 2
    if not robosuite_env.have_robosuite():
        return robosuite_env.rerun_in_robosuite_environment(
            "robot_bridge.evaluation.grasp_scenes", robosuite_env.as_argv(args, add_arguments), "grasp-scenes")
    os.environ.setdefault("MUJOCO_GL", "egl")  # before the first `import mujoco`
    from robot_bridge.robosuite_arm import RobosuiteArm, RobosuiteConfig

    arm = RobosuiteArm(RobosuiteConfig(task="Lift"), seed=args.seed)
    try:
        scenes = [record_scene(arm) for _ in range(args.scenes)]
    finally:
        arm.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **{key: np.stack([s[key] for s in scenes]) for key in scenes[0]})
    print(f"{args.scenes} grasp scenes -> {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m robot_bridge.evaluation.grasp_scenes ...`: how the command re-runs in robosuite's environment."""
    parser = argparse.ArgumentParser(prog="grasp-scenes", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
