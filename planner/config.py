"""PlannerConfig: every knob of the latent-space planner, validated once at construction.

Defaults follow the official `WorldModel` planner (SPEC section 7) except maxnorm (0.075 m, DROID's
per-step limit, as in the notebook) and fewer samples/iterations so that a CPU can plan in
seconds. Invalid settings raise pydantic's ``ValidationError`` (a ``ValueError``) naming the field.
"""
from __future__ import annotations

import math
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from planner.energy import EnergyKind

OptimizerName = Literal["cem", "mppi", "icem"]

# Official sampling clip of the gripper delta and the rounding of the returned gripper delta.
GRIPPER_DELTA_LIMIT = 0.75
GRIPPER_ROUND_THRESHOLD = 0.25


class PlannerConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    optimizer: OptimizerName = "cem"
    horizon: int = Field(2, ge=1, le=31, description="imagined steps per plan (the predictor holds at most 32 frames)")
    samples: int = Field(256, ge=2, description="candidate action sequences per iteration")
    topk: int = Field(10, ge=2, description="elites per iteration (>= 2: the elite std is unbiased)")
    iterations: int = Field(5, ge=1, description="optimiser iterations per planned action")
    maxnorm: float = Field(0.075, description="per-axis limit of the xyz delta per step (m)")
    momentum_mean: float = Field(0.15, ge=0.0, lt=1.0, description="weight of the OLD xyz mean in the update")
    momentum_std: float = Field(0.15, ge=0.0, lt=1.0, description="weight of the OLD xyz std in the update")
    momentum_mean_gripper: float = Field(0.15, ge=0.0, lt=1.0)
    momentum_std_gripper: float = Field(0.15, ge=0.0, lt=1.0)
    energy: EnergyKind = "l1"
    frame_weights: Optional[tuple[float, ...]] = Field(
        None, description="per-imagined-frame energy weights; None scores only the final frame (official)"
    )
    workspace_min: tuple[float, float, float] = (0.2, -0.6, 0.02)
    workspace_max: tuple[float, float, float] = (0.9, 0.6, 0.9)
    arrival_energy: Optional[float] = Field(
        None, ge=0.0, allow_inf_nan=False,
        description="hold (zero action, no planning) while the observed latent is this close to the final goal; "
        "None always plans. Stops a reach from dithering around its goal.",
    )
    arrival_release_energy: Optional[float] = Field(
        None, ge=0.0, allow_inf_nan=False,
        description="once holding at the final goal, keep holding until the observed energy rises above this "
        "(hysteresis); None: plan again as soon as it is at or above arrival_energy. A held goal whose energy "
        "hovers about arrival_energy otherwise alternates holds with plans, and a lift plan can open the hand.",
    )
    warm_start: bool = Field(
        True, description="start each control step's search from the previous plan shifted by one step; False: every "
        "step starts from the official initial distribution (mean 0, std maxnorm / 1), as a loop of official cem() calls does",
    )
    seed: Optional[int] = Field(0, description="noise seed; None draws a fresh seed per planner")
    max_batch: Optional[int] = Field(None, ge=1, description="most samples per model call (None: sized automatically from free device memory on CUDA and from cache size on CPU)")
    autocast_bf16: bool = Field(False, description="run the predictor under bf16 autocast")
    mppi_temperature: float = Field(
        0.1, gt=0.0, description="MPPI softmax temperature, as a fraction of the iteration's energy range"
    )
    icem_noise_beta: float = Field(2.0, ge=0.0, le=4.0, description="iCEM coloured-noise exponent (0 = white)")
    icem_keep_elites: float = Field(0.3, ge=0.0, le=1.0, description="fraction of elites carried to the next iteration")

    @field_validator("maxnorm")
    @classmethod
    def _maxnorm_positive(cls, value: float) -> float:
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"maxnorm must be a finite number > 0 (metres per step), got {value}")
        if value > 0.5:
            raise ValueError(f"maxnorm {value} m per step is not a safe arm motion; use at most 0.5")
        return value

    @field_validator("workspace_min", "workspace_max")
    @classmethod
    def _finite_box(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(math.isfinite(v) for v in value):
            raise ValueError(f"workspace bounds must be finite, got {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "PlannerConfig":
        if self.arrival_release_energy is not None and (
                self.arrival_energy is None or self.arrival_release_energy < self.arrival_energy):
            raise ValueError(f"arrival_release_energy ({self.arrival_release_energy}) needs an arrival_energy "
                             f"at or below it (got {self.arrival_energy})")
        if self.topk > self.samples:
            raise ValueError(f"topk ({self.topk}) must not exceed samples ({self.samples})")
        if any(lo >= hi for lo, hi in zip(self.workspace_min, self.workspace_max)):
            raise ValueError(
                f"workspace_min {self.workspace_min} must be below workspace_max {self.workspace_max} on every axis"
            )
        if self.frame_weights is not None and len(self.frame_weights) != self.horizon:
            raise ValueError(f"frame_weights needs one weight per imagined frame ({self.horizon}), got {len(self.frame_weights)}")
        return self
