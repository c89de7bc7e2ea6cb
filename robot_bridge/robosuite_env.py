"""robosuite's own environment: robosuite pins mujoco 3.3.x and numpy 1.26, so its arm and the
evaluations that drive it run from `.venv-robosuite` (`make robosuite`), torch-free.

A command that needs robosuite and finds it missing re-runs itself there with the same arguments.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path
from typing import Callable

# What `make robosuite` creates; JEPA_ROBOSUITE_PYTHON names another Python with robosuite 1.5 and this package.
DEFAULT_PYTHON = Path(__file__).resolve().parent.parent / ".venv-robosuite" / "bin" / "python"


def robosuite_python() -> Path:
    return Path(os.environ.get("JEPA_ROBOSUITE_PYTHON", DEFAULT_PYTHON))


def have_robosuite() -> bool:
    """Without importing it (that imports mujoco, which must wait until MUJOCO_GL is set)."""
    return importlib.util.find_spec("robosuite") is not None


def as_argv(args: argparse.Namespace, add_arguments: Callable[[argparse.ArgumentParser], None]) -> list[str]:
    """The command line that parses back to `args` (the flags that differ from their defaults)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv: list[str] = []
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if not action.option_strings or value is None or value == action.default:
            continue
        flag = action.option_strings[-1]
        if isinstance(action, argparse.BooleanOptionalAction):  # --flag / --no-flag
            argv.append(action.option_strings[0] if value else action.option_strings[1])
        elif isinstance(action, argparse._StoreTrueAction):
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def rerun_in_robosuite_environment(module: str, argv: list[str], command: str) -> int:
    """Replace this process with `python -m module argv` in the robosuite environment (signals then
    reach the arm process itself); returns 2 with the reason when that environment is missing."""
    python = robosuite_python()
    if not python.exists():
        print(f"{command}: robosuite is not installed here and {python} does not exist; run `make robosuite` "
              "(or set JEPA_ROBOSUITE_PYTHON to a Python that has robosuite 1.5 and this package)", file=sys.stderr)
        return 2
    os.execv(str(python), [str(python), "-m", module, *argv])
    return 2  # not reached
