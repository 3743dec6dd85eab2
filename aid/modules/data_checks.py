"""Checks between a module's models and the data a Trainer brings, made before any step runs."""

from __future__ import annotations

from typing import Any

from aid.runs.identity import data_description


def check_class_count(num_classes: int, trainer: Any, what: str = "the classifier") -> None:
    """Raise ValueError when the trainer's datamodule declares a ``num_classes`` other than ``num_classes``.

    A datamodule without ``num_classes`` (or no datamodule) is not checked.
    """
    dm = getattr(trainer, "datamodule", None)
    k = getattr(dm, "num_classes", None)
    if k is not None and int(k) != int(num_classes):
        raise ValueError(f"class-count mismatch: {what} has {num_classes} classes, the data has {k}")


def check_same_data(trained_on: dict[str, Any] | None, trainer: Any, what: str = "the classifier checkpoint") -> None:
    """Raise ValueError when a checkpoint's data description (``trained_on``) names other classes, or another
    image size, than the trainer's datamodule; either side without that information is not checked."""
    here = data_description(getattr(trainer, "datamodule", None)) or {}
    for key in ("classes", "image_size"):
        theirs, ours = (trained_on or {}).get(key), here.get(key)
        if theirs is not None and ours is not None and list(_as_list(theirs)) != list(_as_list(ours)):
            raise ValueError(
                f"{what} was trained on data with {key} {_short(theirs)}, this run's data has {key} {_short(ours)}; "
                "give a checkpoint trained on this data (or leave it unset so that it is trained)"
            )


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _short(value: Any) -> str:
    items = _as_list(value)
    return repr(items[0]) if len(items) == 1 else repr(items[:8])[:-1] + (", ...]" if len(items) > 8 else "]")
