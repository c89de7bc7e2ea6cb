"""README.md dataset card of a dataset we write, in the shape LeRobot gives its cards.

YAML front matter the Hugging Face hub reads (task category robotics, tag LeRobot, the parquet
files as the default config), then what the dataset is, how it was recorded, its conventions and
its meta/info.json. It says nothing the metadata does not, so it can be rewritten at any time.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from robot_bridge.lerobot_files import CARD_PATH


def card_text(info: dict, tasks: dict[str, int]) -> str:
    # The writer cannot know who owns the recording (a lab's arm, a converted dataset): the card says
    # "other" until the owner sets `license` in meta/info.json.
    license_name = str(info.get("license", "other"))
    front = {
        "license": license_name,
        "task_categories": ["robotics"],
        "tags": ["LeRobot", "jepa-planner", str(info.get("robot_type", "robot"))],
        "configs": [{"config_name": "default", "data_files": "data/*/*.parquet"}],
    }
    recorded = info.get("collection") or info.get("source") or info.get("recorded_by")
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).rstrip(),
        "---",
        "",
        "A LeRobot v3.0 dataset written by jepa-planner (`robot_bridge.episodes.EpisodeWriter`); "
        "LeRobot's `LeRobotDataset(repo_id, root=...)` and jepa-planner's `EpisodeReader` both read it.",
        "",
        "## Dataset Description",
        "",
        f"- **License:** {license_name}" + ("" if "license" in info else " (set `license` in meta/info.json before publishing)"),
        f"- **Robot type:** {info.get('robot_type')}",
        f"- **Episodes / frames:** {info.get('total_episodes')} / {info.get('total_frames')} at {info.get('fps')} fps",
        f"- **Tasks:** {', '.join(repr(task) for task in sorted(tasks, key=tasks.get)) or 'none'}",
        f"- **Recorded by:** `{json.dumps(recorded)}`" if recorded else "- **Recorded by:** not recorded",
        "",
        "## Conventions",
        "",
        *[f"- `{key}`: {text}" for key, text in info.get("conventions", {}).items()],
        "",
        "## Dataset Structure",
        "",
        "[meta/info.json](meta/info.json):",
        "```json",
        json.dumps(info, indent=4),
        "```",
        "",
    ]
    return "\n".join(lines)


def write_card(root: Path, info: dict, tasks: dict[str, int]) -> Path:
    path = Path(root) / CARD_PATH
    path.write_text(card_text(info, tasks))
    return path
