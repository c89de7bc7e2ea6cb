"""Request and response bodies of the HTTP API (kept apart from the storage records)."""
from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import InvalidInput
from .storage import GoalRecord, SessionRecord, StepRecord

STATE_DIM = 7
ROBOT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$"
ID_PATTERN = r"^[0-9a-f]{32}$"
Vector7 = list[float]


def _utc(timestamp: float | None) -> datetime | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, tz=timezone.utc)


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. not_found, payload_too_large")
    message: str = Field(description="what went wrong and how to fix it")


class ErrorResponse(BaseModel):
    error: ErrorDetail


def error_body(code: str, message: str) -> bytes:
    """The JSON body of every error answer, from the app's handlers and from the ASGI middleware alike."""
    return ErrorResponse(error=ErrorDetail(code=code, message=message)).model_dump_json().encode()


class Goal(BaseModel):
    id: str
    name: str | None
    created_at: datetime
    image_format: str
    width: int
    height: int
    size_bytes: int
    sha256: str
    metadata: dict[str, Any]
    image_url: str

    @classmethod
    def from_record(cls, goal: GoalRecord) -> "Goal":
        return cls(
            id=goal.id, name=goal.name, created_at=_utc(goal.created_at), image_format=goal.image_format,
            width=goal.width, height=goal.height, size_bytes=goal.size_bytes, sha256=goal.sha256,
            metadata=goal.metadata, image_url=f"/v1/goals/{goal.id}/image",
        )


class GoalList(BaseModel):
    items: list[Goal]


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    robot_id: str = Field(pattern=ROBOT_ID_PATTERN, description="the robot this session drives (one active session per robot)")
    goal_id: str | None = Field(None, description="the goal image to reach")
    goal_ids: list[str] | None = Field(None, min_length=1, max_length=64,
                                       description="a sub-goal schedule, reached in order")
    planner: dict[str, Any] = Field(default_factory=dict,
                                    description="PlannerConfig overrides for this session (see GET /v1/model)")
    subgoal_max_steps: int | None = Field(None, ge=1, le=100_000,
                                          description="move to the next sub-goal after this many actions")
    subgoal_energy_threshold: float | None = Field(None, ge=0.0, le=1e6, allow_inf_nan=False,
                                                   description="move to the next sub-goal once the observed energy is below this "
                                                               "(and below half the sub-goal's energy from the one before)")

    @model_validator(mode="after")
    def _one_goal_form(self) -> "SessionCreate":
        if (self.goal_id is None) == (self.goal_ids is None):
            raise ValueError("give exactly one of goal_id or goal_ids")
        if len(self.schedule()) > 1 and self.subgoal_max_steps is None and self.subgoal_energy_threshold is None:
            raise ValueError("a sub-goal schedule needs subgoal_max_steps and/or subgoal_energy_threshold "
                             "to know when to move on")
        return self

    def schedule_rule(self) -> dict[str, Any]:
        rule = {"subgoal_max_steps": self.subgoal_max_steps, "subgoal_energy_threshold": self.subgoal_energy_threshold}
        return {name: value for name, value in rule.items() if value is not None}

    def schedule(self) -> list[str]:
        return [self.goal_id] if self.goal_id is not None else list(self.goal_ids or [])


class Session(BaseModel):
    id: str
    robot_id: str
    goal_ids: list[str]
    status: Literal["active", "stopped"]
    planner: dict[str, Any]
    subgoal_max_steps: int | None
    subgoal_energy_threshold: float | None
    created_at: datetime
    stopped_at: datetime | None
    steps: int
    goal_index: int = Field(description="index in goal_ids of the goal being pursued")
    last_seq: int | None
    last_energy: float | None
    last_action: Vector7 | None
    last_plan_ms: float | None

    @classmethod
    def from_record(cls, session: SessionRecord) -> "Session":
        return cls(
            id=session.id, robot_id=session.robot_id, goal_ids=session.goal_ids, status=session.status,
            planner=session.planner, subgoal_max_steps=session.schedule.get("subgoal_max_steps"),
            subgoal_energy_threshold=session.schedule.get("subgoal_energy_threshold"),
            created_at=_utc(session.created_at), stopped_at=_utc(session.stopped_at),
            steps=session.steps, goal_index=session.goal_index, last_seq=session.last_seq,
            last_energy=session.last_energy, last_action=session.last_action, last_plan_ms=session.last_plan_ms,
        )


