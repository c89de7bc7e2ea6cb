"""Latent cache for post-training: encode every frame once with the frozen encoder, then train the
AC predictor from the stored latents without running the encoder again.

Post-training (the official DROID recipe) freezes the encoder, so each training step would
otherwise re-encode the same frames: with the released ViT-g that forward pass is most of a step's
time and of its GPU memory. The store is one memory-mapped float array (frames, tokens, dim) in
`DIR/<frames fingerprint>-<encoder fingerprint>/latents.npy`: a run whose frames and encoder
(weights, architecture, input size, autocast dtype) hash the same reuses it; a change of either
is a different folder, built anew. A store appears only complete (built aside, then renamed).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from world_model.training.encoding import encode_frames

LATENTS_NAME = "latents.npy"
RECORD_NAME = "cache.json"
FORMAT_VERSION = 1  # bump when the preprocessing or the stored layout changes


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jepa-planner" / "latents"


def frames_fingerprint(frames: torch.Tensor) -> str:
    """sha256 of every frame's bytes and the array's shape."""
    digest = hashlib.sha256(repr(tuple(frames.shape)).encode())
    flat = frames.reshape(-1)
    step = 1 << 26
    for start in range(0, flat.numel(), step):
        digest.update(flat[start:start + step].numpy().tobytes())
    return digest.hexdigest()[:16]


def encoder_fingerprint(encoder: torch.nn.Module, autocast_dtype: torch.dtype | None) -> str:
    """sha256 of the encoder's weights, its configuration and the dtype it runs in."""
    digest = hashlib.sha256(f"{FORMAT_VERSION} {getattr(encoder, 'config', None)!r} {autocast_dtype}".encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


@torch.no_grad()
def build_or_load(cache_dir: Path, encoder: torch.nn.Module, frames: torch.Tensor, device: torch.device,
                  autocast_dtype: torch.dtype | None = None, batch_size: int = 64,
                  log=print) -> tuple[torch.Tensor, dict]:
    """(F, N, D) float32 latents of `frames` (F, H, W, 3) uint8, memory-mapped, and the store's record."""
    key = f"{frames_fingerprint(frames)}-{encoder_fingerprint(encoder, autocast_dtype)}"
    folder = Path(cache_dir) / key
    if not (folder / RECORD_NAME).is_file():
        log(f"latent cache: encoding {len(frames)} frames once into {folder}")
        _build(folder, encoder, frames, device, autocast_dtype, batch_size)
    else:
        log(f"latent cache: reusing {folder}")
    record = json.loads((folder / RECORD_NAME).read_text())
    # Copy-on-write mapping: pages are read on demand and shared, and torch gets a writable array.
    latents = np.load(folder / LATENTS_NAME, mmap_mode="c")
    if latents.shape[0] != len(frames):
        raise ValueError(f"{folder} holds {latents.shape[0]} frames, expected {len(frames)}; delete it")
    return torch.from_numpy(latents), record


def _build(folder: Path, encoder: torch.nn.Module, frames: torch.Tensor, device: torch.device,
           autocast_dtype: torch.dtype | None, batch_size: int) -> None:
    staging = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    was_training = encoder.training
    encoder.eval()
    try:
        store = None
        for start in range(0, len(frames), batch_size):
            batch = frames[start:start + batch_size, None].to(device)
            with _autocast(device, autocast_dtype):
                latents = encode_frames(encoder, batch)[:, 0].float().cpu().numpy()
            if store is None:
                store = np.lib.format.open_memmap(staging / LATENTS_NAME, mode="w+", dtype=np.float32,
                                                  shape=(len(frames), *latents.shape[1:]))
            store[start:start + len(latents)] = latents
        store.flush()
        record = {"frames": len(frames), "shape": list(store.shape), "dtype": "float32",
                  "autocast": str(autocast_dtype), "format": FORMAT_VERSION, "bytes": int(store.nbytes)}
        del store
        (staging / RECORD_NAME).write_text(json.dumps(record, indent=2))
        if folder.exists():
            shutil.rmtree(folder)  # a store without its record is an interrupted build
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        encoder.train(was_training)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)
