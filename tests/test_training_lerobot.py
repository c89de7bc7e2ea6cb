"""Training from LeRobot datasets (the fixture LeRobot wrote), small datasets, and the latent cache."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from server import cli
from world_model import PRESETS, WorldModel
from world_model.training.data import ClipDataset, load_episodes
from world_model.training.latent_cache import build_or_load
from world_model.training.trainer import TrainConfig, Trainer

FIXTURE = Path(__file__).parent / "fixtures" / "lerobot_example_v30"
QUICK = ["--model", "tiny", "--steps", "3", "--batch-size", "2", "--clip-frames", "3", "--warmup-steps", "1",
         "--decay-steps", "1", "--validate-every", "0", "--validation-clips", "4", "--no-progress", "--threads", "1"]


@pytest.fixture
def lerobot_dataset(tmp_path):
    root = tmp_path / "example_v30"
    shutil.copytree(FIXTURE, root)
    return root


def test_trains_on_a_dataset_lerobot_wrote_with_three_episodes(lerobot_dataset, tmp_path):
    """Three episodes leave one for validation: the position probe used to crash after the last step."""
    out = tmp_path / "run"
    argv = ["train", "--data", str(lerobot_dataset), "--out", str(out), "--action-meaning", "commanded-delta", *QUICK]
    assert cli.main(argv) == 0
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["complete"] and provenance["data"]["episodes"] == 3
    assert provenance["data"]["validation_episodes"] == 1
    assert "--action-meaning commanded-delta" in provenance["command"]
    assert (out / "model.safetensors").is_file()


def test_too_few_episodes_or_an_undeclared_action_stop_before_a_run_folder_exists(lerobot_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--data", str(lerobot_dataset), "--out", str(out), "--action-meaning", "from-states",
            "--episodes", "1", *QUICK]
    assert cli.main(argv) == 2
    assert "needs 2" in capsys.readouterr().err and not out.exists()
    assert cli.main(["train", "--data", str(lerobot_dataset), "--out", str(out), *QUICK]) == 2
    assert "--action-meaning" in capsys.readouterr().err and not out.exists()
    assert cli.main(["train", "--data", str(lerobot_dataset), "--out", str(out), "--camera-key", "observation.images.top",
                     "--action-meaning", "from-states", *QUICK]) == 2
    assert "cameras: ['observation.image']" in capsys.readouterr().err and not out.exists()


def _post_trainer(train_set, out_dir) -> Trainer:
    config = TrainConfig(mode="post-train", steps=5, batch_size=4, clip_frames=3, warmup_steps=1, decay_steps=1,
                         validate_every=0, seed=3)
    model = WorldModel.from_config(PRESETS["tiny"], seed=5)
    return Trainer(config, model.encoder, model.predictor, train_set, train_set, out_dir, torch.device("cpu"),
                   lambda *args: None, {})


def test_cached_and_uncached_post_training_give_the_same_loss(lerobot_dataset, tmp_path):
    torch.set_num_threads(1)
    episodes = load_episodes(lerobot_dataset, action_meaning="commanded-delta")
    uncached_set, cached_set = ClipDataset(episodes, 3), ClipDataset(episodes, 3)
    uncached, cached = _post_trainer(uncached_set, tmp_path / "a"), _post_trainer(cached_set, tmp_path / "b")
    latents, record = build_or_load(tmp_path / "cache", cached.encoder, cached_set.frames, torch.device("cpu"),
                                    batch_size=5)
    assert record["frames"] == 18 and latents.shape == (18, PRESETS["tiny"].encoder.tokens_per_frame, 96)
    cached_set.attach_latents(latents)
    starts = torch.tensor([0, 2, 7, 13])
    with_frames, with_latents = uncached_set.clips(starts), cached_set.clips(starts)
    assert with_latents.frames is None  # the cached path never touches pixels
    with torch.no_grad():
        a, b = uncached.batch_losses(with_frames), cached.batch_losses(with_latents)
    assert a.total.item() > 0
    torch.testing.assert_close(b.teacher_forcing, a.teacher_forcing, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.rollout, a.rollout, rtol=1e-5, atol=1e-6)
    # A whole training step from the same batch moves the predictor the same way.
    for trainer in (uncached, cached):
        trainer.generator.manual_seed(11)
        trainer.train_step()
    for p, q in zip(uncached.predictor.parameters(), cached.predictor.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
    # Built on a dataset with latents, a trainer keeps the encoder off the device except to validate.
    config = TrainConfig(mode="post-train", steps=5, batch_size=4, clip_frames=3, warmup_steps=1, decay_steps=1,
                         validate_every=0, validation_clips=4, seed=3)
    model = WorldModel.from_config(PRESETS["tiny"], seed=5)
    parked = Trainer(config, model.encoder, model.predictor, cached_set, ClipDataset(episodes, 3), tmp_path / "c",
                     torch.device("cpu"), lambda *args: None, {})
    assert parked.encoder_parked and not uncached.encoder_parked
    assert np.isfinite(parked.validate(clip_count=4)["prediction_l1"])


def test_the_cache_is_reused_and_rebuilt_when_frames_or_encoder_change(lerobot_dataset, tmp_path):
    torch.set_num_threads(1)
    frames = ClipDataset(load_episodes(lerobot_dataset, action_meaning="from-states"), 3).frames
    encoder = WorldModel.from_config(PRESETS["tiny"], seed=5).encoder
    cache = tmp_path / "cache"
    messages = []
    first, _ = build_or_load(cache, encoder, frames, torch.device("cpu"), log=messages.append)
    again, _ = build_or_load(cache, encoder, frames, torch.device("cpu"), log=messages.append)
    assert [m.split(":")[1].split()[0] for m in messages] == ["encoding", "reusing"]
    torch.testing.assert_close(first, again)
    assert len(list(cache.iterdir())) == 1
    changed = frames.clone()
    changed[0, 0, 0, 0] ^= 1
    build_or_load(cache, encoder, changed, torch.device("cpu"), log=messages.append)
    with torch.no_grad():
        next(encoder.parameters()).add_(1e-3)
    build_or_load(cache, encoder, frames, torch.device("cpu"), log=messages.append)
    assert [m.split(":")[1].split()[0] for m in messages[2:]] == ["encoding", "encoding"]
    assert len(list(cache.iterdir())) == 3 and not list(cache.glob(".*"))  # no half-built store left


def test_post_train_command_uses_the_cache_folder(lerobot_dataset, tmp_path):
    cache = tmp_path / "latents"
    argv = ["train", "--mode", "post-train", "--data", str(lerobot_dataset), "--action-meaning", "commanded-delta",
            "--latent-cache", str(cache), *QUICK]
    assert cli.main([*argv, "--out", str(tmp_path / "one")]) == 0
    stores = list(cache.iterdir())
    assert len(stores) == 1 and (stores[0] / "latents.npy").is_file()
    provenance = json.loads((tmp_path / "one" / "provenance.json").read_text())
    assert provenance["latent_cache"]["frames"] == np.prod(provenance["latent_cache"]["shape"][:1])
    assert cli.main([*argv, "--out", str(tmp_path / "two")]) == 0
    assert list(cache.iterdir()) == stores  # the second run reused the first run's store
