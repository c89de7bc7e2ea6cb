"""robosuite's Panda in its Lift scene as a place to collect training data (`collect --env robosuite`).

Runs in robosuite's own environment like the robosuite arm. Episode i still depends only on
(seed, i): robosuite draws the cube's placement and the arm's initial-joint noise from the
environment's one generator, which is re-seeded from the episode's generator before each reset.
"""
from __future__ import annotations

import numpy as np

from robot_bridge.collect import ExplorationConfig
from robot_bridge.evaluation.tasks import RS_DRIVE_PERIODS, RS_START_HIGH, RS_START_LOW
from robot_bridge.robosuite_arm import TABLE_Z, RobosuiteArm, RobosuiteConfig
from robot_bridge.sim import Box


def robosuite_exploration() -> ExplorationConfig:
    """Where the lift and reach tasks go: down to the cube's centre on the table, up to 0.22 m above
    the base (the camera's view); 40% of episodes grasp and lift the cube, 25% push it."""
    return ExplorationConfig(
        push_fraction=0.25, grasp_fraction=0.4, table_z=TABLE_Z,
        workspace=Box((0.30, -0.25, TABLE_Z + 0.017), (0.68, 0.25, 0.22)),
    )


class RobosuiteScene:
    def __init__(self, image_size: int, control_hz: float, seed: int):
        config = RobosuiteConfig(task="Lift", image_height=image_size, image_width=image_size, control_hz=control_hz)
        self.arm = RobosuiteArm(config, seed=seed)
        # Every target keeps the home orientation (pointing down), as the evaluation tasks do.
        self.reference = self.arm.state().copy()
        self.reference[6] = 0.0

    def reset(self, rng: np.random.Generator, config: ExplorationConfig) -> None:
        self.arm.reset(seed=int(rng.integers(2**63)))
        if rng.random() < config.random_start_fraction:
            start = self.reference.copy()
            start[:3] = rng.uniform(RS_START_LOW, RS_START_HIGH)
            self.arm.drive_to(start, RS_DRIVE_PERIODS)

    @property
    def cube_position(self) -> np.ndarray:
        return self.arm.object_position().copy()

    def close(self) -> None:
        self.arm.close()
