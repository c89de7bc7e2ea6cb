"""The one evaluation loop for every simulator: goals over HTTP, the closed loop over ZeroMQ, a summary.

Per episode: the task renders its goal (and sub-goal) images, they are uploaded, a session is opened
for a fresh robot id, and the arm is driven through the same `ArmClient` (safety limits, hold on
silence, stop) a lab's arm uses, for a budget of executed plans. The episode is judged by the task
(distance, or the simulator's own success check); media and a JSON summary are written.
"""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from robot_bridge.arm import SafetyLimits
from robot_bridge.client import ArmClient, Subscriber
from robot_bridge.protocol import MIN_CONTROL_HZ

from .media import plot_energies, write_episode_media
from ..service_process import ServiceClient
from .tasks import Episode, make_episode

# Observed L1 energy between the current image's latent and a sub-goal's: with the demo model, 1 cm
# of end-effector offset gives 0.05 (along the camera's line of sight) to 0.10 (across it), 2 cm
# 0.07-0.17 (means over 30 poses); 0.06 asks for about 1 cm.
SUBGOAL_ENERGY = 0.06


@dataclass
class EpisodeResult:
    index: int
    success: bool
    start_distance_m: float
    final_distance_m: float
    min_distance_m: float
    moves: int
    task_success: bool | None = None  # the simulator's own check (robosuite), where it has one
    goals_reached: int | None = None  # index of the (sub-)goal pursued when the episode ended
    # The first executed plan after which the task judged the episode a success (lift: robosuite's own check).
    first_success_step: int | None = None
    plan_s: list[float] = field(default_factory=list)
    energies: list[float] = field(default_factory=list)
    distances_m: list[float] = field(default_factory=list)
    # The measured gripper after each step (0 open .. 1 closed): whether a dropped cube was let go or slipped.
    grippers: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class EvalPlan:
    """What one evaluation run asks for."""

    env: str
    task: str
    episodes: int
    seed: int
    steps: int
    radius: float
    planner: dict
    # Episode i is the same wherever it runs (seed sequence (seed, i)), so a long evaluation can be split
    # into shards (first_episode, episodes) run apart and merged (`merge_summaries`).
    first_episode: int = 0
    rate: float | None = None  # control Hz; None: the arm's own, slowed to what the planner keeps up with
    # The paper's loop (ArmClient blocking mode): hold, send one observation, wait for its plan, execute
    # it for one period, repeat. Every plan is fresh however slow it is, with no pacing to measure first.
    blocking: bool = False
    # End an episode at its first success, as robomimic's and LIBERO's rollouts of robosuite tasks do;
    # otherwise it runs all its steps and is judged at the end (still holding the lifted cube, say).
    until_success: bool = False
    out: Path = Path("demo-out")
    label: str = "demo"


