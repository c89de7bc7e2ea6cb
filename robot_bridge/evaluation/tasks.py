"""Evaluation tasks: where an episode starts, its goal (and sub-goal) images, and how it is judged.

Goal images are rendered from the simulator's own state: the scene is put (sim: kinematically; robosuite:
by driving the arm with its controller) where the goal is, rendered, and restored exactly, so the goal
image shows what the camera would see and the episode starts untouched.

| env | task | tracked | success |
|---|---|---|---|
| sim | reach | end effector, goal 10-25 cm away | within `radius` (5 cm) at the end |
| sim | push | the cube, goal 5-15 cm away | within `radius` (3 cm) at the end |
| robosuite | reach | end effector, goal 10-25 cm away | within `radius` (5 cm) at the end |
| robosuite | push | the cube, pushed 5-15 cm by a scripted push | within `radius` (3 cm) of where that push left it |
| robosuite | lift | the cube | robosuite's own `_check_success()`, after every step: the episode ends at the first pass (`--until-success`, robomimic's convention) unless told to run on and be judged at the end |
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from robot_bridge.poses import euler_to_matrix
from robot_bridge.robosuite_arm import TABLE_Z  # a constant: importing it does not import robosuite

TASKS = {"sim": ("reach", "push"), "robosuite": ("reach", "push", "lift")}
DEFAULT_RADIUS_M = {"reach": 0.05, "push": 0.03, "lift": 0.05}
DEFAULT_STEPS = {"reach": 30, "push": 80, "lift": 60}

# ---- the project's MuJoCo arm (robot_bridge.sim) -------------------------------------------
# Goals and starts stay where the training data went (the collector's workspace), off the table.
GOAL_LOW = np.array([0.30, -0.22, 0.08])
GOAL_HIGH = np.array([0.62, 0.22, 0.35])
REACHABLE_TOLERANCE_M = 0.005
# Push geometry (as the collector's push episodes): come down behind the cube with the gripper
# closed, push through, then return to the start pose, which is what the final goal image shows.
APPROACH_HEIGHT = 0.12
PUSH_HEIGHT = 0.03
BEHIND_CUBE = 0.09
CONTACT_OFFSET = 0.04  # TCP-to-cube-centre distance while pushing (measured in the sim)
# Sub-goals along the push line, the last with the cube at its goal. With 3 instead of 1: seed 1
# 3/10 instead of 1/10 (tuning seeds 100 and 101: 5/10 each).
PUSH_STAGES = 3


class Episode:
    """Start and goal of one episode; deterministic in the generator it is given."""

    task: str
    start_state: np.ndarray
    start_image: np.ndarray
    goal_images: list[np.ndarray]

    @property
    def goal_image(self) -> np.ndarray:
        return self.goal_images[-1]

    def distance(self) -> float:
        """Metres between what the task moves and where it should end."""
        raise NotImplementedError

    def succeeded(self, radius: float) -> bool:
        return self.distance() < radius

    def task_success(self) -> bool | None:
        """The simulator's own success test, where it has one (robosuite); None otherwise."""
        return None


def _pose_at(start: np.ndarray, position: np.ndarray, gripper: float | None = None) -> np.ndarray:
    pose = start.copy()
    pose[:3] = position
    if gripper is not None:
        pose[6] = gripper
    return pose


class SimEpisode(Episode):
    """The project's MuJoCo arm: reach a pose, or push the cube to a spot."""

    def __init__(self, arm, rng: np.random.Generator, task: str):
        self.task = task
        self.arm = arm
        observation = arm.reset(seed=int(rng.integers(2**31)), randomize_arm=task == "reach")
        self.start_state = observation.state.copy()
        self.start_image = observation.image
        if task == "reach":
            self.goal_position = _sample_sim_reach_goal(arm, rng, self.start_state)
            self.goal_images = [arm.render_goal(_pose_at(self.start_state, self.goal_position))]
        else:
            self.goal_position = _sample_cube_goal(arm, rng)
            self.goal_images = self._push_subgoals()

    def _push_subgoals(self) -> list[np.ndarray]:
        """Visual sub-goals, as V-JEPA 2-AC plans multi-stage tasks: above and behind the cube, down
        behind it, pushed part of the way and then through (cube at its goal), lifted clear of it,
        and the final goal image. The partial pushes keep the arm on the push line: the cube is a
        few pixels, so the energy mostly sees the arm and would let it slide off the cube."""
        cube = self.arm.cube_position
        direction = self.goal_position - cube
        direction[2] = 0.0
        direction /= np.linalg.norm(direction)
        behind = cube - BEHIND_CUBE * direction
        above, low = behind.copy(), behind.copy()
        above[2] = APPROACH_HEIGHT
        low[2] = PUSH_HEIGHT
        render, start = self.arm.render_goal, self.start_state
        goals = [render(_pose_at(start, above, 1.0)), render(_pose_at(start, low, 1.0))]
        for fraction in np.arange(1, PUSH_STAGES + 1) / PUSH_STAGES:
            moved = cube + fraction * (self.goal_position - cube)
            pushed = moved - CONTACT_OFFSET * direction
            pushed[2] = PUSH_HEIGHT
            goals.append(render(_pose_at(start, pushed, 1.0), cube_position=moved))
        lifted = self.goal_position - CONTACT_OFFSET * direction  # above the last push pose
        lifted[2] = APPROACH_HEIGHT
        return goals + [render(_pose_at(start, lifted, 1.0), cube_position=self.goal_position),
                        render(self.start_state, cube_position=self.goal_position)]

    def distance(self) -> float:
        if self.task == "push":
            return float(np.linalg.norm(self.arm.cube_position[:2] - self.goal_position[:2]))
        return float(np.linalg.norm(self.arm.state()[:3] - self.goal_position))


