"""The MJCF scene: a Franka-Panda-style arm on a table with a cube and a fixed exterior camera.

Written from the published Panda kinematics (Franka's modified/Craig Denavit-Hartenberg table and
joint limits); the shapes are simple capsules and boxes, not the real meshes. The arm base sits at
the world origin on the table top (z = 0).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Franka Panda, modified DH (Craig): (a [m], d [m], alpha [rad]) for joints 1..7, then the flange.
PANDA_DH: tuple[tuple[float, float, float], ...] = (
    (0.0, 0.333, 0.0),
    (0.0, 0.0, -np.pi / 2),
    (0.0, 0.316, np.pi / 2),
    (0.0825, 0.0, np.pi / 2),
    (-0.0825, 0.384, -np.pi / 2),
    (0.0, 0.0, np.pi / 2),
    (0.088, 0.0, np.pi / 2),
)
FLANGE_OFFSET = 0.107          # flange along joint-7 z
HAND_YAW = -np.pi / 4          # the hand is mounted rotated -45 deg about the flange z
TCP_OFFSET = 0.1034            # tool centre point (between the fingertips) along the hand z
FINGER_TRAVEL = 0.04           # each finger opens 0..4 cm (8 cm total)

# Joint limits from the Panda datasheet (rad).
JOINT_LIMITS = np.array(
    [
        [-2.8973, 2.8973],
        [-1.7628, 1.7628],
        [-2.8973, 2.8973],
        [-3.0718, -0.0698],
        [-2.8973, 2.8973],
        [-0.0175, 3.7525],
        [-2.8973, 2.8973],
    ]
)
ARM_JOINTS = tuple(f"joint{i}" for i in range(1, 8))
FINGER_JOINTS = ("finger_left", "finger_right")

# Position-servo gains per joint: shoulder joints carry more inertia. Gravity is compensated
# (bodies have gravcomp=1), as Franka's own controller does, so the servos only track.
_KP = (3000, 3000, 2500, 2500, 1000, 800, 500)
_KV = (150, 150, 120, 120, 50, 40, 25)
# Panda joint torque limits (Nm): the servos cannot push harder than the real motors, e.g. into the table.
TORQUE_LIMITS = (87, 87, 87, 87, 12, 12, 12)

CUBE_HALF = 0.025              # 5 cm cube
CUBE_MASS = 0.15               # kg, like a wooden block
TABLE_HEIGHT = 0.75


@dataclass(frozen=True)
class CameraPose:
    # Front-right and above, framing the whole reach workspace (x 0.3-0.65, y +-0.25, z up to 0.35)
    # with the arm base in view: at 64 px one pixel is about 1 cm at the workspace centre.
    position: tuple[float, float, float] = (1.0, -0.6, 0.95)
    look_at: tuple[float, float, float] = (0.43, 0.0, 0.24)
    fovy_deg: float = 45.0


# A small shadow map is enough at 64-256 px and keeps a frame at ~6 ms instead of ~16 ms (2048).
SHADOW_MAP_SIZE = 512


def _xyaxes(position: np.ndarray, look_at: np.ndarray) -> str:
    """MJCF camera axes: the camera looks along its -z, with +y up in the image."""
    forward = look_at - position
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    return " ".join(f"{v:.6f}" for v in (*right, *up))


def _vec(values) -> str:
    return " ".join(f"{float(v):.6g}" for v in values)


def _link_body(index: int, inner: str) -> str:
    a, d, alpha = PANDA_DH[index]
    # Modified DH: frame i = RotX(alpha) * TransX(a) * RotZ(q) * TransZ(d); the joint turns about z.
    position = (a, -d * np.sin(alpha), d * np.cos(alpha))
    quat = (np.cos(alpha / 2), np.sin(alpha / 2), 0.0, 0.0)
    low, high = JOINT_LIMITS[index]
    name = ARM_JOINTS[index]
    return (
        f'<body name="link{index + 1}" pos="{_vec(position)}" quat="{_vec(quat)}" gravcomp="1">'
        f'<joint name="{name}" axis="0 0 1" range="{low} {high}" armature="0.1" damping="1" solreflimit="0.005 1"/>'
        f"{_LINK_GEOMS[index]}{inner}</body>"
    )


# Simple hulls per link in that link's DH frame, sized to look like the Panda at 64-256 px.
_LINK_GEOMS = (
    '<geom class="link" type="capsule" fromto="0 0 -0.19 0 0 -0.02" size="0.06"/>',
    '<geom class="link" type="capsule" fromto="0 0 0 0 -0.22 0" size="0.06"/>'
    '<geom class="joint" type="cylinder" fromto="0 0 -0.07 0 0 0.07" size="0.062"/>',
    '<geom class="link" type="capsule" fromto="0 0 -0.1 0 0 -0.02" size="0.055"/>'
    '<geom class="link" type="capsule" fromto="0 0 0 0.0825 0 0" size="0.055"/>',
    '<geom class="joint" type="cylinder" fromto="0 0 -0.06 0 0 0.06" size="0.058"/>'
    '<geom class="link" type="capsule" fromto="-0.0825 0.06 0 -0.0825 0.22 0" size="0.055"/>'
    '<geom class="link" type="capsule" fromto="0 0 0 -0.0825 0.06 0" size="0.05"/>',
    '<geom class="link" type="capsule" fromto="0 0 -0.16 0 0 -0.02" size="0.05"/>',
    '<geom class="joint" type="cylinder" fromto="0 0 -0.05 0 0 0.05" size="0.05"/>'
    '<geom class="link" type="capsule" fromto="0 0 0 0.088 0 0" size="0.045"/>',
    '<geom class="joint" type="cylinder" fromto="0 0 -0.03 0 0 0.09" size="0.045"/>',
)

_HAND = f"""
<body name="hand" pos="0 0 {FLANGE_OFFSET}" quat="{_vec((np.cos(HAND_YAW / 2), 0, 0, np.sin(HAND_YAW / 2)))}" gravcomp="1">
  <geom class="hand" type="box" pos="0 0 0.035" size="0.03 0.095 0.028"/>
  <site name="tcp" pos="0 0 {TCP_OFFSET}" size="0.005" rgba="1 0 0 0"/>
  <body name="finger_left" pos="0 0 0.0584" gravcomp="1">
    <joint name="finger_left" type="slide" axis="0 1 0" range="0 {FINGER_TRAVEL}" damping="5" armature="0.05"/>
    <geom class="finger" type="box" pos="0 0.009 0.026" size="0.011 0.009 0.026"/>
  </body>
  <body name="finger_right" pos="0 0 0.0584" gravcomp="1">
    <joint name="finger_right" type="slide" axis="0 -1 0" range="0 {FINGER_TRAVEL}" damping="5" armature="0.05"/>
    <geom class="finger" type="box" pos="0 -0.009 0.026" size="0.011 0.009 0.026"/>
  </body>
