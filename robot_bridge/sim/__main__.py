"""`python -m robot_bridge.sim [--json]`: the sim arm's accuracy and cost, measured now.

Accuracy: seeded random targets in the collection workspace, reached either in one step of up
to 7.5 cm per axis or as a long move (10-25 cm, like the demo's goals) with repeated commands.
Cost: milliseconds per camera frame at 64 and 256 px, per control period of physics, per IK solve.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from robot_bridge.poses import euler_to_matrix
from robot_bridge.sim import HOME_STATE, SimArm, SimConfig

WORKSPACE_LOW, WORKSPACE_HIGH = np.array([0.3, -0.25, 0.02]), np.array([0.65, 0.25, 0.35])


def _reach_errors(arm: SimArm, rng: np.random.Generator, trials: int) -> dict:
    single, long_moves = [], []
    for _ in range(trials):
        arm.reset(int(rng.integers(2**31)), randomize_arm=True)
        target = arm.state().copy()
        target[:3] = np.clip(target[:3] + rng.uniform(-0.075, 0.075, 3), WORKSPACE_LOW, WORKSPACE_HIGH)
        arm.move_to(target)
        single.append(np.linalg.norm(arm.state()[:3] - target[:3]))
        # A long move, commanded repeatedly like a controller holding a far goal.
        direction = rng.normal(size=3)
        goal = HOME_STATE.copy()
        goal[:3] = np.clip(arm.state()[:3] + rng.uniform(0.10, 0.25) * direction / np.linalg.norm(direction), WORKSPACE_LOW, WORKSPACE_HIGH)
        errors = []
        for _ in range(4):
            arm.move_to(goal)
            errors.append(np.linalg.norm(arm.state()[:3] - goal[:3]))
        long_moves.append(errors)
    single_mm, long_mm = np.array(single) * 1000, np.array(long_moves) * 1000
    return {
        "single_step_error_mm": {"median": float(np.median(single_mm)), "p95": float(np.percentile(single_mm, 95)), "max": float(single_mm.max())},
        "long_move_error_mm_after_periods": {
            str(period + 1): {"median": float(np.median(long_mm[:, period])), "max": float(long_mm[:, period].max())}
            for period in range(long_mm.shape[1])
        },
    }


def _milliseconds(call, repeats: int) -> float:
    call()
    started = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - started) / repeats * 1000


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m robot_bridge.sim", description=__doc__)
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    results = {}
    arm = SimArm(SimConfig(image_height=64, image_width=64), seed=args.seed)
    results.update(_reach_errors(arm, np.random.default_rng(args.seed), args.trials))
    results["render_ms_64px"] = _milliseconds(arm.render, 200)
    results["control_period_physics_ms"] = _milliseconds(arm.hold, 50)
    target = HOME_STATE.copy()
    target[:3] = [0.55, 0.1, 0.15]
    results["ik_solve_ms"] = _milliseconds(
        lambda: arm.ik.solve(target[:3], euler_to_matrix(target[3:6]), arm.home_joints), 50
    )
    arm.close()
    big = SimArm(SimConfig(image_height=256, image_width=256), seed=args.seed)
    results["render_ms_256px"] = _milliseconds(big.render, 50)
    big.close()
    single = results["single_step_error_mm"]
    print(f"one step of up to 7.5 cm/axis: error median {single['median']:.2f} mm, p95 {single['p95']:.2f} mm, max {single['max']:.2f} mm")
    for period, errors in results["long_move_error_mm_after_periods"].items():
        print(f"10-25 cm move, after {period} control period(s): median {errors['median']:.2f} mm, max {errors['max']:.2f} mm")
    print(
        f"render {results['render_ms_64px']:.2f} ms at 64 px, {results['render_ms_256px']:.2f} ms at 256 px; "
        f"physics {results['control_period_physics_ms']:.2f} ms per control period; IK {results['ik_solve_ms']:.2f} ms"
    )
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
