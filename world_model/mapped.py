"""Releasing the resident file pages of memory-mapped checkpoint tensors that loading copied.

Loading copies the qkv rows of every attention layer into the split-pairs RoPE order
(`layers.py`). The copy reads the file's qkv pages once; without help they would stay resident
beside the copy (about 1.25 GB at ViT-g). While `releasing_copied_sources()` is active (the
checkpoint loader turns it on for `torch.load(mmap=True)` files only), each copied tensor's pages
are handed back right after its copy, so loading never holds both.

Safe by construction: only pages lying wholly inside the copied tensor are released, and only in
private, never-written file mappings, where the kernel re-reads a released page from the file if
anything touches it again. No data can change.
"""
from __future__ import annotations

import contextlib
import contextvars
import ctypes
import mmap
import sys

import torch

_RELEASING = contextvars.ContextVar("releasing_copied_sources", default=False)


@contextlib.contextmanager
def releasing_copied_sources():
    """Within this block, `copied_from` releases the pages of mmap-loaded sources it is given."""
    token = _RELEASING.set(True)
    try:
        yield
    finally:
        _RELEASING.reset(token)


def copied_from(source: torch.Tensor) -> None:
    """Tell the loader `source` has been copied and will not be read again."""
    if _RELEASING.get() and _madvise is not None and source.device.type == "cpu":
        begin = source.data_ptr()
        first = -(-begin // mmap.PAGESIZE) * mmap.PAGESIZE
        last = (begin + source.numel() * source.element_size()) // mmap.PAGESIZE * mmap.PAGESIZE
        if last > first:
            _madvise(first, last - first, mmap.MADV_DONTNEED)


def _libc_madvise():
    if not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_DONTNEED"):
        return None  # elsewhere the read pages simply stay cached
    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return madvise


_madvise = _libc_madvise()
