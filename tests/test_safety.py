"""SafetyLimits: the clamp every target passes through before it reaches an arm, and the rule
that the arm's measured pose outside the limits accepts only targets that move it back."""
from __future__ import annotations

import numpy as np
import pytest

from robot_bridge.arm import SafetyLimits, TargetLeavesLimits, UnsafeTarget

# No orientation range to speak of (pi around 0): these tests are about the box and the step limits.
LIMITS = SafetyLimits(workspace_low=(0.3, -0.3, 0.05), workspace_high=(0.7, 0.3, 0.6),
                      max_translation_m=0.05, max_rotation_rad=0.2,
                      orientation_reference=(0.0, 0.0, 0.0), orientation_range_rad=(np.pi, np.pi, np.pi))
# The defaults: gripper pointing down (roll pi), roll/pitch within 0.6 rad, yaw within 1.6 rad.
DOWN = np.array([0.5, 0.0, 0.3, -3.0, 0.0, 0.0, 0.0])
CURRENT = np.array([0.5, 0.0, 0.3, 0.1, 0.0, -0.2, 0.5])


def test_small_move_inside_the_box_passes_unchanged():
    target = CURRENT + np.array([0.01, -0.02, 0.03, 0.05, -0.05, 0.1, 0.2])
    np.testing.assert_allclose(LIMITS.clamp(target, CURRENT), target)


def test_translation_is_limited_per_step_along_the_commanded_direction():
    target = CURRENT.copy()
    target[:3] += np.array([0.15, 0.0, 0.2])  # 0.25 m away, inside the box
    safe = LIMITS.clamp(target, CURRENT)
    step = safe[:3] - CURRENT[:3]
    assert np.linalg.norm(step) == pytest.approx(0.05)
    np.testing.assert_allclose(step / np.linalg.norm(step), [0.6, 0.0, 0.8])


def test_box_applies_before_the_step_limit():
    target = CURRENT.copy()
    target[:3] = [5.0, 0.0, 0.3]              # far outside in +x
    safe = LIMITS.clamp(target, CURRENT)
    np.testing.assert_allclose(safe[:3], [0.55, 0.0, 0.3])


def test_arm_outside_the_box_is_brought_back_one_step_at_a_time():
    outside = CURRENT.copy()
    outside[2] = 0.0                          # below the floor of the box
    inside = outside.copy()
    inside[2] = 0.2
    safe = LIMITS.clamp(inside, outside)
    assert safe[2] == pytest.approx(0.05)     # back towards the box, one step
    partly_back = outside.copy()
    partly_back[2] = 0.01                     # still outside, but less: accepted, clamped into the box
    assert LIMITS.clamp(partly_back, outside)[2] == pytest.approx(0.05)


@pytest.mark.parametrize("axis, value", [(2, 0.0), (2, -0.1), (1, 0.5)])
def test_from_a_measured_pose_outside_the_box_a_target_that_does_not_move_back_is_refused(axis, value):
    """Measured z = 0 (below the box): staying, going further down, or sideways out is a hold."""
    outside = CURRENT.copy()
    outside[2] = 0.0
    target = outside.copy()
    target[axis] = value
    with pytest.raises(TargetLeavesLimits, match="outside the limits"):
        LIMITS.clamp(target, outside)


def test_orientation_is_clamped_into_its_absolute_range_around_the_reference():
    limits = SafetyLimits()
    target = DOWN.copy()
    target[3] = -3.0 + 2.0                     # roll 2 rad further from pointing down
    target[5] = 3.0                            # yaw beyond its 1.6 rad range
    current = DOWN.copy()
    for _ in range(20):                        # commanded again and again, one step at a time
        current = limits.clamp(target, current)
    roll_from_down = (current[3] - np.pi + np.pi) % (2 * np.pi) - np.pi
    assert roll_from_down == pytest.approx(0.6) and current[5] == pytest.approx(1.6)
    assert not limits.excess(current).any()


