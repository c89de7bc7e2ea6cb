"""3-D RoPE: the official primitive (with its frequency-tiling quirk) and the slice layout."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import fixture_names
from world_model.rope import apply_rotation, grid_positions, rope_slice_dim, rope_tables, rotate_queries_or_keys


@pytest.mark.parametrize("name", fixture_names())
def test_primitive_matches_official(reference_folder, name):
    helper = torch.load(reference_folder / f"fixture_{name}_data.pt", weights_only=True)["helpers"]["rotate_queries_or_keys"]
    torch.testing.assert_close(rotate_queries_or_keys(helper["x"], helper["pos"]), helper["out"], atol=1e-6, rtol=0)


def test_pairs_use_tiled_frequencies():
    """Element j of a slice of length s turns at 10000^-(j mod s/2)/(s/2), pairs (2i, 2i+1) rotate together."""
    x = torch.zeros(1, 8, dtype=torch.float64)
    x[0, 2] = 1.0  # pair 1, first member
    out = rotate_queries_or_keys(x, torch.tensor([3.0]))
    omega = [10000 ** (-k / 4) for k in range(4)] * 2
    assert out[0, 2].item() == pytest.approx(math.cos(3 * omega[2]))
    assert out[0, 3].item() == pytest.approx(math.sin(3 * omega[3]))  # the partner uses a different frequency


def test_slice_layout_and_unrotated_tail():
    assert [rope_slice_dim(d) for d in (32, 64, 80)] == [10, 20, 26]
    positions = grid_positions(2, 3, 4)
    assert positions.shape == (24, 3) and positions[13].tolist() == [1, 0, 1]
    cos, signed_sin = rope_tables(positions, 64)
    assert torch.all(cos[:, 60:] == 1) and torch.all(signed_sin[:, 60:] == 0)
    x = torch.randn(24, 64, dtype=torch.float64)
    rotated = apply_rotation(x, cos, signed_sin)
    assert torch.equal(rotated[:, 60:], x[:, 60:])
    # each slice is the primitive applied to its own coordinate: temporal, height, width
    for axis in range(3):
        part = slice(20 * axis, 20 * (axis + 1))
        torch.testing.assert_close(rotated[:, part], rotate_queries_or_keys(x[:, part], positions[:, axis].double()))
