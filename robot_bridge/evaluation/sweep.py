"""Quality per compute: success rate against seconds per action for several planners and search budgets.

Every cell of the sweep (task x planner x budget) is one run of the evaluation harness
(`run_episodes`) against the same service, on the same episodes (episode i of every cell starts
from the seed sequence (seed, i)), with the same noise seed per episode. Planners differ only in
what the session's `planner` dict says:

* `cold-cem`: the official planner as a loop of official `cem()` calls would run it (SPEC section 7):
  every control step starts from the official initial distribution (`warm_start: false`).
* `warm-cem`: the same CEM, each step starting from the previous plan shifted by one step.
* `warm-icem`: iCEM (coloured noise, elites and the mean carried between iterations), warm-started.

All three use the official `WorldModel` elite count and momenta (topk 10, 0.15 everywhere) and
maxnorm 0.05 (the official default, and the arm's 5 cm step limit).
"""
from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

from .harness import EvalPlan, run_episodes, summarize, write_summary

OFFICIAL_SEARCH = {"topk": 10, "momentum_mean": 0.15, "momentum_std": 0.15, "momentum_mean_gripper": 0.15,
                   "momentum_std_gripper": 0.15, "maxnorm": 0.05}
PLANNERS = {
    "cold-cem": {"optimizer": "cem", "warm_start": False},
    "warm-cem": {"optimizer": "cem", "warm_start": True},
    "warm-icem": {"optimizer": "icem", "warm_start": True},
}
REFERENCE = ("cold-cem", "400x10h2")  # the official default: 400 samples x 10 iterations at horizon 2, cold
CLAIM_TIME_FRACTION = 0.1  # the claim: the reference's success at a tenth of its planning time or less
DEFAULT_HORIZON = 2
_BUDGET = re.compile(r"^(\d+)x(\d+)(?:h(\d+))?(?::(\d+))?$")


@dataclass(frozen=True)
class Budget:
    """One search budget: `SxI[hH][:N]` = S samples x I iterations at horizon H (default 2), with at
    most N episodes per cell (default: as many as the task asks)."""

    samples: int
    iterations: int
    horizon: int = DEFAULT_HORIZON
    max_episodes: int | None = None

    @property
    def name(self) -> str:
        return f"{self.samples}x{self.iterations}h{self.horizon}"

    @property
    def rollout_cost(self) -> int:
        """samples x iterations x horizon: the plan budget's unit before tokens per frame."""
        return self.samples * self.iterations * self.horizon

    @classmethod
    def parse(cls, text: str) -> "Budget":
        match = _BUDGET.match(text.strip())
        if match is None:
            raise ValueError(f"budget {text!r} is not SAMPLESxITERATIONS[hHORIZON][:EPISODES], e.g. 400x10h2 or 800x10h1:2")
        samples, iterations = int(match[1]), int(match[2])
        horizon = int(match[3]) if match[3] else DEFAULT_HORIZON
        cap = int(match[4]) if match[4] else None
        if samples < 10 or iterations < 1 or horizon < 1 or (cap is not None and cap < 1):
            raise ValueError(f"budget {text!r}: need at least 10 samples (the official top-k), one iteration, "
                             f"horizon >= 1 and at least one episode")
        return cls(samples, iterations, horizon, cap)


def parse_episodes(tokens: list[str], tasks: list[str]) -> dict[str, int]:
    """`["6"]` -> every task 6; `["reach=6", "push=2"]` -> per task (a bare number sets the rest)."""
    counts: dict[str, int] = {}
    default = None
    for token in tokens:
        task, _, number = token.rpartition("=")
        try:
            value = int(number)
        except ValueError:
            raise ValueError(f"--episodes takes N or TASK=N, got {token!r}") from None
        if value < 1:
            raise ValueError(f"--episodes must be at least 1, got {token!r}")
        if task:
            if task not in tasks:
                raise ValueError(f"--episodes names {task!r}, which is not one of the sweep's tasks {tasks}")
            counts[task] = value
        else:
            default = value
    missing = [task for task in tasks if task not in counts]
    if missing and default is None:
        raise ValueError(f"--episodes gives no count for {', '.join(missing)}")
    return {task: counts.get(task, default) for task in tasks}


