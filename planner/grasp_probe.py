"""`jepa-planner probe-grasp`: does a world model know that a closed hand carries the cube?

Lifting with visual sub-goals needs the predictor to imagine the cube rising with a closed hand and
staying with an open one; otherwise "close, then raise" and "raise" score the same against the
raised sub-goal and CEM's choice of gripper is a coin toss. On scenes from `jepa-planner
grasp-scenes`, this compares:

- real gap: energy of the real "raise without closing" outcome minus that of "close, then raise",
  both against the raised sub-goal (what the encoder sees happen);
- imagined gap: the same difference for the frames the predictor imagines from the start frame for
  the same two achieved actions (what the planner would see);
- where each imagined frame lies: its distance to the real carried frame and to the real left-behind
  one (a predictor that ignores the gripper imagines both branches nearest the same outcome).

An imagined gap near zero while the real one is clearly positive says the predictor, not the
planner or the sub-goals, is what keeps lift from working. Where the file has them (`hold_` keys), the
same gaps at the end of the lift: against the lifted goal, keeping the hand closed around the carried
cube against opening it (the cube falls). A model that never saw a let-go imagines the opened hand still
holding, and a planner at the goal is then free to open it. `--plan SAMPLESxITERATIONS` also plans
once from each scene against the raised sub-goal, as the lift evaluation does (horizon 2): does the
planner close first, and how far does that first step move the hand (off the cube, it closes on nothing)?
"""
from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

from planner.energy import frame_distance
from planner.pose import chain_poses, pose_difference
# The scene file's layout, from its writer (torch-free, imports no simulator).
from robot_bridge.evaluation.grasp_scenes import BRANCHES as SCENE_BRANCHES, HOLD_PREFIX

BRANCHES = tuple(SCENE_BRANCHES)  # ("closed", "open")
REQUIRED_KEYS = ("start_image", "start_state", "goal_image",
                 *(f"{branch}_{part}" for branch in BRANCHES for part in ("states", "image")))


ACTION_MEANINGS = ("achieved", "commanded-delta")  # the labels a model was trained on (`train --action-meaning`)


def scene_gaps(model, scenes: dict[str, np.ndarray], prefix: str = "",
               action_meaning: str = "achieved") -> list[dict[str, float]]:
    """Per scene: real and imagined final-frame energies of both branches against the goal
    (`prefix` picks the scenes: "" at the cube, HOLD_PREFIX at the lifted goal). The imagined
    frames are conditioned on the actions in the model's own labels: the achieved pose changes,
    or the ones each period asked for (robosuite's gripper lags its command by a period)."""
    scenes = {key[len(prefix):]: value for key, value in scenes.items() if key.startswith(prefix)}
    rows = []
    for index in range(len(scenes["start_image"])):
        start_latent = model.encode(scenes["start_image"][index])
        goal = model.encode(scenes["goal_image"][index])[0]
        start_state = torch.as_tensor(scenes["start_state"][index], dtype=torch.float32)
        row: dict[str, float] = {}
        real = {branch: model.encode(scenes[f"{branch}_image"][index])[0] for branch in BRANCHES}
        for branch in BRANCHES:
            if action_meaning == "commanded-delta":
                actions = torch.as_tensor(scenes[f"{branch}_commanded"][index], dtype=torch.float32)
            else:
                states = torch.as_tensor(scenes[f"{branch}_states"][index], dtype=torch.float32)
                actions = pose_difference(torch.cat([start_state[None], states[:-1]]), states)
            # The states the planner would feed: its own chained poses (the real ones for achieved labels).
            imagined = model.rollout(start_latent, actions[None], chain_poses(start_state, actions)[None, :-1])[0, -1]
            row[f"imagined_{branch}"] = float(frame_distance(imagined, goal))
            row[f"real_{branch}"] = float(frame_distance(real[branch], goal))
            for outcome in BRANCHES:
                row[f"imagined_{branch}_to_real_{outcome}"] = float(frame_distance(imagined, real[outcome]))
        row["real_gap"] = row["real_open"] - row["real_closed"]
        row["imagined_gap"] = row["imagined_open"] - row["imagined_closed"]
        rows.append(row)
    return rows


GRIPPER_CLOSING = 0.25   # a planned gripper delta at least this large closes (smaller ones are rounded to 0)
# robosuite's gripper only opens or closes: the robosuite arm opens it for a planned delta below minus its
# deadband (robot_bridge.robosuite_arm.GRIPPER_DEADBAND, not imported: the planner does not need the arm side).
GRIPPER_OPENING = -0.1
HOLD_PLAN_SEEDS = 4  # plans per held scene: a let-go a few plans in ten is already a dropped cube per episode


def first_plans(model, scenes: dict[str, np.ndarray], samples: int, iterations: int, prefix: str = "",
                seeds: int = 1) -> list[dict[str, float]]:
    """Per scene and seed: the lift planner's first planned step from the scene's start (horizon 2, top-k 10,
    maxnorm 0.05 as `eval --task lift` plans) against its goal (at the cube: the raised sub-goal; with
    HOLD_PREFIX: the lifted goal): its gripper delta, how far it moves the hand, the second step's rise."""
    from planner.config import PlannerConfig
    from planner.controller import RecedingHorizonController

    rows = []
    for index in range(len(scenes[prefix + "start_image"])):
        goal = model.encode(scenes[prefix + "goal_image"][index])[0]
        start = model.encode(scenes[prefix + "start_image"][index])[0]
        state = torch.as_tensor(scenes[prefix + "start_state"][index], dtype=torch.float32)
        for seed in range(seeds):
            config = PlannerConfig(horizon=2, samples=samples, iterations=iterations, topk=10, maxnorm=0.05,
                                   seed=index + 1000 * seed)
            plan = RecedingHorizonController(model, config, goal).step(start, state).plan.cpu()
            rows.append({"first_gripper": float(plan[0, 6]), "first_move_m": float(plan[0, :3].norm()),
                         "second_rise_m": float(plan[1, 2])})
    return rows


