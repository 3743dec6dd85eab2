"""Checks between a module's models and the data a Trainer brings, made before any step runs."""

from __future__ import annotations

from typing import Any


def check_class_count(num_classes: int, trainer: Any, what: str = "the classifier") -> None:
    """Raise ValueError when the trainer's datamodule declares a ``num_classes`` other than ``num_classes``.

    A datamodule without ``num_classes`` (or no datamodule) is not checked.
    """
    dm = getattr(trainer, "datamodule", None)
    k = getattr(dm, "num_classes", None)
    if k is not None and int(k) != int(num_classes):
        raise ValueError(f"class-count mismatch: {what} has {num_classes} classes, the data has {k}")
