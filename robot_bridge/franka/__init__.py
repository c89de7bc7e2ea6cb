"""Real Franka arms (FR3, Panda) behind the bridge: franky-control and pylibfranka adapters.

Import the submodule for the library you installed (`franky_arm` or `libfranka_arm`); the two
libraries cannot share one process.
"""