@dataclass(frozen=True)
class Cell:
    task: str
    planner: str
    budget: Budget
    episodes: int

    @property
    def key(self) -> tuple[str, str, str, int]:
        return self.task, self.planner, self.budget.name, self.episodes

    @property
    def name(self) -> str:
        return f"{self.task}-{self.planner}-{self.budget.name}"

    def planner_settings(self) -> dict:
        return {**OFFICIAL_SEARCH, **PLANNERS[self.planner], "samples": self.budget.samples,
                "iterations": self.budget.iterations, "horizon": self.budget.horizon, "arrival_energy": None}


def plan_cells(tasks: list[str], planners: list[str], budgets: list[Budget], episodes: dict[str, int]) -> list[Cell]:
    """Cells in the order they run: per task, cheapest budget first, every planner at each budget."""
    ordered = sorted(budgets, key=lambda budget: budget.rollout_cost)
    return [Cell(task, planner, budget, min(episodes[task], budget.max_episodes or episodes[task]))
            for task in tasks for budget in ordered for planner in planners]


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate (sane at 0/N and N/N, unlike the normal one)."""
    if trials == 0:
        return 0.0, 1.0
    rate = successes / trials
    denominator = 1 + z * z / trials
    centre = (rate + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials * trials)) / denominator
    # Exact ends at 0/N and N/N (the formula lands a rounding error inside, e.g. 6/6 -> 0.9999999999999999).
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high


def run_cell(cell: Cell, *, env: str, seed: int, steps: dict[str, int], radius: dict[str, float], blocking: bool,
             media: Path, label: str, service, endpoint: str, arm, limits, log=print) -> dict:
    """One cell through the evaluation harness; its summary plus the interval and wall time."""
    plan = EvalPlan(env=env, task=cell.task, episodes=cell.episodes, seed=seed, steps=steps[cell.task],
                    radius=radius[cell.task], planner=cell.planner_settings(), out=media / cell.name, label=label,
                    blocking=blocking)
    started = time.monotonic()
    results = run_episodes(plan, service, endpoint, arm, limits, log=log)
    wall_s = time.monotonic() - started
    summary = summarize(plan, results)
    write_summary(plan, results, summary)
    low, high = wilson_interval(summary["successes"], summary["episodes"])
    return {"task": cell.task, "planner": cell.planner, "budget": cell.budget.name, "samples": cell.budget.samples,
            "iterations": cell.budget.iterations, "horizon": cell.budget.horizon, "episodes": summary["episodes"],
            "successes": summary["successes"], "success_rate": summary["success_rate"], "wilson_low": low,
            "wilson_high": high, "mean_plan_s": summary["mean_plan_s"], "max_plan_s": summary["max_plan_s"],
            "mean_final_distance_m": summary["mean_final_distance_m"], "steps": summary["steps"],
            "success_radius_m": summary["success_radius_m"], "wall_s": wall_s, "planner_settings": summary["planner"]}


def claim(cells: list[dict]) -> dict[str, dict]:
    """Per task: the reference cell (cold CEM 400x10 at horizon 2) and the best other cell that plans
    in at most a tenth of its time; `holds` when that cell's success rate is at least the reference's
    (None when neither succeeded in any episode: matching nothing proves nothing)."""
    verdicts = {}
    for task in dict.fromkeys(cell["task"] for cell in cells):
        mine = [cell for cell in cells if cell["task"] == task and cell["mean_plan_s"] is not None]
        reference = next((c for c in mine if (c["planner"], c["budget"]) == REFERENCE), None)
        if reference is None:
            continue
        limit = CLAIM_TIME_FRACTION * reference["mean_plan_s"]
        cheap = [c for c in mine if c is not reference and c["mean_plan_s"] <= limit]
        best = max(cheap, key=lambda c: (c["success_rate"], -c["mean_plan_s"]), default=None)
        verdicts[task] = {
            "reference": _cell_ref(reference), "time_limit_s": limit,
            "best_within_limit": _cell_ref(best) if best else None,
            "holds": (None if reference["successes"] == 0 and not (best and best["successes"])
                      else bool(best and best["success_rate"] >= reference["success_rate"])),
        }
    return verdicts


def _cell_ref(cell: dict) -> dict:
    return {key: cell[key] for key in ("planner", "budget", "episodes", "successes", "success_rate", "wilson_low",
                                       "wilson_high", "mean_plan_s")}


def load_saved(path: Path, match: dict) -> tuple[list[dict], list[str]]:
    """The cells and commands saved in `path` when its context agrees with `match` on every key of it
    (--resume); nothing otherwise."""
    if not path.exists():
        return [], []
    saved = json.loads(path.read_text())
    context = saved.get("context", {})
    if any(context.get(key) != value for key, value in match.items()):
        return [], []
    return saved["cells"], context.get("commands", [])


def sweep_order(cells: list[dict]) -> list[dict]:
    """Table order: task (as first measured), budget by rollout cost, then planner."""
    tasks = list(dict.fromkeys(cell["task"] for cell in cells))
    planners = list(PLANNERS)
    return sorted(cells, key=lambda c: (tasks.index(c["task"]), c["samples"] * c["iterations"] * c["horizon"],
                                        c["horizon"], planners.index(c["planner"]) if c["planner"] in planners else 99))


def write_report(out: Path, context: dict, cells: list[dict]) -> dict:
    """quality_per_compute.json, .md and .png under `out`; returns the claim verdicts."""
    out.mkdir(parents=True, exist_ok=True)
    cells = sweep_order(cells)
    verdicts = claim(cells)
    (out / "quality_per_compute.json").write_text(json.dumps({"context": context, "cells": cells, "claim": verdicts},
                                                              indent=2))
    (out / "quality_per_compute.md").write_text(markdown_table(context, cells, verdicts))
    plot(out / "quality_per_compute.png", cells, verdicts, context)
    return verdicts


def markdown_table(context: dict, cells: list[dict], verdicts: dict[str, dict]) -> str:
    lines = [
        "# Quality per compute",
        "",
        "Made by (each command adds or replaces its cells, `--resume` keeps the others):",
        "",
        *(f"    {command}" for command in context["commands"]),
        "",
        f"env {context['env']}, model {context['model']}, seed {context['seed']} (episode i of every cell is the "
        f"same start and goal), {context['loop']} loop, {context['threads'] or 'default'} planning thread(s). "
        "Success at the episode's end; 95% Wilson interval; seconds per action = the service's time from "
        "hand-off to answer (decode, encode, queue, solve), mean over executed plans.",
        "",
        "| task | planner | budget (samples x iterations, horizon) | episodes | successes | success rate (95% CI) "
        "| s / action | mean final distance |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cell in cells:
        seconds = f"{cell['mean_plan_s']:.3f}" if cell["mean_plan_s"] is not None else "-"
        lines.append(
            f"| {cell['task']} | {cell['planner']} | {cell['samples']} x {cell['iterations']}, H{cell['horizon']} "
            f"| {cell['episodes']} | {cell['successes']} | {100 * cell['success_rate']:.0f}% "
            f"({100 * cell['wilson_low']:.0f}-{100 * cell['wilson_high']:.0f}%) | {seconds} "
            f"| {100 * cell['mean_final_distance_m']:.1f} cm |")
    lines += ["", "## The claim: the official default's success at a tenth of its planning time or less", ""]
    if not verdicts:
        lines.append("No task has the reference cell (cold-cem 400x10h2), so the claim was not tested.")
    for task, verdict in verdicts.items():
        reference, best = verdict["reference"], verdict["best_within_limit"]
        text = (f"- **{task}**: reference cold-cem 400x10h2 {reference['successes']}/{reference['episodes']} "
                f"({_interval(reference)}) at {reference['mean_plan_s']:.3f} s/action; ")
        if verdict["holds"] is None:
            text += "neither it nor any cell within a tenth of its time succeeded in an episode: not tested."
        elif best is None:
            text += f"no cell planned within {verdict['time_limit_s']:.3f} s/action: not tested."
        else:
            text += (f"best within {verdict['time_limit_s']:.3f} s/action: {best['planner']} {best['budget']} "
                     f"{best['successes']}/{best['episodes']} ({_interval(best)}) at {best['mean_plan_s']:.3f} s/action "
                     f"({reference['mean_plan_s'] / best['mean_plan_s']:.0f}x faster): "
                     f"{'holds' if verdict['holds'] else 'fails'} on the point estimates")
            overlap = best["wilson_high"] >= reference["wilson_low"] and reference["wilson_high"] >= best["wilson_low"]
            text += " (the intervals overlap: these episode counts cannot tell the two apart)." if overlap else "."
        lines.append(text)
    return "\n".join(lines) + "\n"


def _interval(cell: dict) -> str:
    return f"{100 * cell['success_rate']:.0f}%, 95% CI {100 * cell['wilson_low']:.0f}-{100 * cell['wilson_high']:.0f}%"


def plot(path: Path, cells: list[dict], verdicts: dict[str, dict], context: dict) -> None:
    """Success rate (top) and mean final distance (bottom) vs seconds per action (log x), one line per
    planner through its budgets in order of cost, one column per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    tasks = list(dict.fromkeys(cell["task"] for cell in cells)) or ["-"]
    figure, axes = plt.subplots(2, len(tasks), figsize=(6 * len(tasks), 8), squeeze=False, sharex="col")
    for column, task in enumerate(tasks):
        top, bottom = axes[0][column], axes[1][column]
        for number, planner in enumerate(dict.fromkeys(cell["planner"] for cell in cells)):
            mine = [c for c in cells if c["task"] == task and c["planner"] == planner and c["mean_plan_s"] is not None]
            mine.sort(key=lambda c: (c["samples"] * c["iterations"] * c["horizon"], c["horizon"]))
            if not mine:
                continue
            jitter = 1 + 0.02 * (number - 1)  # planners at one time would hide each other's error bars
            x = [c["mean_plan_s"] * jitter for c in mine]
            # max(0, ...): a rate and its interval's end may differ by a rounding error
            errors = [[max(0.0, c["success_rate"] - c["wilson_low"]) for c in mine],
                      [max(0.0, c["wilson_high"] - c["success_rate"]) for c in mine]]
            line = top.errorbar(x, [c["success_rate"] for c in mine], yerr=errors, marker="o", capsize=3,
                                label=planner, alpha=0.85)
            distances = [100 * c["mean_final_distance_m"] for c in mine]
            bottom.plot(x, distances, marker="o", color=line[0].get_color(), label=planner, alpha=0.85)
            for c, xv, yv in zip(mine, x, distances):
                label = f"{c['samples']}x{c['iterations']}" + ("" if c["horizon"] == DEFAULT_HORIZON else f"h{c['horizon']}")
                bottom.annotate(label, (xv, yv), textcoords="offset points", xytext=(3, 3), fontsize=6,
                                color=line[0].get_color())
        if task in verdicts:
            verdict = verdicts[task]
            for axis in (top, bottom):
                axis.axvline(verdict["time_limit_s"], color="grey", linestyle="--", linewidth=1,
                             label="a tenth of the reference's time")
            top.axhline(verdict["reference"]["success_rate"], color="grey", linestyle=":", linewidth=1,
                        label="reference success (cold 400x10h2)")
        radius = next((c["success_radius_m"] for c in cells if c["task"] == task), None)
        if radius is not None:
            bottom.axhline(100 * radius, color="black", linestyle=":", linewidth=1, label="success radius")
        top.set_ylim(-0.05, 1.05)
        top.set_ylabel("success rate (95% Wilson interval)")
        top.set_title(f"{context['env']} {task}")
        bottom.set_ylim(bottom=0)
        bottom.set_ylabel("mean final distance (cm)")
        bottom.set_xlabel("seconds per action (log)")
        for axis in (top, bottom):
            axis.set_xscale("log")
            axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # labelled minor ticks overlap
            axis.grid(True, which="both", alpha=0.3)
            axis.legend(fontsize=7, loc="best")
    figure.suptitle(f"quality per compute: model {context['model']}, seed {context['seed']} (episodes per cell: "
                    "see the table)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def with_cells(existing: list[dict], cell: dict) -> list[dict]:
    """`existing` with `cell` added, replacing a cell of the same task, planner and budget."""
    return [c for c in existing if (c["task"], c["planner"], c["budget"]) != (cell["task"], cell["planner"], cell["budget"])] + [cell]


def done(existing: list[dict], cell: Cell, steps: int, radius_m: float) -> bool:
    """Whether `existing` has this cell with as many episodes, steps and the same success radius."""
    return any((c["task"], c["planner"], c["budget"], c["episodes"]) == cell.key and c["steps"] == steps
               and c["success_radius_m"] == radius_m for c in existing)

