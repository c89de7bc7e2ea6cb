"""Training's frame encoding is WorldModel.encode's, bit for bit, but keeps gradients."""
from __future__ import annotations

import torch

from world_model import PRESETS, WorldModel
from world_model.training.encoding import encode_frames


def clips(batch: int, count: int, height: int = 40, width: int = 56) -> torch.Tensor:
    """Non-square uint8 frames, so the centre crop and the resize both matter."""
    return torch.randint(0, 256, (batch, count, height, width, 3), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(batch * 10 + count))


def test_training_encoding_equals_the_world_model_encoding_exactly():
    model = WorldModel.from_config(PRESETS["tiny"]).eval()
    frames = clips(2, 3)
    expected = model.encode(frames.flatten(0, 1)).view(2, 3, model.tokens_per_frame, model.embed_dim)
    # Without autograd (targets, post-training's frozen encoder) the kernels are the same: exact.
    with torch.no_grad():
        assert torch.equal(encode_frames(model.encoder, frames), expected)
    # With autograd, attention may pick another kernel: same maths, last-bit differences.
    torch.testing.assert_close(encode_frames(model.encoder, frames), expected, atol=1e-5, rtol=0)


def test_training_encoding_under_bf16_autocast_equals_a_bf16_world_model():
    model = WorldModel.from_config(PRESETS["tiny"]).eval()
    frames = clips(1, 2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        latents = encode_frames(model.encoder, frames)
    model.autocast_dtype = torch.bfloat16
    assert torch.equal(latents.float(), model.encode(frames.flatten(0, 1)).view(latents.shape))


def test_training_encoding_keeps_gradients_to_the_encoder():
    encoder = WorldModel.from_config(PRESETS["tiny"]).encoder.train()
    encode_frames(encoder, clips(1, 2)).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters() if p.requires_grad)
