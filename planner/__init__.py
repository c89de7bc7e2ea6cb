"""Latent-space model-predictive planning on a frozen V-JEPA 2-AC world model."""
from planner.batch import step_together
from planner.cem import CEM
from planner.config import PlannerConfig
from planner.controller import ControlStep, RecedingHorizonController, SubGoal
from planner.energy import Energy
from planner.icem import ICEM
from planner.mppi import MPPI
from planner.noise import RecordedNoise, SeededNoise
from planner.objective import GoalObjective
from planner.optimizers import OPTIMIZERS, make_optimizer
from planner.pose import compose_pose, pose_difference
from planner.search import Plan, PlanCancelled, SearchState

__all__ = [
    "CEM", "ICEM", "MPPI", "OPTIMIZERS", "ControlStep", "Energy", "GoalObjective", "Plan", "PlanCancelled", "PlannerConfig",
    "RecedingHorizonController", "RecordedNoise", "SearchState", "SeededNoise", "SubGoal", "compose_pose",
    "make_optimizer", "pose_difference", "step_together",
]
