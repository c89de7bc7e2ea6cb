"""`jepa-planner collect`: record exploratory sim-arm episodes for world-model training.

Each episode starts from a seeded reset (cube at a random spot, arm at home or at a random
start) and runs `--steps` Cartesian-delta commands. `--env sim` records the project's MuJoCo arm;
`--env robosuite` records robosuite's Panda in its Lift scene (re-run in robosuite's own environment,
see robosuite_collect.py). Three kinds of episodes:
  * explore: segments of straight moves towards random waypoints in the workspace and of
    random-walk steps, step sizes varied per episode up to `--max-step`, gripper toggled at random;
  * push: approach behind the cube, go down to table height with the gripper closed and push
    along a random direction until the tool centre is 5-15 cm past the cube's start (the cube
    moves roughly 10-20 cm), then explore;
  * grasp (robosuite by default): above the cube with the gripper open, down around it, close,
    lift it 8-15 cm, then explore with it in hand (the lift task's sub-goals are these stages);
    `--open-raise-fraction` of them raise with open fingers instead, `--release-fraction` of the
    carrying ones open the hand in the air a few periods later and drop the cube.
Episode i depends only on (seed, i), so datasets are reproducible and can be split freely.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from robot_bridge.episodes import (
    COMMANDED_ACTION,
    ENVIRONMENT_STATE,
    JOINT_NAMES,
    JOINTS,
    POSE_NAMES,
    EpisodeWriter,
)
from robot_bridge import robosuite_env
from robot_bridge.poses import pose_difference
from robot_bridge.sim import HOME_STATE, Box, SimArm, SimConfig

CUBE_FEATURE = ["cube_x", "cube_y", "cube_z"]
# LeRobot's `robot_type` per simulator: what a dataset's reader sees of where it was recorded.
ROBOT_TYPES = {"sim": "sim_franka_style", "robosuite": "robosuite_panda"}
# What every collected frame carries besides image and state, whichever simulator recorded it.
RECORDED_FEATURES = {JOINTS: JOINT_NAMES, COMMANDED_ACTION: POSE_NAMES, ENVIRONMENT_STATE: CUBE_FEATURE}
PUSH_HEIGHT = 0.03          # TCP height while pushing: fingertips ~2 cm above the table, mid-cube
APPROACH_HEIGHT = 0.12
BEHIND_CUBE = 0.09          # start a push this far behind the cube centre


@dataclass(frozen=True)
class ExplorationConfig:
    max_step_m: float = 0.075
    push_fraction: float = 0.3
    random_start_fraction: float = 0.5
    gripper_toggle_probability: float = 0.15
    workspace: Box = field(default_factory=lambda: Box((0.3, -0.25, 0.02), (0.65, 0.25, 0.35)))
    grasp_fraction: float = 0.0
    # Share of grasp episodes that raise with the fingers still open, leaving the cube on the table: without
    # them every raise from around the cube carries it, and a model imagines carrying whatever the gripper does.
    open_raise_fraction: float = 0.0
    # Share of the carrying grasp episodes that open the hand in the air a few periods after the lift, so
    # the cube falls: without them the data never shows a let-go, and a model imagines the cube staying in
    # an opened hand (lift episodes held the cube at the goal, then the plan opened the fingers).
    release_fraction: float = 0.0
    table_z: float = 0.0  # the table top's height in the arm's frame (robosuite: 0.112 m below the base)

    def __post_init__(self):
        if not 0 < self.max_step_m <= 0.2:
            raise ValueError(f"max step must be in (0, 0.2] m, got {self.max_step_m}")
        for name in ("push_fraction", "random_start_fraction", "gripper_toggle_probability", "grasp_fraction",
                     "open_raise_fraction", "release_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.push_fraction + self.grasp_fraction > 1:
            raise ValueError("push_fraction + grasp_fraction must not exceed 1")


GRASP_LIFT_M = (0.08, 0.15)  # how far a grasp episode lifts the cube
GRASP_DWELL_STEPS = 2        # periods spent closing the fingers around the cube
RELEASE_AFTER_STEPS = (0, 4)  # explore periods with the cube in hand before a releasing episode lets go (still up)


class ExplorationPolicy:
    """Chooses the next absolute target for one episode; all randomness comes from `rng`.

    `reference` is the pose whose orientation every target keeps (the arm's home pose)."""

    def __init__(self, rng: np.random.Generator, config: ExplorationConfig, cube_position: np.ndarray,
                 reference: np.ndarray):
        self._rng = rng
        self._config = config
        self._reference = np.asarray(reference, dtype=np.float64)
        # Per-episode step size, so the data covers small corrections as well as big moves.
        self._step = config.max_step_m * rng.uniform(0.25, 1.0)
        self._gripper = 0.0
        self._waypoints: list[tuple[np.ndarray, float, int]] = []  # (position, gripper, periods to dwell)
        self._release_in: int | None = None  # explore periods left before letting go of a carried cube
        kind = rng.random()  # one draw picks the kind, so sim datasets stay as they were
        self.pushing = kind < config.push_fraction
        self.grasping = config.push_fraction <= kind < config.push_fraction + config.grasp_fraction
        if self.pushing:
            self._step = max(self._step, 0.04)  # finish the approach within the episode
            self._plan_push(cube_position)
        elif self.grasping:
            self._step = max(self._step, 0.04)
            self._plan_grasp(cube_position)
        self._segment_left = 0
        self._random_walk = False
        self._goal: np.ndarray | None = None  # the current waypoint of an explore segment

    @property
    def kind(self) -> str:
        return "push the cube" if self.pushing else "lift the cube" if self.grasping else "explore"

    def next_target(self, state: np.ndarray) -> np.ndarray:
        position = state[:3]
        if self._waypoints:
            waypoint, gripper, dwell = self._waypoints[0]
            if np.linalg.norm(waypoint - position) < 0.01:
                if dwell == 0:
                    self._waypoints.pop(0)
                    return self.next_target(state)
                self._waypoints[0] = (waypoint, gripper, dwell - 1)
            delta = _limit_norm(waypoint - position, self._step)
            self._gripper = gripper
        else:
            delta = self._explore_delta(position)
            self._update_gripper()
        delta = np.clip(delta, -self._config.max_step_m, self._config.max_step_m)
        target = self._reference.copy()
        target[:3] = self._config.workspace.clip(position + delta)
        target[6] = self._gripper
        return target

    def _plan_push(self, cube: np.ndarray) -> None:
        angle = self._rng.uniform(-np.pi, np.pi)
        direction = np.array([np.cos(angle), np.sin(angle), 0.0])
        start = cube - BEHIND_CUBE * direction
        end = cube + self._rng.uniform(0.05, 0.15) * direction
        table = self._config.table_z
        above = start.copy()
        above[2] = table + APPROACH_HEIGHT
        start[2] = end[2] = table + PUSH_HEIGHT
        clip = self._config.workspace.clip
        self._waypoints = [(clip(above), 1.0, 0), (clip(start), 1.0, 0), (clip(end), 1.0, 0)]

    def _plan_grasp(self, cube: np.ndarray) -> None:
        """Open above the cube, down around it, close, lift; a few millimetres of aim noise so the
        data also shows near-misses."""
        clip = self._config.workspace.clip
        at = cube + np.append(self._rng.normal(0.0, 0.004, size=2), 0.0)
        above = at + [0.0, 0.0, APPROACH_HEIGHT]
        lifted = at + [0.0, 0.0, self._rng.uniform(*GRASP_LIFT_M)]
        # Drawn only when asked for, so datasets recorded without open raises stay reproducible.
        closing = not (self._config.open_raise_fraction > 0 and self._rng.random() < self._config.open_raise_fraction)
        grip = 1.0 if closing else 0.0
        self._waypoints = [(clip(above), 0.0, 0), (clip(at), 0.0, 0), (clip(at), grip, GRASP_DWELL_STEPS),
                           (clip(lifted), grip, 0)]
        if closing and self._config.release_fraction > 0 and self._rng.random() < self._config.release_fraction:
            self._release_in = int(self._rng.integers(*RELEASE_AFTER_STEPS))

    def _explore_delta(self, position: np.ndarray) -> np.ndarray:
        if self._segment_left == 0:
            self._segment_left = int(self._rng.integers(3, 11))
            self._random_walk = self._rng.random() < 0.5
            self._goal = self._config.workspace.sample(self._rng)
        self._segment_left -= 1
        if self._random_walk:
            return self._rng.normal(0.0, self._step / 2, size=3)
        if np.linalg.norm(self._goal - position) < 0.01:
            self._goal = self._config.workspace.sample(self._rng)
        return _limit_norm(self._goal - position, self._step) + self._rng.normal(0.0, 0.005, size=3)

    def _update_gripper(self) -> None:
        if self.grasping:
            # Keep holding the lifted cube while exploring with it, or let it go once, in the air.
            if self._release_in is not None:
                if self._release_in == 0:
                    self._gripper = 0.0
                else:
                    self._release_in -= 1
            return
        draw = self._rng.random()
        if draw < self._config.gripper_toggle_probability:
            self._gripper = 1.0 - round(self._gripper)
        elif draw < self._config.gripper_toggle_probability + 0.03:
            self._gripper = float(self._rng.uniform(0, 1))


def _limit_norm(vector: np.ndarray, limit: float) -> np.ndarray:
    norm = np.linalg.norm(vector)
    return vector if norm <= limit else vector * (limit / norm)


class SimScene:
    """The project's MuJoCo arm as a place to collect in."""

    def __init__(self, image_size: int, control_hz: float, seed: int):
        self.arm = SimArm(SimConfig(image_height=image_size, image_width=image_size, control_hz=control_hz), seed=seed)
        self.reference = HOME_STATE

    def reset(self, rng: np.random.Generator, config: ExplorationConfig) -> None:
        self.arm.reset(seed=int(rng.integers(2**31)), randomize_arm=rng.random() < config.random_start_fraction)

    @property
    def cube_position(self) -> np.ndarray:
        return self.arm.cube_position

    def close(self) -> None:
        self.arm.close()


def record_episode(scene, writer: EpisodeWriter, rng: np.random.Generator, steps: int, config: ExplorationConfig) -> str:
    """Record steps + 1 frames of one episode; returns its kind (explore, push or lift the cube)."""
    scene.reset(rng, config)
    arm = scene.arm
    policy = ExplorationPolicy(rng, config, scene.cube_position, scene.reference)
    writer.start_episode(policy.kind)
    for step in range(steps + 1):
        observation = arm.observe()
        state = observation.state
        target = policy.next_target(state) if step < steps else state
        commanded = pose_difference(state, target)
        writer.add_frame(
            observation.image,
            state,
            timestamp=step / arm.control_hz,
            extras={JOINTS: observation.joints, COMMANDED_ACTION: commanded, ENVIRONMENT_STATE: scene.cube_position},
        )
        if step < steps:
            arm.move_to(target)
    writer.end_episode()
    return policy.kind


def collect(
    out: Path,
    episodes: int,
    steps: int,
    image_size: int,
    seed: int,
    config: ExplorationConfig = ExplorationConfig(),
    control_hz: float = 4.0,
    progress: bool = True,
    video: bool = False,
    env: str = "sim",
) -> dict:
    """Record a dataset at `out`; returns a summary (episodes, frames, seconds, episodes of each kind)."""
    if env == "robosuite":
        from robot_bridge.robosuite_collect import RobosuiteScene

        scene = RobosuiteScene(image_size, control_hz, seed)
    else:
        scene = SimScene(image_size, control_hz, seed)
    provenance = {
        "collection": {
            "command": "jepa-planner collect",
            "env": env,
            "episodes": episodes,
            "steps": steps,
            "image_size": image_size,
            "seed": seed,
            "control_hz": control_hz,
            "exploration": asdict(config),
        }
    }
    started = time.perf_counter()
    kinds: dict[str, int] = {}
    try:
        with EpisodeWriter(
            out,
            fps=control_hz,
            image_shape=(image_size, image_size, 3),
            optional_features=RECORDED_FEATURES,
            extra_info=provenance,
            video=video,
            robot_type=ROBOT_TYPES[env],
        ) as writer:
            for episode in tqdm(range(episodes), desc="collect", unit="ep", disable=not progress):
                rng = np.random.default_rng([seed, episode])
                kind = record_episode(scene, writer, rng, steps, config)
                kinds[kind] = kinds.get(kind, 0) + 1
    finally:
        scene.close()
    seconds = time.perf_counter() - started
    return {"episodes": episodes, "frames": episodes * (steps + 1), "seconds": seconds, "kinds": kinds}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", choices=("sim", "robosuite"), default="sim",
                        help="sim: the project's MuJoCo arm; robosuite: robosuite's Panda in its Lift scene "
                             "(run from robosuite's own environment, `make robosuite`)")
    parser.add_argument("--out", type=Path, required=True, help="new dataset folder (must not exist or be empty)")
    parser.add_argument("--episodes", type=int, default=500)
    parser.add_argument("--steps", type=int, default=30, help="actions per episode (frames = steps + 1)")
    parser.add_argument("--image-size", type=int, default=64, help="square camera resolution in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--control-hz", type=float, default=4.0, help="frames per second (DROID-like ~4)")
    parser.add_argument("--max-step", type=float, default=0.075, help="largest translation per step (m)")
    parser.add_argument("--push-fraction", type=float, default=None,
                        help="share of episodes that push the cube (default 0.3 sim, 0.25 robosuite)")
    parser.add_argument("--grasp-fraction", type=float, default=None,
                        help="share of episodes that grasp and lift the cube (default 0 sim, 0.4 robosuite)")
    parser.add_argument("--open-raise-fraction", type=float, default=None,
                        help="share of those that raise with the fingers open, leaving the cube (default 0)")
    parser.add_argument("--release-fraction", type=float, default=None,
                        help="share of the carrying ones that open the hand in the air after the lift (default 0)")
    parser.add_argument("--video", action="store_true",
                        help="store frames as AV1 mp4 video (LeRobot's default; lossy) instead of embedded PNGs")
    parser.add_argument("--no-progress", action="store_true")


