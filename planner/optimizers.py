"""Name -> optimiser class, so settings can pick one by name."""
from __future__ import annotations

from planner.cem import CEM
from planner.config import PlannerConfig
from planner.icem import ICEM
from planner.mppi import MPPI
from planner.noise import NoiseSource
from planner.search import SamplingOptimizer

OPTIMIZERS: dict[str, type[SamplingOptimizer]] = {"cem": CEM, "mppi": MPPI, "icem": ICEM}


def make_optimizer(config: PlannerConfig, noise: NoiseSource | None = None) -> SamplingOptimizer:
    return OPTIMIZERS[config.optimizer](config, noise)
