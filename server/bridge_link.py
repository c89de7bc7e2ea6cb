"""Connects the ZeroMQ bridge (robot_bridge.service.BridgeService) to the session registry.

The bridge's I/O thread hands each observation to `SchedulerPlanner.submit`, which files it with
the plan scheduler (the same queue as HTTP acts) and returns at once; the scheduler's completion
callback turns the outcome into a reply the arm understands (an action, a hold, or an error with a
code) and gives it back to the bridge, which sends it only on the connection it was asked on.
Nothing raises into the bridge and no thread waits on a plan.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .errors import ActTimeout, ModelUnavailable, ServiceError, ShuttingDown, StaleObservation
from .service import PlanningService

log = logging.getLogger(__name__)

# A bridge plan may take this many times the session's last plan before it is discarded (and never less
# than JEPA_BRIDGE_PLAN_TIMEOUT_S), so a planner that is slow on its device still moves the arm.
PLAN_TIME_FACTOR = 3.0


def start_bridge(service: PlanningService):
    """Bind the bridge on `settings.bridge` and register its shutdown with the service; returns it."""
    from robot_bridge.security import ServerKeys
    from robot_bridge.service import BridgeService

    settings = service.settings
    keys = None
    if settings.bridge_secret_key is not None or settings.bridge_authorized_keys is not None:
        if settings.bridge_secret_key is None or settings.bridge_authorized_keys is None:
            raise ValueError("CURVE needs both bridge_secret_key and bridge_authorized_keys")
        keys = ServerKeys(settings.bridge_secret_key, settings.bridge_authorized_keys)
    bridge = BridgeService(settings.bridge, SchedulerPlanner(service), keys=keys,
                           session_info=make_session_info(service)).start()
    service.metrics.bridge.read_stats = bridge.stats
    service.bridge = bridge
    service.sessions.stop_listeners.append(lambda record: bridge.send_stop(record.robot_id, f"session {record.id} stopped"))
    service.on_stop(bridge.close)
    return bridge


def planner_limits_from_hello(hello) -> Any:
    """The limits an arm announced in its hello as per-session planner limits (planner.controller.ArmLimits),
    or None when it announced none: the session then plans within its own box and step only."""
    if hello is None or hello.limits is None:
        return None
    from planner.controller import ArmLimits

    limits = hello.limits
    return ArmLimits(tuple(limits["workspace_low"]), tuple(limits["workspace_high"]), limits["max_translation_m"])


class SchedulerPlanner:
    """The bridge's planner (robot_bridge.service.Planner): the service's plan scheduler."""

    def __init__(self, service: PlanningService):
        self.service = service

    def submit(self, request) -> None:
        """I/O thread: file the observation with the scheduler; the answer comes from its completion callback."""
        from robot_bridge.protocol import ErrorCode, ErrorMessage, HoldMessage

        observation = request.observation
        settings = self.service.settings
        sessions = self.service.sessions
        timeout = sessions.plan_timeout_for(request.robot_id, settings.bridge_plan_timeout_s, PLAN_TIME_FACTOR)
        try:
            submitted = sessions.submit_for_robot(
                request.robot_id, observation.image.decode, [float(v) for v in observation.state], observation.seq,
                request.connection, timeout, lambda outcome, error: request.answer(_reply(outcome, error)),
                arm_limits=planner_limits_from_hello(request.hello))
        except ModelUnavailable as error:
            request.answer(HoldMessage(error.message[:1000]))
            return
        except ServiceError as error:
            request.answer(_reply(None, error))
            return
        if not submitted:
            request.answer(ErrorMessage(ErrorCode.NO_SESSION.value,
                                        f"no active session for robot {request.robot_id!r}; "
                                        "create one with POST /v1/sessions"))

    def connection_changed(self, robot_id: str, connection: int) -> None:
        self.service.sessions.connection_changed(robot_id, connection)


def _reply(outcome, error):
    """The arm's reply for a scheduler outcome: None (nothing sent) when a newer observation superseded it."""
    from robot_bridge.protocol import ActionMessage, ErrorCode, ErrorMessage, HoldMessage, ProtocolError

    if isinstance(error, StaleObservation):
        return None
    if isinstance(error, (ActTimeout, ShuttingDown, ModelUnavailable)):
        return HoldMessage(f"{error.message} Holding."[:1000])
    if isinstance(error, ProtocolError):  # the image did not decode
        return ErrorMessage(error.code.value, error.message)
    if isinstance(error, ServiceError):
        return ErrorMessage(ErrorCode.PLANNER_ERROR.value, f"{error.code}: {error.message}"[:1000])
    if error is not None:
        return ErrorMessage(ErrorCode.PLANNER_ERROR.value, f"{type(error).__name__}: {error}"[:500])
    if outcome.target_pose is None:
        return ErrorMessage(ErrorCode.PLANNER_ERROR.value, "the planner gave no target pose")
    return ActionMessage(delta=np.asarray(outcome.action, dtype=np.float64),
                         target=np.asarray(outcome.target_pose, dtype=np.float64), energy=outcome.energy,
                         held=outcome.held)


def make_session_info(service: PlanningService):
    def session_info(robot_id: str):
        record = service.sessions.active_for_robot(robot_id)
        if record is None:
            return None
        return {"session_id": record.id, "goal_ids": ",".join(record.goal_ids), "steps": record.steps}

    return session_info