</body>
"""


def build_mjcf(image_height: int, image_width: int, timestep: float = 0.002, camera: CameraPose = CameraPose(),
               shadows: bool = True) -> str:
    """The scene as an MJCF string; the offscreen buffer fits the camera resolution.

    The overhead light casts shadows by default: a single camera sees depth poorly, and the
    gripper's shadow on the table shows where it is above the table, as it does on a real bench.
    """
    arm = _HAND
    for index in reversed(range(7)):
        arm = _link_body(index, arm)
    actuators = "".join(
        f'<position name="act_{name}" joint="{name}" kp="{kp}" kv="{kv}" ctrlrange="{low} {high}" forcerange="-{tau} {tau}"/>'
        for name, kp, kv, tau, (low, high) in zip(ARM_JOINTS, _KP, _KV, TORQUE_LIMITS, JOINT_LIMITS)
    ) + "".join(
        f'<position name="act_{name}" joint="{name}" kp="400" kv="20" ctrlrange="0 {FINGER_TRAVEL}"/>'
        for name in FINGER_JOINTS
    )
    position = np.array(camera.position, dtype=float)
    xyaxes = _xyaxes(position, np.array(camera.look_at, dtype=float))
    buffer = max(image_height, image_width, 64)
    shadow_size, cast_shadow = (SHADOW_MAP_SIZE, "true") if shadows else (0, "false")
    # Contact groups: the table collides with the cube and the hand; the cube with everything;
    # arm links collide only with the cube (no self-collision between overlapping hulls).
    return f"""
<mujoco model="franka_style_tabletop">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{timestep}" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <visual>
    <global offwidth="{buffer}" offheight="{buffer}"/>
    <quality shadowsize="{shadow_size}" offsamples="0"/>
    <headlight ambient="0.45 0.45 0.45" diffuse="0.5 0.5 0.5" specular="0 0 0"/>
    <rgba haze="0.62 0.70 0.78 1"/>
  </visual>
  <default>
    <geom density="600" contype="2" conaffinity="0" condim="3" friction="0.8 0.005 0.0001"/>
    <default class="link"><geom rgba="0.92 0.92 0.92 1"/></default>
    <default class="joint"><geom rgba="0.25 0.25 0.28 1"/></default>
    <default class="hand"><geom rgba="0.85 0.85 0.88 1" conaffinity="1"/></default>
    <default class="finger"><geom rgba="0.15 0.15 0.17 1" conaffinity="1" friction="1.2 0.005 0.0001"/></default>
  </default>
  <worldbody>
    <light name="key" pos="0.6 -0.4 2.0" dir="-0.1 0.2 -1" directional="true" castshadow="{cast_shadow}" diffuse="0.5 0.5 0.5"/>
    <geom name="floor" type="plane" pos="0 0 -{TABLE_HEIGHT}" size="4 4 0.1" rgba="0.42 0.45 0.5 1" contype="1" conaffinity="1"/>
    <geom name="table" type="box" pos="0.35 0 -0.025" size="0.75 0.6 0.025" rgba="0.72 0.6 0.46 1" contype="1" conaffinity="1" friction="0.6 0.005 0.0001"/>
    <geom name="base" type="cylinder" fromto="0 0 0 0 0 0.14" size="0.075" rgba="0.92 0.92 0.92 1" contype="0" conaffinity="0"/>
    <camera name="exterior" pos="{_vec(position)}" xyaxes="{xyaxes}" fovy="{camera.fovy_deg}"/>
    {arm}
    <body name="cube" pos="0.5 0 {CUBE_HALF}">
      <freejoint name="cube"/>
      <geom name="cube" type="box" size="{CUBE_HALF} {CUBE_HALF} {CUBE_HALF}" mass="{CUBE_MASS}" rgba="0.85 0.15 0.12 1" contype="1" conaffinity="3" friction="0.6 0.005 0.0001"/>
    </body>
  </worldbody>
  <actuator>{actuators}</actuator>
</mujoco>
"""
