"""MuJoCo Franka-style arm on a table with a cube, behind the `Arm` interface (see SIM.md)."""
from robot_bridge.sim.arm import HOME_STATE, Box, SimArm, SimConfig
from robot_bridge.sim.model import CameraPose

__all__ = ["HOME_STATE", "Box", "CameraPose", "SimArm", "SimConfig"]
