"""The seam between the service and the model stack: encode images, build per-session planners.

Everything here runs on the model worker thread (server/worker.py). The service sees only the
small `Engine` interface, so HTTP, storage and the bridge never touch torch or the planner
internals; torch, world_model and planner are imported only when the model is loaded.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol

import numpy as np

from .errors import InvalidInput
from .settings import DEFAULT_PLAN_BUDGET


@dataclass(frozen=True)
class PlanStep:
    action: list[float]
    target_pose: list[float] | None
    energy: float
    goal_index: int
    plan_ms: float
    held: bool = False   # holding at the final goal: nothing was planned


class SessionPlanner(Protocol):
    """One session's receding-horizon controller (goal schedule, warm start)."""

    def step(self, observation_latent: Any, state: list[float],
             should_stop: Callable[[], bool] | None = None, arm_limits: Any = None) -> PlanStep:
        """Plan one action; raises planner.search.PlanCancelled (planner unchanged) when `should_stop()`
        turns true between CEM iterations. `arm_limits`: planner.controller.ArmLimits the arm announced."""

    def snapshot(self) -> Any:
        """Where the planner stands now (schedule position, warm start)."""

    def restore(self, snapshot: Any) -> None:
        """Back to `snapshot`: undoes steps whose plans never reached the robot."""

    def resume(self, goal_index: int, steps_on_goal: int, arrived: bool) -> None:
        """A fresh planner for a session that already acted (the service restarted): continue its goal
        schedule from where the recorded steps left it (Storage.schedule_position), with a cold search."""


@dataclass(frozen=True)
class RoundItem:
    """One session's share of a planning round."""

    planner: SessionPlanner
    latent: Any                          # the observation's frame latent (N, D), on the model device
    state: list[float]
    should_stop: Callable[[], bool]      # this request's own cancellation (deadline, stop, newer hello)
    arm_limits: Any = None               # planner.controller.ArmLimits the arm announced in its hello, if any


class Engine(Protocol):
    source: str
    fingerprint: str  # identifies the weights, so cached goal latents are reused only with the same model

    def info(self) -> dict[str, Any]: ...

    def encode(self, pixels: np.ndarray) -> Any: ...

    def latent_to_array(self, latent: Any) -> np.ndarray: ...

    def latent_from_array(self, array: np.ndarray) -> Any: ...

    def check_planner(self, planner: dict[str, Any]) -> None: ...

    def new_session_planner(self, goal_latents: list[Any], planner: dict[str, Any],
                            schedule: dict[str, Any] | None = None) -> SessionPlanner: ...

    def plan_round(self, items: list[RoundItem], should_stop: Callable[[], bool]) -> Iterator[tuple[int, Any]]:
        """Plan every item; yields (index, PlanStep or the exception it raised, PlanCancelled included)."""


# Bounds on per-session planner overrides: a client must not be able to ask for a search that
# exhausts the device (samples * horizon rollouts per iteration).
MAX_SAMPLES = 8192
MAX_ITERATIONS = 64

def plan_cost(planner: dict[str, Any], tokens_per_frame: int) -> int:
    """What one plan costs, in token-rollouts (JEPA_PLAN_BUDGET bounds it)."""
    return planner["samples"] * planner["iterations"] * planner["horizon"] * tokens_per_frame


def effective_planner_config(defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Server defaults + a session's overrides, validated by PlannerConfig; the full config as JSON."""
    from pydantic import ValidationError

    from planner.config import PlannerConfig

    try:
        config = PlannerConfig(**{**defaults, **overrides})
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'planner'}: {e['msg']}" for e in error.errors()[:10])
        raise InvalidInput(f"invalid planner settings: {problems}", code="invalid_planner") from None
    except TypeError as error:
        raise InvalidInput(f"invalid planner settings: {error}", code="invalid_planner") from None
    if config.samples > MAX_SAMPLES or config.iterations > MAX_ITERATIONS:
        raise InvalidInput(f"planner asks too much: at most {MAX_SAMPLES} samples and {MAX_ITERATIONS} iterations",
                           code="invalid_planner")
    return config.model_dump(mode="json")


