"""`jepa-planner convert-franka-example`: the V-JEPA 2 repo's 2-frame Franka clip as an episode.

The reference fixtures (`fixture_*_data.pt` in the repository's tests/fixtures/vjepa2, or in a
folder of JEPA_REFERENCE_DIR) embed the two 256x256 frames of the repo's
`franka_example_traj.npz` (`preprocessing.franka_uint8_THWC`) and their end-effector states
(`world_model.franka_states`). The result is a real-robot episode for replay and smoke tests:
its one action is the DROID label between the two states.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from robot_bridge.episodes import EpisodeWriter

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
# The golden fixtures travel with the repository (a fresh clone needs nothing beside it).
BUNDLED_FIXTURES = REPOSITORY_ROOT / "tests" / "fixtures" / "vjepa2"
# DROID clips are sampled at about 4 fps (SPEC section 9); the example keeps that spacing.
EXAMPLE_FPS = 4.0
TASK = "franka example trajectory (V-JEPA 2 repository)"


def reference_dirs() -> list[Path]:
    """The reference-fixture folders: the repository's own, then each of JEPA_REFERENCE_DIR (os.pathsep-separated).

    The test suite's fixture discovery uses the same list.
    """
    extra = os.environ.get("JEPA_REFERENCE_DIR", "")
    return [BUNDLED_FIXTURES] + [Path(entry) for entry in extra.split(os.pathsep) if entry]


def find_fixture(folders: list[Path]) -> Path:
    """The first `fixture_*_data.pt` of the first folder that has one."""
    for folder in folders:
        candidates = sorted(folder.glob("fixture_*_data.pt"))
        if candidates:
            return candidates[0]
    listed = ", ".join(str(folder) for folder in folders)
    raise FileNotFoundError(f"no fixture_*_data.pt in {listed} (set JEPA_REFERENCE_DIR or pass --fixture)")


def load_franka_example(fixture: Path) -> tuple[np.ndarray, np.ndarray]:
    """(frames (2, 256, 256, 3) uint8, states (2, 7) float64) from a fixture data file."""
    import torch  # only this offline converter needs torch; the arm-side package does not

    data = torch.load(fixture, map_location="cpu", weights_only=True)
    try:
        frames = data["preprocessing"]["franka_uint8_THWC"].numpy()
        states = data["world_model"]["franka_states"].numpy().astype(np.float64)
    except (KeyError, TypeError) as error:
        raise ValueError(f"{fixture} has no embedded Franka example ({error})") from error
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or states.shape != (len(frames), 7):
        raise ValueError(f"{fixture}: unexpected Franka example shapes {frames.shape} {frames.dtype}, {states.shape}")
    return frames, states


def convert(out: Path, fixture: Path) -> Path:
    frames, states = load_franka_example(fixture)
    with EpisodeWriter(
        out,
        fps=EXAMPLE_FPS,
        image_shape=frames.shape[1:],
        robot_type="franka",
        extra_info={"source": {"fixture": fixture.name, "origin": "V-JEPA 2 franka_example_traj.npz"}},
    ) as writer:
        writer.start_episode(TASK)
        for frame, state in zip(frames, states):
            writer.add_frame(frame, state)
        writer.end_episode()
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="new dataset folder")
    parser.add_argument(
        "--fixture",
        type=Path,
        help="a fixture_*_data.pt (default: the repository's tests/fixtures/vjepa2, then JEPA_REFERENCE_DIR)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        fixture = args.fixture or find_fixture(reference_dirs())
        convert(args.out, fixture)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"convert-franka-example: {error}", file=sys.stderr)
        return 2
    print(f"wrote a 2-frame Franka episode from {fixture} to {args.out}")
    return 0
