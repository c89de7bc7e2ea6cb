"""The frozen V-JEPA 2-AC world model: video encoder, action-conditioned predictor, loaders."""
from .config import PRESETS, EncoderConfig, MaskTokenPredictorConfig, ModelConfig, PredictorConfig
from .model import WorldModel, load_world_model

__all__ = [
    "PRESETS",
    "EncoderConfig",
    "MaskTokenPredictorConfig",
    "ModelConfig",
    "PredictorConfig",
    "WorldModel",
    "load_world_model",
]
