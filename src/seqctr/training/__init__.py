"""One training loop for every model: Adam + BCE (+ the model's auxiliary loss), early stopping,
atomic checkpoints, resume."""
from .trainer import Trainer, load_checkpoint, make_optimizer, predict, resolve_device, set_seed

__all__ = ["Trainer", "load_checkpoint", "make_optimizer", "predict", "resolve_device", "set_seed"]
