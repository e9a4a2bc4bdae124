"""One training loop for every model: Adam + BCE (+ the model's auxiliary loss), early stopping,
atomic checkpoints, resume."""
from .trainer import (Trainer, compiled, load_checkpoint, load_trained, make_optimizer, predict, resolve_device, set_seed,
                      train_step)

__all__ = ["Trainer", "compiled", "load_checkpoint", "load_trained", "make_optimizer", "predict", "resolve_device", "set_seed", "train_step"]
