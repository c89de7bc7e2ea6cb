"""Connects the ZeroMQ bridge (robot_bridge.service.BridgeService) to the session registry.

The bridge calls `plan(robot_id, observation)` on its planner threads; we find the robot's active
session and run the same act job as HTTP on the model worker. Every failure becomes a reply the
arm understands (hold, or an error with a code); nothing raises into the bridge.
"""
from __future__ import annotations

import logging
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable

import numpy as np

from .errors import ModelUnavailable, ServiceError
from .service import PlanningService

log = logging.getLogger(__name__)


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
    bridge = BridgeService(settings.bridge, make_plan_callback(service, lambda robot_id: bridge.hello_of(robot_id)),
                           keys=keys, session_info=make_session_info(service)).start()
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


def make_plan_callback(service: PlanningService, hello_of: Callable[[str], Any] = lambda robot_id: None):
    """`hello_of(robot_id)`: the robot's current hello (BridgeService.hello_of), for its announced limits."""
    from robot_bridge.protocol import ActionMessage, ErrorCode, ErrorMessage, HoldMessage

    def plan(robot_id: str, observation):
        timeout = service.settings.bridge_plan_timeout_s  # read per plan, like the HTTP act deadline
        try:
            outcome = service.sessions.act_for_robot(
                robot_id, observation.image.decode(), [float(v) for v in observation.state], observation.seq,
                timeout=timeout, arm_limits=planner_limits_from_hello(hello_of(robot_id)))
        except ModelUnavailable as error:
            return HoldMessage(error.message[:1000])
        except FutureTimeout:
            return HoldMessage(f"planning took longer than {timeout:g} s (JEPA_BRIDGE_PLAN_TIMEOUT_S); "
                               "the plan was discarded; holding")
        except ServiceError as error:
            return ErrorMessage(ErrorCode.PLANNER_ERROR.value, f"{error.code}: {error.message}"[:1000])
        if outcome is None:
            return ErrorMessage(ErrorCode.NO_SESSION.value,
                                f"no active session for robot {robot_id!r}; create one with POST /v1/sessions")
        if outcome.target_pose is None:
            return ErrorMessage(ErrorCode.PLANNER_ERROR.value, "the planner gave no target pose")
        return ActionMessage(delta=np.asarray(outcome.action, dtype=np.float64),
                             target=np.asarray(outcome.target_pose, dtype=np.float64), energy=outcome.energy)

    return plan


def make_session_info(service: PlanningService):
    def session_info(robot_id: str):
        record = service.sessions.active_for_robot(robot_id)
        if record is None:
            return None
        return {"session_id": record.id, "goal_ids": ",".join(record.goal_ids), "steps": record.steps}

    return session_info