def _sample_sim_reach_goal(arm, rng: np.random.Generator, start: np.ndarray) -> np.ndarray:
    rotation = euler_to_matrix(start[3:6])

    def reachable(position: np.ndarray) -> bool:
        # Only goals the arm can really take, or the goal image would show a different pose.
        return arm.ik.solve(position, rotation, arm.joints()).position_error < REACHABLE_TOLERANCE_M

    return _sample_reach_goal(rng, start[:3], GOAL_LOW, GOAL_HIGH, reachable)


def _sample_reach_goal(rng: np.random.Generator, start: np.ndarray, low: np.ndarray, high: np.ndarray,
                       reachable: Callable[[np.ndarray], bool]) -> np.ndarray:
    """A position 10-25 cm from `start`, inside [low, high], that `reachable` accepts."""
    for _ in range(1000):
        direction = rng.normal(size=3)
        position = start + rng.uniform(0.10, 0.25) * direction / np.linalg.norm(direction)
        if np.all(position >= low) and np.all(position <= high) and reachable(position):
            return position
    raise RuntimeError(f"no reachable goal 10-25 cm from {start}")


def _sample_cube_goal(arm, rng: np.random.Generator) -> np.ndarray:
    cube = arm.cube_position
    low, high = np.array(arm.config.cube_region.low), np.array(arm.config.cube_region.high)
    for _ in range(1000):
        angle = rng.uniform(-np.pi, np.pi)
        xy = cube[:2] + rng.uniform(0.05, 0.15) * np.array([np.cos(angle), np.sin(angle)])
        if np.all(xy >= low) and np.all(xy <= high):
            return np.array([xy[0], xy[1], cube[2]])
    raise RuntimeError(f"no cube goal 5-15 cm from {cube}")


# ---- robosuite's Panda (robot_bridge.robosuite_arm), robot base frame -----------------------
RS_START_LOW, RS_START_HIGH = np.array([0.35, -0.2, 0.0]), np.array([0.6, 0.2, 0.2])
RS_GOAL_LOW, RS_GOAL_HIGH = np.array([0.32, -0.25, -0.05]), np.array([0.68, 0.25, 0.22])  # the camera sees up to ~0.25
RS_DRIVE_PERIODS = 8  # control periods to settle on a scripted pose (a 5 cm OSC step settles in ~4)
RS_REACHED_M = 0.01
LIFT_APPROACH_M = 0.10  # above the cube before going down to it
# The grasp sub-goal shows the cube already raised this far in the closed hand: fingers closing at the
# cube change ~1 pixel of a 64 px frame (one period after, energy to the lifted goal 0.556 closed vs
# 0.555 open), a cube carried 4 cm up is plain (energy to this sub-goal 0.11 vs 0.21 for an open hand
# raised as far), so a 2-step plan can tell them apart.
LIFT_RAISED_M = 0.04
LIFT_HEIGHT_M = 0.12  # how far the final goal image shows the cube lifted


