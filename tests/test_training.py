"""`jepa-planner train`: losses, clip sampling, schedule, EMA, and short real training runs on
sim episodes recorded on the fly (the same collector and episode format the demo model used)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from robot_bridge import collect
from server import cli
from world_model import PRESETS, WorldModel, load_world_model
from world_model.training.command import CONTINUE_PREDICTOR, build_model
from world_model.training.conditioning import MIN_STD, standardize_linear_input
from world_model.training.data import ClipDataset, load_episodes
from world_model.training.ema import ema_update, make_target
from world_model.training.losses import predictor_losses
from world_model.training.schedule import adamw_parameter_groups, warmup_stable_decay
from world_model.training.trainer import TrainConfig, Trainer

IMAGE_SIZE = PRESETS["tiny"].encoder.img_size  # 48 px, 9 tokens per frame: small enough for CPU tests


@pytest.fixture(scope="module")
def sim_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "episodes"
    collect.collect(out, episodes=6, steps=8, image_size=IMAGE_SIZE, seed=3, progress=False)
    return out


def make_trainer(sim_data, out_dir, mode="from-pixels", **overrides) -> Trainer:
    settings = dict(mode=mode, steps=30, batch_size=6, clip_frames=3, lr=1e-3, warmup_steps=3, decay_steps=5,
                    log_every=5, checkpoint_every=1000, validate_every=0, validation_clips=4, seed=7)
    settings.update(overrides)
    config = TrainConfig(**settings)
    dataset = ClipDataset(load_episodes(sim_data), config.clip_frames)
    train_set, validation_set = dataset.split(0.34, seed=0)
    model = WorldModel.from_config(PRESETS["tiny"], seed=1)

    def export(path, encoder, predictor, metadata):
        WorldModel(encoder, predictor).save(path, metadata)

    return Trainer(config, model.encoder, model.predictor, train_set, validation_set, out_dir,
                   torch.device("cpu"), export, {"test": True})


@pytest.mark.parametrize("mode", ["post-train", "from-pixels"])
def test_loss_falls_on_recorded_sim_data(sim_data, tmp_path, mode):
    trainer = make_trainer(sim_data, tmp_path, mode=mode)
    frozen_encoder = {k: v.clone() for k, v in trainer.encoder.state_dict().items()}
    trainer.fit(show_progress=False)
    losses = [row["loss"] for row in trainer.history]
    assert losses[-1] < 0.8 * losses[0], losses
    encoder_moved = any(not torch.equal(v, trainer.encoder.state_dict()[k]) for k, v in frozen_encoder.items())
    assert encoder_moved == (mode == "from-pixels")


def test_resume_continues_exactly_where_the_run_stopped(sim_data, tmp_path):
    uninterrupted = make_trainer(sim_data, tmp_path / "a", steps=8)
    uninterrupted.fit(show_progress=False)

    interrupted = make_trainer(sim_data, tmp_path / "b", steps=8, until_step=4)
    summary = interrupted.fit(show_progress=False)
    assert summary["steps"] == 4 and summary["stopped_early"]
    torch.manual_seed(12345)  # a resumed process starts with unrelated RNG state
    resumed = make_trainer(sim_data, tmp_path / "b", steps=8)
    assert resumed.resume() and resumed.step == 4
    resumed.fit(show_progress=False)

    for name, expected in uninterrupted.predictor.state_dict().items():
        torch.testing.assert_close(resumed.predictor.state_dict()[name], expected, rtol=1e-5, atol=1e-6)
    for name, expected in uninterrupted.target_encoder.state_dict().items():
        torch.testing.assert_close(resumed.target_encoder.state_dict()[name], expected, rtol=1e-5, atol=1e-6)


def test_resume_refuses_a_different_schedule(sim_data, tmp_path):
    first = make_trainer(sim_data, tmp_path, steps=10)
    first.train_step()
    first.save_checkpoint()
    with pytest.raises(ValueError, match="steps"):
        make_trainer(sim_data, tmp_path, steps=20).resume()


def test_train_command_exports_a_loadable_model_with_provenance(sim_data, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--data", str(sim_data), "--out", str(out), "--model", "tiny", "--steps", "6",
            "--batch-size", "4", "--warmup-steps", "2", "--decay-steps", "2", "--log-every", "3",
            "--validate-every", "0", "--validation-clips", "4", "--validation-fraction", "0.34", "--seed", "11", "--no-progress"]
    assert cli.main(argv) == 0
    assert "validation: prediction L1" in capsys.readouterr().out
    for name in ("checkpoint.pt", "model.safetensors", "loss.png", "provenance.json", "history.json"):
        assert (out / name).is_file(), name
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["seed"] == 11 and provenance["steps"] == 6 and provenance["complete"]
    assert provenance["command"].startswith("jepa-planner train --data")
    assert provenance["data"]["episodes"] == 6 and len(provenance["data"]["fingerprint"]) == 16
    assert provenance["data"]["collections"][0]["seed"] == 3 and provenance["data"]["paths"] == [str(sim_data.resolve())]
    model = load_world_model(out / "model.safetensors", device="cpu")
    image = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    assert model.encode(image).shape == (1, model.tokens_per_frame, model.embed_dim)
    # A finished run is never overwritten by accident.
    assert cli.main(argv) == 2
    assert "--resume" in capsys.readouterr().err


def test_bad_arguments_are_refused_cleanly(sim_data, tmp_path, capsys):
    argv = ["train", "--data", str(sim_data), "--out", str(tmp_path / "x"), "--steps", "5",
            "--warmup-steps", "4", "--decay-steps", "4"]
    assert cli.main(argv) == 2
    assert "exceed steps" in capsys.readouterr().err


def test_clips_never_cross_episode_boundaries_and_splits_are_by_episode():
    # Episode e has every state filled with e, so a mixed clip would show two values.
    episodes = [(np.full((5 + e, 4, 4, 3), e, np.uint8), np.full((5 + e, 7), e, np.float32),
                 np.full((4 + e, 7), e, np.float32)) for e in range(6)]
    dataset = ClipDataset(episodes, clip_frames=4)
    assert len(dataset) == sum(5 + e - 4 + 1 for e in range(6))
    clips = dataset.sample(500, torch.Generator().manual_seed(0))
    assert clips.frames.shape == (500, 4, 4, 4, 3) and clips.actions.shape == (500, 3, 7)
    per_clip = clips.states[:, :, 0]
    assert torch.equal(per_clip, per_clip[:, :1].expand_as(per_clip))
    assert torch.equal(clips.actions[:, :, 0], per_clip[:, :3])
    assert torch.equal(clips.frames[:, :, 0, 0, 0].float(), per_clip)
    train, validation = dataset.split(0.34, seed=0)
    train_ids = set(train.states[:, 0].tolist())
    validation_ids = set(validation.states[:, 0].tolist())
    assert train_ids.isdisjoint(validation_ids) and train_ids | validation_ids == set(range(6))
    with pytest.raises(ValueError, match="at least 2"):
        ClipDataset(episodes, clip_frames=1)


def test_rollout_loss_feeds_predictions_back():
    torch.manual_seed(0)
    model = WorldModel.from_config(PRESETS["tiny"], seed=0)
    context = torch.randn(2, 4, model.tokens_per_frame, model.embed_dim)
    targets = torch.randn_like(context)
    actions, states = torch.randn(2, 3, 7), torch.randn(2, 4, 7)
    one_step = predictor_losses(model.predictor, context, targets, actions, states, rollout_steps=1)
    two_step = predictor_losses(model.predictor, context, targets, actions, states, rollout_steps=2)
    torch.testing.assert_close(one_step.teacher_forcing, two_step.teacher_forcing)
    # Frame 2 from a predicted frame 1 differs from the teacher-forced frame 2, so the terms differ.
    assert not torch.allclose(one_step.rollout, two_step.rollout)
    with pytest.raises(ValueError, match="rollout_steps"):
        predictor_losses(model.predictor, context, targets, actions, states, rollout_steps=4)


def test_warmup_stable_decay_schedule():
    lr = [warmup_stable_decay(step, 100, 1.0, 10, 20, start_factor=0.1) for step in range(101)]
    assert lr[0] == pytest.approx(0.1) and lr[10] == 1.0 and lr[79] == 1.0
    assert lr[90] == pytest.approx(0.5) and lr[100] == 0.0
    assert all(a <= b for a, b in zip(lr[:10], lr[1:11])) and all(a >= b for a, b in zip(lr[80:], lr[81:]))


def test_weight_decay_skips_biases_and_norms():
    block = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    decayed, plain = adamw_parameter_groups([block], 0.04)
    assert [p.shape for p in decayed["params"]] == [(4, 3)]
    assert len(plain["params"]) == 3 and plain["weight_decay"] == 0.0


def test_ema_target_follows_the_online_encoder_slowly():
    online = torch.nn.Linear(2, 2)
    target = make_target(online)
    assert not any(p.requires_grad for p in target.parameters())
    before = target.weight.detach().clone()
    with torch.no_grad():
        online.weight.add_(1.0)
    ema_update(target, online, decay=0.9)
    torch.testing.assert_close(target.weight, before + 0.1)


def test_standardized_conditioning_layer_sees_raw_inputs_as_standardized():
    torch.manual_seed(0)
    samples = torch.randn(500, 7) * torch.tensor([0.02, 0.03, 0.02, 0.0, 0.0, 0.0, 0.4]) + torch.tensor(
        [0.0, 0.0, 0.0, -3.0, 0.0, 0.0, 0.5])
    layer = torch.nn.Linear(7, 5)
    original = torch.nn.Linear(7, 5)
    original.load_state_dict(layer.state_dict())
    standardize_linear_input(layer, samples)
    std = samples.std(0).clamp_min(MIN_STD)
    torch.testing.assert_close(layer(samples), original((samples - samples.mean(0)) / std), rtol=1e-4, atol=1e-4)


def test_held_still_clips_repeat_the_first_frame_with_zero_actions():
    episodes = [(np.arange(6 * 4 * 4 * 3, dtype=np.uint8).reshape(6, 4, 4, 3), np.arange(42, dtype=np.float32).reshape(6, 7),
                 np.ones((5, 7), np.float32))]
    clips = ClipDataset(episodes, clip_frames=3).clips(torch.tensor([0, 2]))
    still = clips.held_still(torch.tensor([False, True]))
    assert torch.equal(still.frames[0], clips.frames[0]) and torch.equal(still.actions[0], clips.actions[0])
    assert torch.equal(still.frames[1], clips.frames[1, :1].expand_as(clips.frames[1]))
    assert torch.equal(still.states[1], clips.states[1, :1].expand_as(clips.states[1]))
    assert not still.actions[1].any()


def test_from_pixels_can_continue_from_a_saved_model(tmp_path):
    saved = WorldModel.from_config(PRESETS["tiny"], seed=5)
    saved.save(tmp_path / "model.safetensors")
    model, fresh_predictor = build_model("from-pixels", str(tmp_path / "model.safetensors"), seed=0)
    assert not fresh_predictor  # so the trained conditioning weights are not re-standardised
    for name, value in saved.predictor.state_dict().items():
        torch.testing.assert_close(model.predictor.state_dict()[name], value)
    assert all(p.requires_grad for p in model.encoder.parameters())
    _, fresh_predictor = build_model("from-pixels", "tiny", seed=0)
    assert fresh_predictor


def test_post_train_can_continue_the_source_predictor_on_several_datasets(tmp_path, sim_data):
    """`--predictor continue` keeps training a post-trained model's own predictor (its encoder frozen), and
    `--data A B` trains on both datasets' episodes."""
    saved = WorldModel.from_config(PRESETS["tiny"], seed=5)
    saved.save(tmp_path / "source.safetensors")
    model, fresh_predictor = build_model("post-train", str(tmp_path / "source.safetensors"), seed=0,
                                         predictor_size=CONTINUE_PREDICTOR)
    assert not fresh_predictor   # its trained conditioning weights are not re-standardised
    for name, value in saved.predictor.state_dict().items():
        torch.testing.assert_close(model.predictor.state_dict()[name], value)
    assert not any(p.requires_grad for p in model.encoder.parameters())

    more = tmp_path / "more"
    collect.collect(more, episodes=3, steps=8, image_size=IMAGE_SIZE, seed=4, progress=False)
    out = tmp_path / "run"
    assert cli.main(["train", "--data", str(sim_data), str(more), "--out", str(out), "--mode", "post-train",
                     "--model", str(tmp_path / "source.safetensors"), "--predictor", "continue", "--steps", "4",
                     "--batch-size", "4", "--warmup-steps", "1", "--decay-steps", "1", "--validate-every", "0",
                     "--validation-clips", "4", "--latent-cache", "off", "--no-progress"]) == 0
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["data"]["episodes"] == 9
    assert [record["seed"] for record in provenance["data"]["collections"]] == [3, 4]
    assert f"--data {sim_data} {more}" in provenance["command"] and "--predictor continue" in provenance["command"]
    trained = load_world_model(out / "model.safetensors", device="cpu")
    for name, value in saved.encoder.state_dict().items():   # frozen
        torch.testing.assert_close(trained.encoder.state_dict()[name], value)
    moved = [name for name, value in saved.predictor.state_dict().items()
             if not torch.equal(trained.predictor.state_dict()[name], value)]
    assert moved   # the source's predictor was trained on


def test_post_train_can_size_a_fresh_predictor_and_refuses_bad_sizes(tmp_path, sim_data, capsys):
    model, fresh_predictor = build_model("post-train", "tiny", seed=0, predictor_size=(128, 3))
    assert fresh_predictor and model.config.predictor.predictor_embed_dim == 128 and model.config.predictor.depth == 3
    assert model.config.encoder == PRESETS["tiny"].encoder and not any(p.requires_grad for p in model.encoder.parameters())
    base = ["train", "--data", str(sim_data), "--out", str(tmp_path / "x"), "--model", "tiny"]
    for extra in (["--mode", "post-train", "--predictor", "100x2"], ["--mode", "post-train", "--predictor", "wide"],
                  ["--predictor", "128x2"]):   # the last: from-pixels has no fresh predictor to size
        assert cli.main(base + extra) == 2
        assert "--predictor" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
