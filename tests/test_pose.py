"""planner.pose against the official helpers (fixtures) and against analytic rotation facts."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.pose import (
    canonical_euler_xyz,
    chain_poses,
    compose_pose,
    euler_xyz_to_matrix,
    matrix_to_euler_xyz,
    pose_difference,
    trajectory_to_actions,
)
from conftest import fixture_names

PI = math.pi


def _helpers(reference_folder, name):
    return torch.load(reference_folder / f"fixture_{name}_data.pt", map_location="cpu", weights_only=True)["helpers"]


@pytest.mark.parametrize("name", fixture_names())
def test_compose_pose_matches_official_compute_new_pose(reference_folder, name):
    case = _helpers(reference_folder, name)["compute_new_pose"]
    out = compose_pose(case["pose"], case["action"])
    assert out.dtype == case["pose"].dtype
    torch.testing.assert_close(out, case["out"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", fixture_names())
def test_pose_difference_matches_official_poses_to_diff(reference_folder, name):
    case = _helpers(reference_folder, name)["poses_to_diff"]
    out = pose_difference(case["start"], case["end"])
    torch.testing.assert_close(out.double(), case["out"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", fixture_names())
def test_trajectory_to_actions_matches_droid_training_labels(reference_folder, name):
    case = _helpers(reference_folder, name)["droid_poses_to_diffs"]
    torch.testing.assert_close(trajectory_to_actions(case["poses"]), case["out"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", fixture_names())
def test_chain_poses_matches_the_official_rollout_poses(reference_folder, name):
    record = torch.load(reference_folder / f"fixture_{name}_data.pt", map_location="cpu", weights_only=True)["world_model"]
    start = record["rollout_context_pose"][:, 0]
    poses = chain_poses(start, record["rollout_actions"])
    torch.testing.assert_close(poses, record["rollout_poses"], atol=1e-6, rtol=0)


def test_non_canonical_pitch_is_folded_like_scipy():
    # pitch 2.0 > pi/2: the same rotation is (roll + pi, pi - pitch, yaw + pi), wrapped into [-pi, pi].
    angles = canonical_euler_xyz(torch.tensor([0.3, 2.0, -0.4], dtype=torch.float64))
    torch.testing.assert_close(angles, torch.tensor([0.3 - PI, PI - 2.0, -0.4 + PI], dtype=torch.float64))


def test_angles_wrap_around_pi():
    angles = canonical_euler_xyz(torch.tensor([PI + 0.1, 0.2, -PI - 0.3], dtype=torch.float64))
    torch.testing.assert_close(angles, torch.tensor([-PI + 0.1, 0.2, PI - 0.3], dtype=torch.float64))
    # A yaw delta that crosses +pi comes out on the -pi side, not as 3.3 rad.
    out = compose_pose(torch.tensor([0.0, 0, 0, 0, 0, 3.0, 0]), torch.tensor([0.0, 0, 0, 0, 0, 0.3, 0]))
    assert out[5].item() == pytest.approx(3.3 - 2 * PI, abs=1e-6)


@pytest.mark.parametrize("pitch, combined", [(PI / 2, lambda r, y: r - y), (-PI / 2, lambda r, y: r + y)])
def test_gimbal_lock_sets_yaw_to_zero(pitch, combined):
    # At pitch = +-pi/2 only roll -/+ yaw is defined; SciPy reports yaw 0 and puts the rest in roll.
    roll, yaw = 0.3, 0.2
    angles = canonical_euler_xyz(torch.tensor([roll, pitch, yaw], dtype=torch.float64))
    torch.testing.assert_close(angles, torch.tensor([combined(roll, yaw), pitch, 0.0], dtype=torch.float64))


def test_rotation_composes_on_the_left():
    pose = torch.tensor([0.0, 0, 0, 0.4, 0.0, 0.0, 0.5], dtype=torch.float64)
    action = torch.tensor([0.0, 0, 0, 0.0, 0.0, 0.7, 0.0], dtype=torch.float64)
    out = compose_pose(pose, action)
    expected = euler_xyz_to_matrix(action[3:6]) @ euler_xyz_to_matrix(pose[3:6])
    torch.testing.assert_close(euler_xyz_to_matrix(out[3:6]), expected)
    assert not torch.allclose(euler_xyz_to_matrix(out[3:6]), euler_xyz_to_matrix(pose[3:6]) @ euler_xyz_to_matrix(action[3:6]))


def test_gripper_is_clipped_to_unit_interval():
    pose = torch.tensor([[0.0, 0, 0, 0, 0, 0, 0.9], [0.0, 0, 0, 0, 0, 0, 0.1]])
    action = torch.tensor([[0.0, 0, 0, 0, 0, 0, 0.5], [0.0, 0, 0, 0, 0, 0, -0.5]])
    assert compose_pose(pose, action)[:, 6].tolist() == [1.0, 0.0]


def test_batch_shapes_broadcast():
    state = torch.zeros(7)
    actions = torch.randn(4, 5, 7) * 0.1
    assert compose_pose(state, actions).shape == (4, 5, 7)
    assert chain_poses(state, actions).shape == (4, 6, 7)
    assert pose_difference(state, actions).shape == (4, 5, 7)


def test_wrong_last_dimension_is_rejected():
    with pytest.raises(ValueError, match="7-D"):
        compose_pose(torch.zeros(3, 6), torch.zeros(3, 7))


finite_angle = st.floats(-3 * PI, 3 * PI, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(st.tuples(finite_angle, finite_angle, finite_angle))
def test_euler_round_trip_preserves_the_rotation_and_is_canonical(triple):
    angles = torch.tensor(triple, dtype=torch.float64)
    canonical = matrix_to_euler_xyz(euler_xyz_to_matrix(angles))
    torch.testing.assert_close(euler_xyz_to_matrix(canonical), euler_xyz_to_matrix(angles), atol=1e-9, rtol=0)
    assert canonical[1].abs() <= PI / 2 + 1e-12
    assert canonical.abs().max() <= PI + 1e-12


unit = st.floats(0.0, 1.0)
position = st.floats(-1.0, 1.0)


@settings(max_examples=60, deadline=None)
@given(
    st.tuples(position, position, position, finite_angle, finite_angle, finite_angle, unit),
    st.tuples(position, position, position, finite_angle, finite_angle, finite_angle, unit),
)
def test_pose_difference_inverts_compose_pose(start, end):
    start = torch.tensor(start, dtype=torch.float64)
    end = torch.tensor(end, dtype=torch.float64)
    reached = compose_pose(start, pose_difference(start, end))
    torch.testing.assert_close(reached[:3], end[:3])
    torch.testing.assert_close(reached[6], end[6])
    torch.testing.assert_close(euler_xyz_to_matrix(reached[3:6]), euler_xyz_to_matrix(end[3:6]), atol=1e-9, rtol=0)