class RobosuiteEpisode(Episode):
    """robosuite's Panda: reach a pose, push the cube, or lift it (judged by robosuite's own check)."""

    def __init__(self, arm, rng: np.random.Generator, task: str):
        self.task = task
        self.arm = arm
        arm.reset(seed=int(rng.integers(2**31)))
        if task == "reach":
            arm.drive_to(_pose_at(arm.state(), rng.uniform(RS_START_LOW, RS_START_HIGH)), RS_DRIVE_PERIODS)
        observation = arm.observe()
        self.start_state = observation.state.copy()
        self.start_image = observation.image
        if task == "reach":
            self.goal_position = _sample_reach_goal(rng, self.start_state[:3], RS_GOAL_LOW, RS_GOAL_HIGH,
                                                    self._reachable)
            self.goal_images = [self._rendered_after([_pose_at(self.start_state, self.goal_position)])]
        elif task == "push":
            self.goal_images, self.goal_position = self._push_subgoals(rng)
        else:
            self.goal_images = self._lift_subgoals()
            self.goal_position = arm.object_position() + np.array([0.0, 0.0, LIFT_HEIGHT_M])

    def _reachable(self, position: np.ndarray) -> bool:
        saved = self.arm.save_state()
        try:
            self.arm.drive_to(_pose_at(self.start_state, position), RS_DRIVE_PERIODS)
            return float(np.linalg.norm(self.arm.state()[:3] - position)) < RS_REACHED_M
        finally:
            self.arm.restore_state(saved)

    def _rendered_after(self, poses: list[np.ndarray]) -> np.ndarray:
        return self._render_stages(poses)[-1]

    def _render_stages(self, poses: list[np.ndarray]) -> list[np.ndarray]:
        return self._run_stages(poses)[0]

    def _run_stages(self, poses: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
        """Drive through `poses` from the saved state, render after each, then restore the state;
        also returns where the cube was at the end."""
        saved = self.arm.save_state()
        try:
            images = []
            for pose in poses:
                self.arm.drive_to(pose, RS_DRIVE_PERIODS)
                images.append(self.arm.render())
            return images, self.arm.object_position().copy()
        finally:
            self.arm.restore_state(saved)

    def _push_subgoals(self, rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
        """A scripted push, stage by stage as the sim's push sub-goals (above and behind the cube, down
        with the gripper closed, pushed a third, two thirds and all the way, lifted clear, back at the
        start pose); the goal is where robosuite's physics left the cube, not where we aimed."""
        cube = self.arm.object_position().copy()
        angle = rng.uniform(-np.pi, np.pi)
        direction = np.array([np.cos(angle), np.sin(angle), 0.0])
        push = rng.uniform(0.05, 0.15)
        low_z, high_z = TABLE_Z + PUSH_HEIGHT, TABLE_Z + APPROACH_HEIGHT
        behind = cube - BEHIND_CUBE * direction
        start = self.start_state
        poses = [_pose_at(start, [behind[0], behind[1], high_z], 1.0), _pose_at(start, [behind[0], behind[1], low_z], 1.0)]
        for fraction in np.arange(1, PUSH_STAGES + 1) / PUSH_STAGES:
            pushed = cube + (fraction * push - CONTACT_OFFSET) * direction
            poses.append(_pose_at(start, [pushed[0], pushed[1], low_z], 1.0))
        poses += [_pose_at(start, [pushed[0], pushed[1], high_z], 1.0), start]
        return self._run_stages(poses)

    def _lift_subgoals(self) -> list[np.ndarray]:
        """Above the cube (open), around it (open), raised a little in the closed hand, lifted: a scripted
        grasp rendered stage by stage, as V-JEPA 2-AC plans pick-and-place with sub-goal images. The
        grasp itself (closed at the cube) is driven but not a sub-goal: it looks like the open hand."""
        stages = self._render_stages(lift_stages(self.start_state, self.arm.object_position()))
        return stages[:LIFT_CLOSING_STAGE] + stages[LIFT_CLOSING_STAGE + 1:]

    def distance(self) -> float:
        if self.task == "lift":
            return float(np.linalg.norm(self.arm.object_position() - self.goal_position))
        if self.task == "push":
            return float(np.linalg.norm(self.arm.object_position()[:2] - self.goal_position[:2]))
        return float(np.linalg.norm(self.arm.state()[:3] - self.goal_position))

    def succeeded(self, radius: float) -> bool:
        return bool(self.task_success()) if self.task == "lift" else super().succeeded(radius)

    def task_success(self) -> bool | None:
        return self.arm.check_success() if self.task == "lift" else None


LIFT_CLOSING_STAGE = 2  # the stage of lift_stages that closes the hand (driven, never a sub-goal)


def lift_stages(start: np.ndarray, cube: np.ndarray) -> list[np.ndarray]:
    """The scripted grasp, pose by pose (start's orientation): above the cube (open), around it (open),
    closed around it, raised LIFT_RAISED_M in the hand, lifted LIFT_HEIGHT_M."""
    above, raised, lifted = (cube + [0.0, 0.0, height] for height in (LIFT_APPROACH_M, LIFT_RAISED_M, LIFT_HEIGHT_M))
    return [_pose_at(start, above, 0.0), _pose_at(start, cube, 0.0), _pose_at(start, cube, 1.0),
            _pose_at(start, raised, 1.0), _pose_at(start, lifted, 1.0)]


def make_episode(env: str, arm, rng: np.random.Generator, task: str) -> Episode:
    if task not in TASKS[env]:
        raise ValueError(f"env {env!r} has tasks {', '.join(TASKS[env])}, not {task!r}")
    return (SimEpisode if env == "sim" else RobosuiteEpisode)(arm, rng, task)