def run_episodes(plan: EvalPlan, service: ServiceClient, bridge_endpoint: str, arm, limits: SafetyLimits,
                 log=print, on_episode=None) -> list[EpisodeResult]:
    """The episodes' results; `on_episode(results so far)` after each one (a killed run keeps those)."""
    plan.out.mkdir(parents=True, exist_ok=True)
    # The planner searches the box the arm accepts (robosuite's table is below its base: z < 0).
    planner = {"workspace_min": list(limits.workspace_low), "workspace_max": list(limits.workspace_high),
               **plan.planner}
    plan = dataclasses.replace(plan, planner=planner)
    if not plan.blocking:
        rate = plan.rate or control_rate(service, arm, plan.planner)
        if rate < MIN_CONTROL_HZ:
            # Pacing this slow is refused by the bridge (the hello would be invalid and the arm never
            # welcomed); the blocking loop keeps every executed plan fresh however slow planning is.
            log(f"planning needs a period of {1 / rate:.0f} s, slower than the bridge's slowest rate "
                f"({MIN_CONTROL_HZ} Hz): the blocking loop instead")
            plan = dataclasses.replace(plan, blocking=True, rate=None)
    if plan.blocking:
        rate = plan.rate or arm.control_hz
        log(f"blocking loop at {rate:.2f} Hz (each executed plan answers the observation just before it)")
    else:
        log(f"control rate {rate:.2f} Hz (each plan must arrive within one period)")
    results = []
    last = plan.first_episode + plan.episodes
    for index in range(plan.first_episode, last):
        episode = make_episode(plan.env, arm, np.random.default_rng([plan.seed, index]), plan.task)
        goal_ids = [service.upload_goal(image, f"{plan.task} episode {index} goal {number}")
                    for number, image in enumerate(episode.goal_images)]
        robot_id = f"eval-{plan.seed}-{index}"
        schedule = {}
        if len(goal_ids) > 1:
            # Move on once the image matches the sub-goal to within about 1 cm of arm motion
            # (SUBGOAL_ENERGY), or after an equal share of the steps; the last goal gets the rest.
            schedule = {"subgoal_max_steps": max(1, plan.steps // (len(goal_ids) + 1)),
                        "subgoal_energy_threshold": SUBGOAL_ENERGY}
        session = service.create_session({"robot_id": robot_id, "goal_ids": goal_ids,
                                          "planner": {**plan.planner, "seed": index}, **schedule})
        recorder = _Recorder(episode, index, plan.steps, plan.radius, plan.until_success)
        # Raw frames: JPEG would change the 64 px pixels the model was trained on.
        client = ArmClient(arm, bridge_endpoint, robot_id, rate, limits, image_format="raw", subscribers=[recorder],
                           blocking=plan.blocking)
        recorder.client = client
        try:
            # The recorder stops the loop after `steps` executed plans; the cap only guards against
            # a service that stops answering.
            client.run(max_steps=10 * plan.steps + 10)
        finally:
            client.close()
            stopped = service.stop_session(session["id"])
        result = recorder.result()
        result.goals_reached = stopped["goal_index"] if stopped else None
        results.append(result)
        write_episode_media(plan.out, index, recorder.frames, episode.goal_image, result.final_distance_m)
        if on_episode is not None:
            on_episode(results)
        subgoal = (f", on sub-goal {result.goals_reached + 1}/{len(goal_ids)}"
                   if len(goal_ids) > 1 and result.goals_reached is not None else "")
        log(f"episode {index + 1}/{last}: {'success' if result.success else 'failure'}, "
            f"distance {100 * result.start_distance_m:.1f} -> {100 * result.final_distance_m:.1f} cm "
            f"in {result.moves} steps, plan {np.mean(result.plan_s or [np.nan]):.3f} s/action{subgoal}")
    return results


def control_rate(service: ServiceClient, arm, planner: dict) -> float:
    """The arm's rate, or slower when the service plans slower than one period.

    A plan that arrives a period late was made from an image the arm has already moved away
    from; pacing the loop to the measured planning time keeps every executed plan fresh.
    """
    observation = arm.observe()
    goal_id = service.upload_goal(observation.image, "eval warm-up")
    # The goal is the current image, so arrival would hold without planning: time real plans.
    session = service.create_session({"robot_id": "eval-warm-up", "goal_id": goal_id,
                                      "planner": {**planner, "arrival_energy": None, "arrival_release_energy": None}})
    try:
        times = [service.act_seconds(session["id"], observation.image, observation.state, seq) for seq in range(4)]
    finally:
        service.stop_session(session["id"])
    slowest = max(times[1:])  # the first plan pays one-off warm-up costs
    return min(arm.control_hz, 1.0 / (2.0 * slowest + 0.05))


class _Recorder(Subscriber):
    """Arm-client subscriber: frames, distances, energies and plan times; stops after `steps` fresh plans,
    or at the first success when `until_success`."""

    def __init__(self, episode: Episode, index: int, steps: int, radius: float, until_success: bool = False):
        self.episode = episode
        self.index = index
        self.steps = steps
        self.radius = radius
        self.until_success = until_success
        self.first_success_step: int | None = None
        self.frames = [episode.start_image]
        self.start_distance = episode.distance()
        self.distances: list[float] = []
        self.grippers: list[float] = []
        self.energies: list[float] = []
        self.plan_s: list[float] = []
        self._seen_actions: set[int] = set()
        self.client = None  # the ArmClient to stop once the step budget is spent

    def on_step(self, step) -> None:
        # A control step is a fresh plan executed. Periods that only re-send an already executed
        # target (the plan for the newest image is still being computed) or hold are not counted.
        if step.command != "move" or step.action.seq in self._seen_actions:
            return
        self._seen_actions.add(step.action.seq)
        self.energies.append(float(step.action.energy))
        if np.any(step.action.delta):  # a zero delta is a hold on arrival: nothing was planned
            self.plan_s.append(step.action.planning_ms / 1000.0)
        self.distances.append(self.episode.distance())
        self.grippers.append(float(self.episode.arm.state()[6]))
        self.frames.append(self.episode.arm.render())
        if self.first_success_step is None and self.episode.succeeded(self.radius):
            self.first_success_step = len(self.distances)
        done = len(self.distances) >= self.steps or (self.until_success and self.first_success_step is not None)
        if done and self.client is not None:
            self.client.request_stop()

    def result(self) -> EpisodeResult:
        final = self.episode.distance()
        success, task_success = self.episode.succeeded(self.radius), self.episode.task_success()
        if self.until_success and self.first_success_step is not None:
            # Judged where the episode ended, at the step that passed (as robomimic reads it): a cube
            # lifted just past robosuite's line can sag a millimetre below it while the arm holds after.
            success, task_success = True, (None if task_success is None else True)
        return EpisodeResult(index=self.index, success=success,
                             start_distance_m=self.start_distance, final_distance_m=final,
                             min_distance_m=min([self.start_distance, *self.distances]), moves=len(self.distances),
                             task_success=task_success, plan_s=self.plan_s, energies=self.energies,
                             distances_m=self.distances, grippers=self.grippers,
                             first_success_step=self.first_success_step)


def summarize(plan: EvalPlan, results: list[EpisodeResult]) -> dict:
    plan_times = [t for r in results for t in r.plan_s]
    successes = sum(r.success for r in results)
    summary = {
        "env": plan.env,
        "task": plan.task,
        "model": plan.label,
        "seed": plan.seed,
        "episodes": len(results),
        "episode_indices": [r.index for r in results],
        "successes": successes,
        "success_rate": successes / len(results),
        "success_radius_m": plan.radius,
        # Looser reading ("got there at some step"), reported beside the strict end-of-episode one.
        "reached_at_any_step": sum(r.min_distance_m < plan.radius for r in results),
        # Judged a success by the task after some step (lift: robosuite's check); with `until_success` the
        # episode ended there and this equals `successes`.
        "succeeded_at_some_step": sum(r.first_success_step is not None for r in results),
        "until_success": plan.until_success,
        "mean_final_distance_m": float(np.mean([r.final_distance_m for r in results])),
        "mean_start_distance_m": float(np.mean([r.start_distance_m for r in results])),
        "mean_plan_s": float(np.mean(plan_times)) if plan_times else None,
        "max_plan_s": float(np.max(plan_times)) if plan_times else None,
        "steps": plan.steps,
        "planner": plan.planner,
    }
    checked = [r.task_success for r in results if r.task_success is not None]
    if checked:
        summary["task_success_rate"] = sum(checked) / len(checked)  # e.g. robosuite's own _check_success()
    return summary


def write_summary(plan: EvalPlan, results: list[EpisodeResult], summary: dict) -> None:
    plot_energies(plan.out / "energy.png", [r.energies for r in results], [r.distances_m for r in results],
                  [r.success for r in results])
    detail = {**summary, "episodes_detail": [asdict(r) for r in results]}
    partial = plan.out / "summary.json.partial"   # replaced whole: a run killed mid-write keeps the last one
    partial.write_text(json.dumps(detail, indent=2))
    partial.replace(plan.out / "summary.json")


# What makes two summaries shards of one evaluation.
_SAME_EVALUATION = ("env", "task", "model", "seed", "steps", "success_radius_m", "planner", "until_success")


def merge_summaries(paths: list[Path]) -> tuple[EvalPlan, list[EpisodeResult]]:
    """The plan and episodes of one evaluation from its shards' summary.json files (each episode once)."""
    shards = [json.loads(Path(path).read_text()) for path in paths]
    for shard in shards:
        shard.setdefault("until_success", False)  # summaries written before episodes could end at a success
    first = shards[0]
    for path, shard in zip(paths[1:], shards[1:]):
        differing = [key for key in _SAME_EVALUATION if shard.get(key) != first.get(key)]
        if differing:
            raise ValueError(f"{path} is another evaluation than {paths[0]}: {', '.join(differing)} differ")
    results = sorted((EpisodeResult(**episode) for shard in shards for episode in shard["episodes_detail"]),
                     key=lambda result: result.index)
    repeated = sorted(index for index, count in Counter(result.index for result in results).items() if count > 1)
    if repeated:
        raise ValueError(f"episodes {repeated} are in more than one shard")
    plan = EvalPlan(env=first["env"], task=first["task"], episodes=len(results), seed=first["seed"],
                    steps=first["steps"], radius=first["success_radius_m"], planner=first["planner"],
                    until_success=first["until_success"], label=first["model"])
    return plan, results
