"""Which columns of a LeRobot v3.0 dataset feed the world model, and what its actions mean.

The world model needs one camera and the end-effector pose [x, y, z, roll, pitch, yaw, gripper]
(metres, extrinsic-xyz radians, gripper 0=open..1=closed) with, per step, the achieved pose change
(DROID / V-JEPA 2-AC labels). A LeRobot dataset names its vector elements in `features[k]["names"]`;
the pose is found by those names (`x` or `ee_x`, `eef.x`, ...). What its `action` column means
cannot be read from the files, so it is declared:

* ``achieved``: already the achieved pose difference frame t -> t+1 (what `jepa-planner collect` writes);
* ``commanded-delta``: the pose change that was commanded at frame t (used as-is);
* ``absolute-pose``: the target pose commanded at frame t (converted: pose_difference(state_t, target_t));
* ``from-states``: ignore the action column and derive achieved differences from consecutive states.

A dataset whose state is joint-space only, or that has no camera, is refused with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass

POSE_NAMES = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
ACTION_MEANINGS = ("achieved", "commanded-delta", "absolute-pose", "from-states")
CAMERA_DTYPES = ("image", "video")


class UnmappableDataset(ValueError):
    """The dataset cannot feed the world model; the message says why and what would."""


@dataclass(frozen=True)
class FeatureMapping:
    camera_key: str
    camera_dtype: str                 # "image" or "video"
    state_key: str
    state_indices: tuple[int, ...]    # element i of our pose = state[state_indices[i]]
    action_meaning: str
    action_key: str | None            # None for from-states
    action_indices: tuple[int, ...] | None

    def describe(self) -> dict:
        return {"camera_key": self.camera_key, "state_key": self.state_key, "action_key": self.action_key,
                "action_meaning": self.action_meaning}


def camera_keys(features: dict) -> list[str]:
    return [name for name, feature in features.items() if feature.get("dtype") in CAMERA_DTYPES]


def choose_camera(features: dict, requested: str | None) -> str:
    cameras = camera_keys(features)
    if not cameras:
        raise UnmappableDataset("the dataset has no camera (no feature of dtype image or video); "
                                "the world model plans from images")
    if requested is not None:
        if requested not in cameras:
            raise UnmappableDataset(f"--camera-key {requested!r} is not a camera of this dataset; cameras: {cameras}")
        return requested
    if "observation.image" in cameras:
        return "observation.image"
    if len(cameras) > 1:
        raise UnmappableDataset(f"the dataset has {len(cameras)} cameras {cameras}: choose one with --camera-key")
    return cameras[0]


def pose_indices(feature_key: str, feature: dict) -> tuple[int, ...]:
    """Positions of x, y, z, roll, pitch, yaw, gripper among a vector feature's element names."""
    names = feature.get("names")
    if isinstance(names, dict):  # LeRobot allows {"motors": [...]}
        names = next(iter(names.values()), None)
    if not names or len(feature.get("shape", [])) != 1:
        raise UnmappableDataset(f"{feature_key} has no element names, so its end-effector pose cannot be found; "
                                f"expected names {POSE_NAMES}")
    lowered = [str(name).lower() for name in names]
    indices, missing = [], []
    for wanted in POSE_NAMES:
        matches = [i for i, name in enumerate(lowered)
                   if name == wanted or any(name.endswith(sep + wanted) for sep in ("_", ".", " ", "/"))]
        if len(matches) == 1:
            indices.append(matches[0])
        else:
            missing.append(wanted if not matches else f"{wanted} (ambiguous: {[names[i] for i in matches]})")
    if missing:
        kind = "joint-space only" if {"x", "y", "z"} <= {m.split(" ")[0] for m in missing} else "not a full pose"
        raise UnmappableDataset(
            f"{feature_key} is {kind}: no end-effector {', '.join(missing)} among its names {list(names)}; "
            f"the world model is conditioned on the end-effector pose {POSE_NAMES}, so this dataset cannot be mapped")
    return tuple(indices)


def resolve(info: dict, camera_key: str | None = None, action_meaning: str | None = None,
            state_key: str = "observation.state", action_key: str = "action") -> FeatureMapping:
    features = info.get("features", {})
    camera = choose_camera(features, camera_key)
    if state_key not in features:
        raise UnmappableDataset(f"no state feature {state_key!r}; features: {sorted(features)}")
    state_indices = pose_indices(state_key, features[state_key])
    recorded_by_us = "conventions" in info
    meaning = action_meaning or ("achieved" if recorded_by_us else None)
    if meaning is None:
        raise UnmappableDataset(
            "declare what the dataset's action means with --action-meaning: achieved (pose difference between "
            "frames t and t+1), commanded-delta, absolute-pose, or from-states (derive it from the states)")
    if meaning not in ACTION_MEANINGS:
        raise UnmappableDataset(f"--action-meaning must be one of {ACTION_MEANINGS}, got {meaning!r}")
    if meaning == "from-states":
        return FeatureMapping(camera, features[camera]["dtype"], state_key, state_indices, meaning, None, None)
    if action_key not in features:
        raise UnmappableDataset(f"no action feature {action_key!r}; use --action-meaning from-states")
    try:
        action_indices = pose_indices(action_key, features[action_key])
    except UnmappableDataset as error:
        raise UnmappableDataset(f"{error}; --action-meaning from-states derives actions from the states") from None
    return FeatureMapping(camera, features[camera]["dtype"], state_key, state_indices, meaning, action_key,
                          action_indices)
