"""Shared test configuration."""
from __future__ import annotations

import os
from pathlib import Path

# MuJoCo picks its GL backend at first import; EGL renders headless on CPU and GPU hosts.
os.environ.setdefault("MUJOCO_GL", "egl")

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Where the parity and bf16 tests run their models: cpu here; `make gpu-check` sets cuda.
TEST_DEVICE = os.environ.get("JEPA_TEST_DEVICE", "cpu")


def reference_dir() -> Path:
    """Folder of the official golden fixtures (JEPA_REFERENCE_DIR, default ../shared/reference/vjepa2)."""
    return Path(os.environ.get("JEPA_REFERENCE_DIR", REPO_ROOT.parent / "shared" / "reference" / "vjepa2"))


def fixture_names() -> list[str]:
    """Every fixture_<name>_checkpoint.pt that has its _data.pt and _f64_outputs.pt companions."""
    folder = reference_dir()
    names = []
    for checkpoint in sorted(folder.glob("fixture_*_checkpoint.pt")):
        name = checkpoint.name[len("fixture_"):-len("_checkpoint.pt")]
        if (folder / f"fixture_{name}_data.pt").exists() and (folder / f"fixture_{name}_f64_outputs.pt").exists():
            names.append(name)
    return names


@pytest.fixture(scope="session")
def reference_folder() -> Path:
    folder = reference_dir()
    if not folder.is_dir():
        pytest.skip(f"reference fixtures not found at {folder} (set JEPA_REFERENCE_DIR)")
    return folder
