"""The seam between the service and the model stack: encode images, build per-session planners.

Everything here runs on the model worker thread (server/worker.py). The service sees only this
small interface, so HTTP, storage and the bridge never touch torch or the planner internals.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class PlanStep:
    action: list[float]
    target_pose: list[float] | None
    energy: float
    goal_index: int
    plan_ms: float


class SessionPlanner(Protocol):
    """One session's receding-horizon controller (goal schedule, warm start)."""

    def step(self, observation_latent: Any, state: list[float]) -> PlanStep: ...


class Engine(Protocol):
    source: str
    fingerprint: str  # identifies the weights, so cached goal latents are reused only with the same model

    def info(self) -> dict[str, Any]: ...

    def encode(self, pixels: np.ndarray) -> Any: ...

    def latent_to_array(self, latent: Any) -> np.ndarray: ...

    def latent_from_array(self, array: np.ndarray) -> Any: ...

    def planner_settings(self, overrides: dict[str, Any]) -> dict[str, Any]: ...

    def new_session_planner(self, goal_latents: list[Any], planner: dict[str, Any]) -> SessionPlanner: ...
