"""planner.config: adversarial settings are rejected with messages that name the problem."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from planner.config import PlannerConfig


def test_defaults_are_valid_and_droid_maxnorm():
    config = PlannerConfig()
    assert config.maxnorm == 0.075
    assert 2 <= config.topk <= config.samples


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"maxnorm": 0.0}, "maxnorm must be a finite number > 0"),
        ({"maxnorm": -0.1}, "maxnorm must be a finite number > 0"),
        ({"maxnorm": float("nan")}, "maxnorm must be a finite number > 0"),
        ({"maxnorm": 2.0}, "not a safe arm motion"),
        ({"topk": 20, "samples": 10}, r"topk \(20\) must not exceed samples \(10\)"),
        ({"topk": 1}, "topk"),
        ({"horizon": 0}, "horizon"),
        ({"iterations": 0}, "iterations"),
        ({"momentum_mean": 1.0}, "momentum_mean"),
        ({"workspace_min": (0.5, 0.0, 0.0), "workspace_max": (0.4, 1.0, 1.0)}, "must be below workspace_max"),
        ({"workspace_max": (1.0, float("inf"), 1.0)}, "finite"),
        ({"frame_weights": (1.0,), "horizon": 2}, "one weight per imagined frame"),
        ({"optimizer": "adam"}, "optimizer"),
        ({"max_batch": 0}, "max_batch"),
        ({"sampels": 10}, "sampels"),
    ],
)
def test_invalid_settings_are_rejected_with_a_clear_message(settings, message):
    with pytest.raises(ValidationError, match=message):
        PlannerConfig(**settings)


def test_config_is_immutable():
    config = PlannerConfig()
    with pytest.raises(ValidationError):
        config.maxnorm = 1.0
