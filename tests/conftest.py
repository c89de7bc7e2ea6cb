"""Shared test configuration."""
from __future__ import annotations

import filecmp
import functools
import os
from pathlib import Path

# MuJoCo picks its GL backend at first import; EGL renders headless on CPU and GPU hosts.
os.environ.setdefault("MUJOCO_GL", "egl")

import pytest

from robot_bridge.franka_example import BUNDLED_FIXTURES, reference_dirs

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE_PARTS = ("checkpoint", "data", "f64_outputs")
# Where the parity and bf16 tests run their models: cpu here; `make gpu-check` sets cuda.
TEST_DEVICE = os.environ.get("JEPA_TEST_DEVICE", "cpu")


def reference_dir() -> Path:
    """The repository's own golden fixtures (tests/fixtures/vjepa2); `reference_dirs()` adds JEPA_REFERENCE_DIR."""
    return BUNDLED_FIXTURES


def _existing_reference_dirs() -> list[Path]:
    folders = reference_dirs()
    absent = [str(folder) for folder in folders if not folder.is_dir()]
    if absent:  # a mistyped JEPA_REFERENCE_DIR would otherwise test nothing and say nothing
        raise pytest.UsageError(f"reference fixture folder(s) not found: {', '.join(absent)} (JEPA_REFERENCE_DIR)")
    return folders


@functools.lru_cache(maxsize=None)
def _fixture_folders() -> dict[str, Path]:
    """Fixture name -> folder, over every reference folder.

    A name is a `fixture_<name>_checkpoint.pt` with its `_data.pt` and `_f64_outputs.pt` companions.
    The same name in two folders is tested once if the files are identical (e.g. JEPA_REFERENCE_DIR
    pointing at the folder the repository's copies came from) and is an error otherwise, since one
    of them would silently go untested.
    """
    found: dict[str, Path] = {}
    for folder in _existing_reference_dirs():
        for checkpoint in sorted(folder.glob("fixture_*_checkpoint.pt")):
            name = checkpoint.name[len("fixture_"):-len("_checkpoint.pt")]
            if not all((folder / f"fixture_{name}_{part}.pt").exists() for part in FIXTURE_PARTS):
                continue
            if name in found and not _same_fixture(found[name], folder, name):
                raise pytest.UsageError(f"fixture {name!r} is in both {found[name]} and {folder} with different files; rename one")
            found.setdefault(name, folder)
    return found


def _same_fixture(first: Path, second: Path, name: str) -> bool:
    return all(
        filecmp.cmp(first / f"fixture_{name}_{part}.pt", second / f"fixture_{name}_{part}.pt", shallow=False)
        for part in FIXTURE_PARTS
    )


def fixture_names() -> list[str]:
    """Every complete fixture in every reference folder (see `_fixture_folders`)."""
    return sorted(_fixture_folders())


def fixture_file(name: str, part: str) -> Path:
    """The `fixture_<name>_<part>.pt` file, part one of `FIXTURE_PARTS`, in whichever folder holds it."""
    return _fixture_folders()[name] / f"fixture_{name}_{part}.pt"


def manifest_files() -> list[Path]:
    """Every `manifest_*.json` of every reference folder, one per file name."""
    manifests: dict[str, Path] = {}
    for folder in _existing_reference_dirs():
        for path in sorted(folder.glob("manifest_*.json")):
            manifests.setdefault(path.name, path)
    return [manifests[name] for name in sorted(manifests)]


@pytest.fixture(scope="session")
def reference_folder(tmp_path_factory) -> Path:
    """One folder holding every fixture of every reference folder.

    Without JEPA_REFERENCE_DIR that is the repository's own folder; with it, a session folder of
    links, so tests that build `reference_folder / f"fixture_{name}_data.pt"` find every fixture.
    """
    folders = _existing_reference_dirs()
    if len(folders) == 1:
        return folders[0]
    merged = tmp_path_factory.mktemp("reference")
    for name in fixture_names():
        for part in FIXTURE_PARTS:
            (merged / f"fixture_{name}_{part}.pt").symlink_to(fixture_file(name, part).resolve())
    for manifest in manifest_files():
        (merged / manifest.name).symlink_to(manifest.resolve())
    return merged