def test_from_a_measured_orientation_outside_its_range_only_turning_back_is_accepted():
    limits = SafetyLimits()
    tilted = DOWN.copy()
    tilted[4] = 0.9                            # pitch 0.3 rad past its 0.6 range (the arm drifted there)
    assert limits.excess(tilted)[2] == pytest.approx(0.3)
    further = tilted.copy()
    further[4] = 1.0
    with pytest.raises(TargetLeavesLimits):
        limits.clamp(further, tilted)
    shifted = tilted.copy()
    shifted[0] += 0.02                         # a move that leaves the tilt as it is: still a hold
    with pytest.raises(TargetLeavesLimits):
        limits.clamp(shifted, tilted)
    back = tilted.copy()
    back[4] = 0.0
    assert limits.clamp(back, tilted)[4] == pytest.approx(0.9 - 0.25)   # turning back, one step


def test_defaults_accept_the_sim_home_pose_and_document_their_values():
    limits = SafetyLimits()
    assert not limits.excess(DOWN).any()
    assert limits.orientation_reference == (np.pi, 0.0, 0.0) and limits.orientation_range_rad == (0.6, 0.6, 1.6)


def test_rotation_is_limited_per_angle_and_wraps_through_pi():
    current = CURRENT.copy()
    current[3] = np.pi - 0.05
    target = current.copy()
    target[3] = -np.pi + 0.05                 # 0.1 rad away across the wrap, not 2*pi - 0.1
    target[5] = current[5] + 1.0              # too far: limited to 0.2
    safe = LIMITS.clamp(target, current)
    assert abs(((safe[3] - target[3]) + np.pi) % (2 * np.pi) - np.pi) < 1e-9
    assert safe[5] == pytest.approx(current[5] + 0.2)


@pytest.mark.parametrize("gripper, expected", [(-0.5, 0.0), (0.4, 0.4), (7.0, 1.0)])
def test_gripper_is_clipped_to_unit_range(gripper, expected):
    target = CURRENT.copy()
    target[6] = gripper
    assert LIMITS.clamp(target, CURRENT)[6] == expected


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_targets_and_states_are_refused(bad):
    target = CURRENT.copy()
    target[1] = bad
    with pytest.raises(UnsafeTarget):
        LIMITS.clamp(target, CURRENT)
    with pytest.raises(UnsafeTarget):
        LIMITS.clamp(CURRENT, target)


@pytest.mark.parametrize("shape", [(6,), (8,), (1, 7), ()])
def test_wrong_shapes_are_refused(shape):
    with pytest.raises(UnsafeTarget):
        LIMITS.clamp(np.zeros(shape), CURRENT)


def test_limits_validate_their_own_configuration():
    with pytest.raises(ValueError):
        SafetyLimits(workspace_low=(0.5, 0, 0), workspace_high=(0.4, 1, 1))
    with pytest.raises(ValueError):
        SafetyLimits(max_translation_m=0.0)
    with pytest.raises(ValueError, match="orientation_range_rad"):
        SafetyLimits(orientation_range_rad=(0.5, 0.0, 1.0))
    with pytest.raises(ValueError, match="orientation_reference"):
        SafetyLimits(orientation_reference=(np.nan, 0.0, 0.0))


def test_a_measured_pose_a_hair_past_the_box_face_still_takes_targets_along_it():
    """An arm servoing onto the box's face reads back micrometres beyond it; that is not 'outside'."""
    limits = SafetyLimits()
    on_face = np.array([limits.workspace_high[0] + 1e-7, 0.0, 0.3, np.pi, 0.0, 0.0, 0.0])
    along = on_face.copy()
    along[1] += 0.02   # sideways along the face: neither in nor out
    np.testing.assert_allclose(limits.clamp(along, on_face)[:3], [limits.workspace_high[0], 0.02, 0.3])
