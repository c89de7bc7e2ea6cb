"""The pre-norm transformer block shared by the encoder and both predictors.

Parameter names (`norm1`, `attn.qkv`, `attn.proj`, `norm2`, `mlp.fc1`, `mlp.fc2`) are the
official ones, so released state dicts load without renaming.

In memory, the rows of every `attn.qkv` weight and bias are held in the split-pairs RoPE order
(`qkv_rows`), permuted once when a state dict is loaded and back when one is written, so
`state_dict()` and checkpoints keep the official layout bit for bit while attention never
gathers weight rows per call (at ViT-g that was ~24 MB copied per layer per call).
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from .mapped import copied_from
from .rope import rotate_split_pairs, split_pairs_order


def _probe_onednn_linear():
    """oneDNN's fused linear, if this torch build has it and it takes the arguments we pass.

    It is a private op, so probe it once on a tiny input instead of trusting its signature.
    """
    try:
        op = torch.ops.mkldnn._linear_pointwise
        x, w, b = torch.ones(2, 3), torch.ones(4, 3), torch.zeros(4)
        if not torch.allclose(op(x, w, b, "none", [], ""), F.linear(x, w, b)):
            return None
        return op
    except (AttributeError, RuntimeError, TypeError):
        return None


_onednn_linear = _probe_onednn_linear()


def linear(layer: nn.Linear, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    """`layer(x)`, optionally followed by exact (erf) GELU, through oneDNN for float32 CPU inference.

    Why: torch's CPU matmul goes through MKL, whose sgemm runs a slow code path on AMD CPUs
    (measured ~90 GFLOP/s on one Zen core against ~210 GFLOP/s for oneDNN at the predictor's
    shapes). oneDNN also fuses the bias and the GELU into the matmul. Same arithmetic up to float
    rounding. Autograd, float64, non-CPU tensors and hooked layers (the parity tests capture
    activations with forward hooks) take the ordinary path.
    """
    if layer._forward_hooks or layer._forward_pre_hooks:
        out = layer(x)
        return F.gelu(out) if gelu else out
    weight, bias = layer.weight, layer.bias
    compute = _onednn_dtype(x, layer.weight)
    if compute is not None:
        # Under bf16 autocast this is what autocast does to a linear (inputs, weight and bias cast
        # to bf16, bf16 out), with the GELU fused.
        if bias is not None:
            bias = bias.to(compute)
        return _onednn_linear(x.to(compute), weight.to(compute), bias, "gelu" if gelu else "none", [], "none" if gelu else "")
    out = F.linear(x, weight, bias)
    return F.gelu(out) if gelu else out


def _onednn_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype | None:
    """The dtype a oneDNN linear computes in here (float32, or bf16 under CPU bf16 autocast), or None."""
    if _onednn_linear is None or x.device.type != "cpu" or weight.dtype != torch.float32:
        return None
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return None
    if torch.is_autocast_enabled("cpu"):
        return torch.bfloat16 if torch.get_autocast_dtype("cpu") == torch.bfloat16 else None
    return torch.float32 if x.dtype == torch.float32 else None


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Exact (erf) GELU: the tanh approximation is visibly off (~1e-3) against the reference.
        return linear(self.fc2, linear(self.fc1, x, gelu=True))


class KVCache:
    """Keys and values of one attention layer for the frames seen so far, preallocated once.

    Storage is allocated on the first append (so it takes the dtype autocast produced) with room
    for `capacity` tokens; each append writes in place and returns views of everything cached.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.length = 0
        self._keys: torch.Tensor | None = None
        self._values: torch.Tensor | None = None

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """keys, values (B, heads, L, head_dim) -> all cached (B, heads, length + L, head_dim)."""
        if self._keys is None:
            batch, heads, _, head_dim = keys.shape
            shape = (batch, heads, self.capacity, head_dim)
            self._keys = keys.new_empty(shape)
            self._values = values.new_empty(shape)
        end = self.length + keys.shape[2]
        if end > self.capacity:
            raise ValueError(f"KV cache overflow: {end} tokens > capacity {self.capacity}")
        self._keys[:, :, self.length:end] = keys
        self._values[:, :, self.length:end] = values
        self.length = end
        return self._keys[:, :, :end], self._values[:, :, :end]


@lru_cache
def qkv_rows(num_heads: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(order, inverse): official qkv rows -> in-memory rows, every query and key head in
    `split_pairs_order` (values untouched), and back. CPU index tensors."""
    heads = torch.arange(num_heads)[:, None] * head_dim + split_pairs_order(head_dim)
    dim = num_heads * head_dim
    order = torch.cat([heads.flatten(), dim + heads.flatten(), torch.arange(2 * dim, 3 * dim)])
    return order, torch.argsort(order)


class Attention(nn.Module):
    """Multi-head self-attention with 3-D RoPE on queries and keys, through SDPA.

    `qkv` holds its rows in the split-pairs order (module docstring); the state-dict hooks
    below translate from and to the official order, so only `Attention.state_dict()` and
    `load_state_dict()` (or those of a parent) see official rows, `self.qkv.weight` does not.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.register_load_state_dict_pre_hook(_qkv_rows_on_load)
        self.register_state_dict_post_hook(_qkv_rows_on_save)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        attn_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        batch, length, dim = x.shape
        # qkv rows are [q | k | v], each split into heads (heads outermost); queries and keys come
        # in the rotation's split-pairs layout, which leaves q.k unchanged.
        qkv = linear(self.qkv, x).view(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        queries, keys = rotate_split_pairs(qkv[:2], *rope).unbind(0)
        values = qkv[2]
        if cache is not None:
            keys, values = cache.append(keys, values)
        out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=attn_mask)
        return linear(self.proj, out.transpose(1, 2).reshape(batch, length, dim))


def _permute_qkv(attention: Attention, state: dict, prefix: str, which: int) -> None:
    rows = qkv_rows(attention.num_heads, attention.head_dim)[which]
    for name in ("qkv.weight", "qkv.bias"):
        tensor = state.get(prefix + name)
        # A mis-shaped tensor is left for the strict loader to report by name.
        if tensor is not None and tensor.dim() >= 1 and tensor.shape[0] == len(rows) and not tensor.is_meta:
            state[prefix + name] = tensor.index_select(0, rows.to(tensor.device))
            copied_from(tensor)


def _qkv_rows_on_load(attention: Attention, state: dict, prefix: str, *_) -> None:
    _permute_qkv(attention, state, prefix, 0)


def _qkv_rows_on_save(attention: Attention, state: dict, prefix: str, _metadata) -> None:
    _permute_qkv(attention, state, prefix, 1)


class Block(nn.Module):
    """x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, qkv_bias: bool = True, norm_eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLP(dim, mlp_hidden)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        attn_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope, attn_mask, cache)
        return x + self.mlp(self.norm2(x))


def init_transformer_weights(module: nn.Module, blocks: nn.ModuleList, std: float = 0.02) -> None:
    """Fresh-model init in the V-JEPA style: truncated-normal weights, zero biases, unit LayerNorms,
    and residual output projections scaled down by sqrt(2 * layer) so deep stacks start stable."""
    for sub in module.modules():
        if isinstance(sub, (nn.Linear, nn.Conv3d)):
            nn.init.trunc_normal_(sub.weight, std=std)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.LayerNorm):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)
    with torch.no_grad():
        for layer, block in enumerate(blocks, start=1):
            block.attn.proj.weight.div_((2.0 * layer) ** 0.5)
            block.mlp.fc2.weight.div_((2.0 * layer) ** 0.5)
