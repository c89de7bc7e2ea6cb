"""3-D rotary position embedding with the official V-JEPA 2 frequency layout.

Each head dimension is cut into [temporal | height | width | unrotated tail] slices of
`rope_slice_dim(head_dim)` elements. Inside a slice of length s (m = s/2 frequencies
w_k = 10000^(-k/m)), element j uses angle p * w_(j mod m): the frequency table is *tiled*
twice over the slice while elements still rotate in adjacent pairs (2i, 2i+1). So the two
members of a pair use different frequencies. The released weights were trained with this
layout, so the textbook (pair-shared) RoPE would give wrong outputs.

Rotations are applied as `x * cos + swap_pairs(x) * signed_sin`, with the tables for all
three axes laid side by side over the whole head dim (cos 1, sin 0 on the tail). The
tables are built once per set of positions (float64, then cast) and reused.

The attention layers use an equivalent, faster layout: query and key features of every head
are reordered to [first members of all pairs | second members] (`split_pairs_order`). A dot
product q.k does not change when both sides are reordered alike, and in this layout each pair's
partner sits half a head away, so the rotation is two contiguous in-place multiply-adds instead
of a strided pair swap (`rotate_split_pairs`).
"""
from __future__ import annotations

import torch

ROPE_BASE = 10000.0


def rope_slice_dim(head_dim: int) -> int:
    """Length of each of the three rotated slices: the largest even number <= head_dim / 3."""
    return 2 * ((head_dim // 3) // 2)


def _slice_frequencies(slice_dim: int) -> torch.Tensor:
    half = slice_dim // 2
    omega = 1.0 / ROPE_BASE ** (torch.arange(half, dtype=torch.float64) / half)
    return torch.cat([omega, omega])  # the tiling quirk: frequency of element j is omega[j mod half]


def _signed(sin: torch.Tensor) -> torch.Tensor:
    # out[2i] takes -x[2i+1]*sin, out[2i+1] takes +x[2i]*sin; fold the sign into the table.
    sign = torch.ones(sin.shape[-1], dtype=sin.dtype)
    sign[0::2] = -1.0
    return sin * sign


def swap_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (x1, x0, x3, x2, ...) along the last dim."""
    return x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)


def apply_rotation(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x (..., L, d)` with tables `(L, d)` from `rope_tables`."""
    return torch.addcmul(x * cos, swap_pairs(x), signed_sin)


def split_pairs_order(head_dim: int) -> torch.Tensor:
    """Index order [0, 2, 4, ..., 1, 3, 5, ...] that moves pair members into two halves."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
    return torch.arange(head_dim).view(-1, 2).t().flatten()


def rotate_split_pairs(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """`apply_rotation` for x (..., L, d) and tables (L, d) all in the `split_pairs_order` layout."""
    half = x.shape[-1] // 2
    out = x * cos
    out[..., :half].addcmul_(x[..., half:], signed_sin[..., :half])
    out[..., half:].addcmul_(x[..., :half], signed_sin[..., half:])
    return out


def rope_tables(positions: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin tables (L, head_dim), float64, for positions (L, 3) = (t, h, w)."""
    slice_dim = rope_slice_dim(head_dim)
    omega = _slice_frequencies(slice_dim)
    angles = torch.zeros(positions.shape[0], head_dim, dtype=torch.float64)
    for axis in range(3):
        angles[:, axis * slice_dim:(axis + 1) * slice_dim] = positions[:, axis, None].double() * omega
    return angles.cos(), _signed(angles.sin())


def rotate_queries_or_keys(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The official single-slice primitive: rotate x (..., L, s) by positions pos (L,)."""
    omega = _slice_frequencies(x.shape[-1])
    angles = pos.double()[:, None] * omega
    cos = angles.cos().to(x.dtype)
    signed_sin = _signed(angles.sin()).to(x.dtype)
    return apply_rotation(x, cos, signed_sin)


def grid_positions(frames: int, height: int, width: int, *, first_frame: int = 0) -> torch.Tensor:
    """(frames*height*width, 3) integer (t, row, col) positions in time-major, row-major token order."""
    t, r, c = torch.meshgrid(
        torch.arange(first_frame, first_frame + frames),
        torch.arange(height),
        torch.arange(width),
        indexing="ij",
    )
    return torch.stack([t, r, c], dim=-1).reshape(-1, 3)


def attention_dtype(device: torch.device, parameter_dtype: torch.dtype) -> torch.dtype:
    """The dtype queries and keys will have: the autocast dtype when autocast is on, else the weights'."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return parameter_dtype


class RopeTableCache:
    """Memoises (cos, signed_sin) tables per key, device and dtype, so a hot loop never rebuilds them.

    The tables come in the `split_pairs_order` layout that the attention layers rotate in."""

    def __init__(self, head_dim: int) -> None:
        self.head_dim = head_dim
        self._tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def get(self, key: tuple, positions_fn, device: torch.device, dtype: torch.dtype):
        full_key = (key, device, dtype)
        tables = self._tables.get(full_key)
        if tables is None:
            # Memoised across calls, so never an inference tensor: training reuses it under autograd.
            with torch.inference_mode(False):
                order = split_pairs_order(self.head_dim)
                cos, signed_sin = (table[:, order] for table in rope_tables(positions_fn(), self.head_dim))
                tables = (cos.to(device=device, dtype=dtype), signed_sin.to(device=device, dtype=dtype))
            self._tables[full_key] = tables
        return tables