class SessionList(BaseModel):
    items: list[Session]


class Step(BaseModel):
    step: int
    seq: int | None
    source: Literal["http", "bridge"]
    received_at: datetime
    goal_index: int
    action: Vector7
    energy: float
    plan_ms: float
    total_ms: float
    held: bool = Field(False, description="held at the final goal: nothing was planned")

    @classmethod
    def from_record(cls, step: StepRecord) -> "Step":
        return cls(step=step.step, seq=step.seq, source=step.source, received_at=_utc(step.received_at),
                   goal_index=step.goal_index, action=step.action, energy=step.energy, plan_ms=step.plan_ms,
                   total_ms=step.total_ms, held=step.held)


class StepList(BaseModel):
    items: list[Step]


class Action(BaseModel):
    session_id: str
    step: int = Field(description="1-based count of actions planned in this session")
    seq: int | None = Field(description="the observation sequence number this answers, if one was sent")
    action: Vector7 = Field(description="[dx, dy, dz, droll, dpitch, dyaw, gripper] to apply now")
    target_pose: Vector7 | None = Field(description="the pose the action leads to")
    energy: float = Field(description="energy of the chosen plan (lower is closer to the goal)")
    goal_index: int
    plan_ms: float = Field(description="encode + search time on the model worker")
    total_ms: float = Field(description="time from request to answer inside the service")
    held: bool = Field(False, description="true while the session holds at its final goal (the planner's arrival_energy): "
                                          "nothing was planned, and the action only keeps the arm within its limits")


class ModelInfo(BaseModel):
    source: str
    state: Literal["loading", "ready", "failed", "stopped"]
    error: str | None = None
    device: str | None = None
    dtype: str | None = None
    image_size: int | None = None
    tokens_per_frame: int | None = None
    embed_dim: int | None = None
    max_horizon: int | None = None
    fingerprint: str | None = None
    planner_defaults: dict[str, Any] = Field(default_factory=dict)
    backend: Literal["ray"] | None = Field(None, description="'ray' when plans run on Ray Serve replicas (serve --replicas)")
    replicas: list[dict[str, Any]] | None = Field(
        None, description="each planning replica: its index, Serve application, whether it is up, sessions pinned to it")


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    model: str


def parse_state(text: str) -> list[float]:
    """The `state` form field: a JSON array of 7 finite numbers."""
    try:
        values = json.loads(text)
    except (ValueError, RecursionError):  # ValueError covers JSONDecodeError and over-long integers
        raise InvalidInput("state must be a JSON array of 7 numbers, e.g. [0.5, 0, 0.3, 3.14, 0, 0, 0]",
                           code="invalid_state") from None
    if not isinstance(values, list) or not all(
        isinstance(value, (int, float)) and not isinstance(value, bool) for value in values
    ):
        raise InvalidInput("state must be a JSON array of numbers", code="invalid_state")
    if len(values) != STATE_DIM:
        raise InvalidInput(f"state must have {STATE_DIM} numbers [x, y, z, roll, pitch, yaw, gripper], got {len(values)}",
                           code="invalid_state")
    try:
        floats = [float(value) for value in values]
    except OverflowError:
        floats = [math.inf]
    if not all(math.isfinite(value) for value in floats):
        raise InvalidInput("state must hold finite numbers (no NaN or infinity)", code="invalid_state")
    return floats
