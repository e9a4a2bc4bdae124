"""One training loop for every model: Adam + BCE (+ the model's auxiliary loss), early stopping,
atomic checkpoints, resume."""
from ..utils.compile import compiled
from .trainer import Trainer, make_optimizer, predict, set_seed, train_step

__all__ = ["Trainer", "compiled", "make_optimizer", "predict", "set_seed", "train_step"]