class WorldModelEngine:
    """The V-JEPA 2-AC world model plus a RecedingHorizonController per session."""

    def __init__(self, world_model, source: str, plan_budget: Callable[[], int] = lambda: DEFAULT_PLAN_BUDGET):
        self.world_model = world_model
        self.source = source
        self.plan_budget = plan_budget   # read per check, so the setting can change on a live service
        self.fingerprint = _weights_fingerprint(world_model)

    def info(self) -> dict[str, Any]:
        wm = self.world_model
        return {"device": str(wm.device), "dtype": str(wm.dtype).removeprefix("torch."), "image_size": wm.image_size,
                "tokens_per_frame": wm.tokens_per_frame, "embed_dim": wm.embed_dim, "max_horizon": wm.max_horizon,
                "fingerprint": self.fingerprint}

    def check_planner(self, planner: dict[str, Any]) -> None:
        """What PlannerConfig cannot know: the limits of this model."""
        if planner["horizon"] > self.world_model.max_horizon:
            raise InvalidInput(f"horizon {planner['horizon']} is longer than this model can imagine "
                               f"({self.world_model.max_horizon})", code="invalid_planner")
        tokens, budget = self.world_model.tokens_per_frame, self.plan_budget()
        cost = plan_cost(planner, tokens)
        if cost > budget:
            raise InvalidInput(
                f"this planner costs {cost:,} token-rollouts per plan (samples {planner['samples']} x iterations "
                f"{planner['iterations']} x horizon {planner['horizon']} x {tokens} tokens per frame), over the plan "
                f"budget of {budget:,} (JEPA_PLAN_BUDGET); ask for fewer samples, iterations or horizon steps",
                code="over_budget")

    def plan_round(self, items: list[RoundItem], should_stop: Callable[[], bool]) -> Iterator[tuple[int, Any]]:
        """Plan every item; yields (index, PlanStep or the exception it raised, PlanCancelled included).

        Several sessions are planned together (planner.batch.step_together: every CEM iteration's
        candidates of all of them in one batched rollout; each plan equals the one it gets alone) and
        answered at the end of the round; the round stops early only when the service stops or every
        item is cancelled (the scheduler discards the plans of items cancelled meanwhile). One session,
        or a round that cannot be planned together (one bad item fails the batch), goes one at a time,
        each answered as soon as it is done."""
        if len(items) > 1:
            try:
                results = self._plan_together(items, should_stop)
            except Exception:  # a per-item problem (e.g. an arm box outside the planner's): find whose, below
                results = None
            if results is not None:
                yield from enumerate(results)
                return
        for index, item in enumerate(items):
            try:
                result = item.planner.step(item.latent, item.state, lambda stop=item.should_stop: should_stop() or stop(),
                                           arm_limits=item.arm_limits)
            except Exception as error:
                result = error
            yield index, result

    def _plan_together(self, items: list[RoundItem], should_stop: Callable[[], bool]) -> list[Any]:
        import torch

        from planner.batch import step_together
        from planner.search import PlanCancelled

        def round_should_stop() -> bool:
            return should_stop() or all(item.should_stop() for item in items)

        try:
            steps = step_together([item.planner.controller for item in items], [item.latent for item in items],
                                  [torch.tensor(item.state, dtype=torch.float32) for item in items], round_should_stop,
                                  [item.arm_limits for item in items])
        except PlanCancelled as cancelled:
            return [cancelled] * len(items)
        return [_plan_step(step) for step in steps]

    def encode(self, pixels: np.ndarray):
        return self.world_model.encode(pixels)[0]  # (N, D) on the model device

    def latent_to_array(self, latent) -> np.ndarray:
        return latent.float().cpu().numpy()

    def latent_from_array(self, array: np.ndarray):
        import torch

        expected = (self.world_model.tokens_per_frame, self.world_model.embed_dim)
        if array.shape != expected:
            raise ValueError(f"cached latent has shape {array.shape}, the model makes {expected}")
        return torch.from_numpy(array).to(self.world_model.device)

    def new_session_planner(self, goal_latents: list[Any], planner: dict[str, Any],
                            schedule: dict[str, Any] | None = None) -> SessionPlanner:
        from planner.config import PlannerConfig
        from planner.controller import RecedingHorizonController, SubGoal

        schedule = schedule or {}
        last = len(goal_latents) - 1
        goals = [SubGoal(latent,
                         max_steps=schedule.get("subgoal_max_steps") if i < last else None,
                         energy_threshold=schedule.get("subgoal_energy_threshold") if i < last else None)
                 for i, latent in enumerate(goal_latents)]
        return _ControllerPlanner(RecedingHorizonController(self.world_model, PlannerConfig(**planner), goals))


