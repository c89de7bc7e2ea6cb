"""A real reflex on franka-sim (issue 11): with franka-sim enforcing the FCI's motion limits, a motion is
aborted by a reflex; the arm holds, reports the fault, refuses targets until recovery is requested,
then runs the library's error recovery and accepts targets again. Runs the adapters in .venv-arm
(franky and pylibfranka cannot share a process with each other, and the main venv has neither).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap

import pytest

from test_franka_sim import ARM_VENV, FR3_MODEL, FRANKA_PORTS, REPO, SIM_VENV, _missing_venvs, _port_busy, _wait

pytestmark = pytest.mark.slow

# One script per library: command a 1 cm move until a reflex aborts it (with limits enforced, franka-sim
# aborts even franky's motions here: it sees the missed cycles of a loaded machine as discontinuities), try more targets while
# faulted, request recovery, and report what the arm said at each stage as one JSON line.
SCRIPT = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    from robot_bridge.cameras import ReplayCamera
    robot, folder = sys.argv[1], sys.argv[2]
    if robot == "franky":
        from robot_bridge.franka.franky_arm import FrankyArm as Adapter
    else:
        from robot_bridge.franka.libfranka_arm import LibfrankaArm as Adapter
    arm = Adapter("127.0.0.1", ReplayCamera(folder, (16, 16)), dynamics=0.5, gripper=False)
    if robot == "libfranka":
        arm.start()
    target = arm.observe().state.copy()
    target[0] += 0.01
    deadline = time.monotonic() + 60
    while arm.fault is None and time.monotonic() < deadline:
        arm.move_to(target)
        time.sleep(0.25)
        arm.hold()
    faulted = dict(arm.stats())
    for _ in range(3):
        arm.move_to(target)
    refused = arm.stats()["refused_while_faulted"]
    arm.request_recovery()
    arm.hold()
    recovered = dict(arm.stats())
    arm.close()
    print(json.dumps({"faulted": faulted, "refused": refused, "recovered": recovered}))
""")


@pytest.fixture(scope="module")
def strict_franka_sim(tmp_path_factory):
    reason = _missing_venvs()
    if reason:
        pytest.skip(reason)
    if any(_port_busy(port) for port in FRANKA_PORTS):
        pytest.skip("ports 1337/1338 are taken (another franka-sim or a robot bridge runs here)")
    log = tmp_path_factory.mktemp("strict-franka-sim") / "sim.log"
    with open(log, "w") as out:
        process = subprocess.Popen([str(SIM_VENV / "bin" / "run-franka-sim-server"), "--enforce-motion-limits"],
                                   stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "FR3_MJCF": str(FR3_MODEL)},
                                   start_new_session=True)
    try:
        _wait(lambda: process.poll() is not None or _port_busy(1337), 60, "franka-sim listening")
        assert process.poll() is None, f"franka-sim exited: {log.read_text()[-2000:]}"
        yield process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)


@pytest.mark.parametrize("robot", ["franky", "libfranka"])
def test_a_reflex_holds_the_arm_reports_it_and_recovery_continues_on_request(robot, strict_franka_sim, tmp_path):
    import cv2
    import numpy as np

    cv2.imwrite(str(tmp_path / "frame.png"), np.zeros((16, 16, 3), np.uint8))
    result = subprocess.run([str(ARM_VENV / "bin" / "python"), "-c", SCRIPT, robot, str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    faulted, recovered = report["faulted"], report["recovered"]
    assert faulted["faults"] == 1 and "aborted" in faulted["fault"], faulted     # reported, with the library's reason
    assert report["refused"] >= 3                                                # held: targets refused while faulted
    assert recovered["recoveries"] == 1 and "fault" not in recovered, recovered  # recovery on request clears it
    print(f"\n{robot}: {faulted['fault'].splitlines()[0]}")
