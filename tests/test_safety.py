"""SafetyLimits: the clamp every target passes through before it reaches an arm."""
from __future__ import annotations

import numpy as np
import pytest

from robot_bridge.arm import SafetyLimits, UnsafeTarget

LIMITS = SafetyLimits(workspace_low=(0.3, -0.3, 0.05), workspace_high=(0.7, 0.3, 0.6),
                      max_translation_m=0.05, max_rotation_rad=0.2)
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
    safe = LIMITS.clamp(outside, outside)     # "stay where you are" is not allowed ...
    assert safe[2] == pytest.approx(0.05)     # ... the box wins, within one step


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