def exploration_for(args: argparse.Namespace) -> ExplorationConfig:
    """The exploration settings for the chosen simulator, with the command line's overrides."""
    if args.env == "robosuite":
        from robot_bridge.robosuite_collect import robosuite_exploration

        base = robosuite_exploration()
    else:
        base = ExplorationConfig()
    overrides = {"max_step_m": args.max_step}
    if args.push_fraction is not None:
        overrides["push_fraction"] = args.push_fraction
    if args.grasp_fraction is not None:
        overrides["grasp_fraction"] = args.grasp_fraction
    if args.open_raise_fraction is not None:
        overrides["open_raise_fraction"] = args.open_raise_fraction
    if args.release_fraction is not None:
        overrides["release_fraction"] = args.release_fraction
    return replace(base, **overrides)


def run(args: argparse.Namespace) -> int:
    if args.episodes < 1 or args.steps < 1 or not 8 <= args.image_size <= 1024:
        print("collect: need --episodes >= 1, --steps >= 1 and 8 <= --image-size <= 1024", file=sys.stderr)
        return 2
    if args.env == "robosuite" and not robosuite_env.have_robosuite():
        return robosuite_env.rerun_in_robosuite_environment("robot_bridge.collect",
                                                           robosuite_env.as_argv(args, add_arguments), "collect")
    try:
        config = exploration_for(args)
        summary = collect(
            args.out, args.episodes, args.steps, args.image_size, args.seed, config, args.control_hz, not args.no_progress,
            args.video, args.env,
        )
    except (FileExistsError, ValueError, OSError) as error:
        print(f"collect: {error}", file=sys.stderr)
        return 2
    print(
        f"wrote {summary['episodes']} episodes ({summary['frames']} frames; "
        f"{', '.join(f'{count} {kind}' for kind, count in sorted(summary['kinds'].items()))}) "
        f"to {args.out} in {summary['seconds']:.1f} s: {summary['episodes'] / summary['seconds']:.2f} episodes/s"
    )
    return 0


if __name__ == "__main__":  # how `collect --env robosuite` re-runs itself in robosuite's environment
    parser = argparse.ArgumentParser(description="record exploratory episodes for world-model training")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
