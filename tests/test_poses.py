"""numpy pose math: extrinsic-xyz Euler conversions and the DROID/V-JEPA delta-action semantics."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from robot_bridge.poses import compose_pose, euler_to_matrix, matrix_to_euler, pose_difference

angles = arrays(np.float64, 3, elements=st.floats(-3.1, 3.1)).filter(lambda a: abs(a[1]) < 1.5)
positions = arrays(np.float64, 3, elements=st.floats(-1, 1))
grippers = st.floats(0, 1)


def pose(position, euler, gripper):
    return np.concatenate([position, euler, [gripper]])


def test_single_axis_rotations_are_extrinsic_xyz():
    quarter = np.pi / 2
    np.testing.assert_allclose(euler_to_matrix([quarter, 0, 0]) @ [0, 1, 0], [0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(euler_to_matrix([0, quarter, 0]) @ [0, 0, 1], [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(euler_to_matrix([0, 0, quarter]) @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    # Extrinsic: roll about the fixed x first, then yaw about the fixed z.
    np.testing.assert_allclose(euler_to_matrix([quarter, 0, quarter]) @ [0, 1, 0], [0, 0, 1], atol=1e-12)


@given(angles)
def test_euler_round_trip(euler):
    np.testing.assert_allclose(matrix_to_euler(euler_to_matrix(euler)), euler, atol=1e-9)


def test_gimbal_lock_keeps_the_rotation():
    for euler in ([0.3, np.pi / 2, -0.4], [0.3, -np.pi / 2, 0.2]):
        matrix = euler_to_matrix(euler)
        recovered = matrix_to_euler(matrix)
        assert recovered[2] == 0.0
        np.testing.assert_allclose(euler_to_matrix(recovered), matrix, atol=1e-9)


@settings(max_examples=200)
@given(positions, angles, grippers, positions, angles, grippers)
def test_compose_inverts_difference(p0, e0, g0, p1, e1, g1):
    start, end = pose(p0, e0, g0), pose(p1, e1, g1)
    rebuilt = compose_pose(start, pose_difference(start, end))
    np.testing.assert_allclose(rebuilt[:3], end[:3], atol=1e-12)
    np.testing.assert_allclose(euler_to_matrix(rebuilt[3:6]), euler_to_matrix(end[3:6]), atol=1e-9)
    assert abs(rebuilt[6] - end[6]) < 1e-12


def test_rotation_delta_left_multiplies_and_gripper_clips():
    start = np.array([0.1, 0.2, 0.3, 0.0, 0.0, 0.5, 0.9])
    action = np.array([0.01, 0.0, -0.02, 0.0, 0.0, 0.25, 0.5])
    np.testing.assert_allclose(compose_pose(start, action), [0.11, 0.2, 0.28, 0.0, 0.0, 0.75, 1.0], atol=1e-12)


def test_batched_shapes():
    starts = np.zeros((4, 5, 7))
    assert pose_difference(starts, starts).shape == (4, 5, 7)
    assert compose_pose(starts, starts).shape == (4, 5, 7)


def test_matches_the_official_helpers_on_the_reference_fixture(reference_folder):
    import torch

    helpers = torch.load(sorted(reference_folder.glob("fixture_*_data.pt"))[0], weights_only=True)["helpers"]
    diff = helpers["poses_to_diff"]
    np.testing.assert_allclose(
        pose_difference(diff["start"].double().numpy(), diff["end"].double().numpy()), diff["out"].numpy(), atol=1e-6
    )
    new_pose = helpers["compute_new_pose"]
    ours = compose_pose(new_pose["pose"].double().numpy(), new_pose["action"].double().numpy())
    np.testing.assert_allclose(ours, new_pose["out"].double().numpy(), atol=1e-5)
    droid = helpers["droid_poses_to_diffs"]
    poses = droid["poses"].numpy()
    np.testing.assert_allclose(pose_difference(poses[:-1], poses[1:]), droid["out"].numpy(), atol=1e-9)


@settings(max_examples=100, deadline=None)
@given(positions, angles, grippers, positions, angles, grippers)
def test_the_arm_side_numpy_math_equals_the_planner_torch_math(p0, e0, g0, p1, e1, g1):
    """One pose convention on both sides of the bridge: robot_bridge.poses (numpy, torch-free) is pinned
    to planner.pose (torch), which is pinned to the official helpers in tests/test_pose.py."""
    import torch

    from planner import pose as torch_pose

    start, end = pose(p0, e0, g0), pose(p1, e1, g1)
    delta = pose_difference(start, end)
    np.testing.assert_allclose(delta, torch_pose.pose_difference(torch.tensor(start), torch.tensor(end)).numpy(),
                               atol=1e-9)
    np.testing.assert_allclose(compose_pose(start, delta),
                               torch_pose.compose_pose(torch.tensor(start), torch.tensor(delta)).numpy(), atol=1e-9)
    np.testing.assert_allclose(euler_to_matrix(e0), torch_pose.euler_xyz_to_matrix(torch.tensor(e0)).numpy(), atol=1e-12)


@settings(max_examples=100)
@given(angles, positions, grippers)
def test_pose_matrices_and_rotation_vectors_round_trip(euler, position, gripper):
    from robot_bridge.poses import matrix_to_pose, matrix_to_rotvec, pose_to_matrix, rotvec_to_matrix

    state = pose(position, euler, gripper)
    np.testing.assert_allclose(matrix_to_pose(pose_to_matrix(state), gripper), state, atol=1e-9)
    rotation = euler_to_matrix(euler)
    np.testing.assert_allclose(rotvec_to_matrix(matrix_to_rotvec(rotation)), rotation, atol=1e-9)


def test_rotation_vector_of_a_half_turn_and_of_nothing():
    from robot_bridge.poses import matrix_to_rotvec

    half_turn_about_x = euler_to_matrix([np.pi, 0.0, 0.0])   # a gripper pointing down
    np.testing.assert_allclose(np.abs(matrix_to_rotvec(half_turn_about_x)), [np.pi, 0, 0], atol=1e-9)
    np.testing.assert_allclose(matrix_to_rotvec(np.eye(3)), np.zeros(3), atol=1e-15)