class _ControllerPlanner:
    def __init__(self, controller):
        self.controller = controller

    def step(self, observation_latent: Any, state: list[float],
             should_stop: Callable[[], bool] | None = None, arm_limits: Any = None) -> PlanStep:
        import torch

        return _plan_step(self.controller.step(observation_latent, torch.tensor(state, dtype=torch.float32),
                                               should_stop, arm_limits=arm_limits))

    def snapshot(self) -> tuple:
        # The warm start is an immutable SearchState (a step replaces it), so holding it is enough.
        controller = self.controller
        return controller.goal_index, controller.steps_on_goal, controller.warm_start, controller.arrived

    def restore(self, snapshot: tuple) -> None:
        controller = self.controller
        controller.goal_index, controller.steps_on_goal, controller.warm_start, controller.arrived = snapshot

    def resume(self, goal_index: int, steps_on_goal: int, arrived: bool) -> None:
        self.controller.resume(goal_index, steps_on_goal, arrived)


def _plan_step(result) -> PlanStep:
    """planner.controller.ControlStep -> the service's PlanStep (host lists)."""
    return PlanStep(action=result.action.tolist(), target_pose=result.target_pose.tolist(), energy=result.energy,
                    goal_index=result.goal_index, plan_ms=result.planning_seconds * 1000.0, held=result.held)


def load_engine(settings) -> WorldModelEngine:
    """Worker thread: load the configured world model (ServerSettings.model/device/dtype), or with
    `random_init_seed` the same architecture with fresh random weights (the untrained control)."""
    from world_model import WorldModel, load_world_model

    world_model = load_world_model(settings.model, device=settings.device, dtype=settings.dtype)
    budget = lambda: settings.plan_budget  # noqa: E731 - read per check
    if settings.random_init_seed is None:
        return WorldModelEngine(world_model, settings.model, budget)
    weights = next(world_model.parameters())
    control = WorldModel.from_config(world_model.config, seed=settings.random_init_seed)
    control = control.to(device=weights.device, dtype=weights.dtype).eval().requires_grad_(False)
    control.autocast_dtype = world_model.autocast_dtype
    return WorldModelEngine(control, f"random-init:{settings.model}:{settings.random_init_seed}", budget)


def _weights_fingerprint(world_model) -> str:
    """A cheap identity of the weights: architecture, dtype and the first values of every tensor.
    Enough to tell checkpoints (and differently seeded random models) apart without hashing GBs."""
    digest = hashlib.sha256(repr(world_model.config).encode() + str(world_model.dtype).encode())
    # The tensors as held (not state_dict(), which builds official-order copies of every qkv weight:
    # ~1.25 GB at ViT-g for 64 numbers each).
    tensors = {**dict(world_model.named_parameters()), **dict(world_model.named_buffers())}
    for name, tensor in sorted(tensors.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().flatten()[:64].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]
