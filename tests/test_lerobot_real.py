"""A `jepa-planner collect` dataset read, iterated and edited by LeRobot 0.4.4 itself (tests/lerobot_check.py).

LeRobot lives in its own venv (its pins clash with ours): `make lerobot-check` makes it and runs this.
Without that venv the test is skipped and says how to get it.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from robot_bridge import collect
from robot_bridge.episodes import EpisodeReader

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("LEROBOT_VENV", ROOT / ".lerobot-venv"))
PYTHON = VENV / "bin" / "python"


def lerobot_available() -> bool:
    if not PYTHON.is_file():
        return False
    probe = subprocess.run([str(PYTHON), "-c", "import lerobot, datasets, pandas"], capture_output=True, timeout=120)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("video", [False, True], ids=["png", "video"])
def test_lerobot_loads_iterates_and_edits_a_collected_dataset(tmp_path, video):
    if not lerobot_available():
        pytest.skip(f"no LeRobot 0.4.4 venv at {VENV}: run `make lerobot-check` (or set LEROBOT_VENV)")
    dataset = tmp_path / "collected"
    collect.collect(dataset, episodes=4, steps=5, image_size=32, seed=1, progress=False, video=video)
    expected = tmp_path / "frames.npy"
    np.save(expected, EpisodeReader(dataset).all_frames(cache=False))
    result = subprocess.run([str(PYTHON), str(ROOT / "tests" / "lerobot_check.py"), str(dataset), str(tmp_path / "work"),
                             str(expected)],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": ""})
    checks = [line for line in result.stdout.splitlines() if line.startswith(("ok ", "FAIL"))]
    print("\n".join(checks), file=sys.stderr)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "lerobot check passed" in result.stdout and len(checks) >= 12
