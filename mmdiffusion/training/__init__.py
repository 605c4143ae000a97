"""Training and using trained runs: configs, data order, the trainer, checkpoint loading, media output."""
from .config import PRESETS, DataConfig, DiffusionConfig, EMAConfig, ModelConfig, TrainConfig, load_config
from .master import MasterWeights
from .model import Patched, build_model
from .pipeline import TrainedModel, load_trained, write_samples
from .trainer import NonFiniteLossError, Trainer

__all__ = ["PRESETS", "DataConfig", "DiffusionConfig", "EMAConfig", "ModelConfig", "TrainConfig", "load_config",
           "MasterWeights", "Patched", "build_model", "TrainedModel", "load_trained", "write_samples",
           "NonFiniteLossError", "Trainer"]
