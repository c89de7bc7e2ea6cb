"""Training V-JEPA 2-AC world models: `jepa-planner train`.

* from pixels: encoder + AC predictor together, targets from an EMA copy of the encoder;
* post-training: the official DROID recipe, a fresh AC predictor on a frozen encoder.
Both use the official objective (losses.py): L1 teacher forcing + rollout on normalised latents.
"""
from world_model.training.data import ClipDataset, load_episodes
from world_model.training.trainer import TrainConfig, Trainer

__all__ = ["ClipDataset", "TrainConfig", "Trainer", "load_episodes"]