def summarize(rows: list[dict[str, float]]) -> dict[str, float]:
    """Means over the scenes of the gaps and of where each imagined frame lies."""
    means = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
    real, imagined = means["real_gap"], means["imagined_gap"]
    where = {key: value for key, value in means.items() if "_to_real_" in key}
    return {"scenes": len(rows), "real_gap": real, "imagined_gap": imagined,
            "imagined_over_real": imagined / real if real > 0 else float("nan"), **where}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenes", type=Path, required=True, help="the .npz from `jepa-planner grasp-scenes`")
    parser.add_argument("--model", default="robosuite", help="embedded model, .safetensors or .pt (default %(default)s)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="compute dtype, as `serve --dtype` (default %(default)s)")
    parser.add_argument("--action-meaning", choices=ACTION_MEANINGS, default="achieved",
                        help="the action labels the model was trained on, as `train --action-meaning` "
                             "(default %(default)s)")
    parser.add_argument("--plan", metavar="SAMPLESxITERATIONS", default=None,
                        help="also plan once from each scene as the lift evaluation does (horizon 2), e.g. 400x10")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")


def run(args: argparse.Namespace) -> int:
    from world_model import load_world_model

    try:
        budget = parse_budget(args.plan)
        with np.load(args.scenes) as data:
            scenes = {key: data[key] for key in data.files}
        missing = set(REQUIRED_KEYS) - set(scenes)
        if missing:
            raise ValueError(f"not a grasp-scenes file: it lacks {', '.join(sorted(missing))}")
        if args.action_meaning == "commanded-delta" and f"{BRANCHES[0]}_commanded" not in scenes:
            raise ValueError("this grasp-scenes file has no commanded actions (recorded before them): "
                             "record it again for --action-meaning commanded-delta")
        model = load_world_model(args.model, device=args.device, dtype=args.dtype)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        print(f"jepa-planner probe-grasp: {error}", file=sys.stderr)
        return 2
    rows = scene_gaps(model, scenes, action_meaning=args.action_meaning)
    for index, row in enumerate(rows):
        print(f"scene {index}: real closed {row['real_closed']:.3f} open {row['real_open']:.3f} | "
              f"imagined closed {row['imagined_closed']:.3f} open {row['imagined_open']:.3f}")
    summary = {"model": args.model, "dtype": args.dtype, "action_meaning": args.action_meaning, **summarize(rows)}
    print(f"open-minus-closed energy gap against the raised sub-goal: real {summary['real_gap']:.3f}, "
          f"imagined {summary['imagined_gap']:.3f} ({100 * summary['imagined_over_real']:.0f}% of real)")
    for branch in BRANCHES:
        print(f"imagined '{branch}' branch: {summary[f'imagined_{branch}_to_real_closed']:.3f} from the real carried "
              f"frame, {summary[f'imagined_{branch}_to_real_open']:.3f} from the real left-behind one")
    if all(HOLD_PREFIX + key in scenes for key in REQUIRED_KEYS):
        hold = summarize(scene_gaps(model, scenes, HOLD_PREFIX, args.action_meaning))
        summary["hold"] = {key: hold[key] for key in ("real_gap", "imagined_gap", "imagined_over_real")}
        print(f"open-minus-closed energy gap holding the cube at the lifted goal: real {hold['real_gap']:.3f}, "
              f"imagined {hold['imagined_gap']:.3f} ({100 * hold['imagined_over_real']:.0f}% of real)")
    if budget is not None:
        plans = first_plans(model, scenes, *budget)
        closing = [plan for plan in plans if plan["first_gripper"] >= GRIPPER_CLOSING]
        summary.update(plan=args.plan, plans_closing_first=len(closing),
                       mean_first_move_m=float(np.mean([plan["first_move_m"] for plan in plans])),
                       mean_second_rise_m=float(np.mean([plan["second_rise_m"] for plan in plans])))
        print(f"planning {args.plan} at horizon 2 from each scene: closes first in {len(closing)}/{len(plans)}, "
              f"first step moves the hand {100 * summary['mean_first_move_m']:.1f} cm, the second raises it "
              f"{100 * summary['mean_second_rise_m']:.1f} cm (means)")
        if "hold" in summary:
            held = first_plans(model, scenes, *budget, prefix=HOLD_PREFIX, seeds=HOLD_PLAN_SEEDS)
            opening = [plan for plan in held if plan["first_gripper"] < GRIPPER_OPENING]
            summary["hold"].update(plans=len(held), plans_opening_first=len(opening))
            print(f"planning {args.plan} from the held cube against the lifted goal: opens the hand first in "
                  f"{len(opening)}/{len(held)} plans ({HOLD_PLAN_SEEDS} seeds per scene)")
    if args.json:
        print(json.dumps(summary))
    return 0


def parse_budget(text: str | None) -> tuple[int, int] | None:
    """`--plan 400x10` -> (400, 10)."""
    if text is None:
        return None
    samples, _, iterations = text.lower().partition("x")
    if not (samples.isdigit() and iterations.isdigit()) or int(samples) < 10 or int(iterations) < 1:
        raise ValueError(f"--plan takes SAMPLESxITERATIONS with at least 10 samples (the elites), e.g. 400x10; got {text!r}")
    return int(samples), int(iterations)

