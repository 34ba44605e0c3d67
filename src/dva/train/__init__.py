"""Training: the shared trainer, its schedule and resumable state."""

from dva.train.trainer import Trainer, TrainingInterrupted, build_optimizer, train

__all__ = ["Trainer", "TrainingInterrupted", "build_optimizer", "train"]
