"""Safe checkpoint loading (``weights_only=True``) and classifier reconstruction from checkpoints."""

from __future__ import annotations

import os
import pickle
import uuid
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from aid.models import NormalizedClassifier, build_classifier


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint holds pickled objects that ``weights_only=True`` refuses to load."""


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file with ``weights_only=True``: tensors and plain containers only.

    Raises FileNotFoundError for a missing path and :class:`UnsafeCheckpointError` when the file
    would need to unpickle arbitrary objects (which could run code).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it contains objects that are not plain tensors or containers "
            f"(weights_only=True). Only load checkpoints from sources you trust. Detail: {err}"
        ) from err
    except (RuntimeError, EOFError) as err:
        raise UnsafeCheckpointError(f"cannot read checkpoint {path} (corrupt or truncated?): {err}") from err


def strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keys of ``state_dict`` that start with ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


#: Hyper-parameters of a classifier checkpoint that define its architecture.
ARCH_KEYS = ("arch", "num_classes", "in_chans", "output_stride", "channels")


def load_classifier(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    num_classes: int | None = None,
    expect: dict[str, Any] | None = None,
) -> NormalizedClassifier:
    """Rebuild a :class:`NormalizedClassifier` from a checkpoint of ``ClassifierModule``.

    The checkpoint's ``hyper_parameters`` give the architecture; weights load from the ``classifier.``
    entries of its state dict.

    Args:
        path: the checkpoint file.
        map_location: where its tensors load.
        num_classes: when set, a checkpoint with another class count raises ValueError naming both.
        expect: architecture the caller's config asks for (keys of :data:`ARCH_KEYS`; None values are not
            checked): a checkpoint that differs raises ValueError naming the key and both values.
    """
    ckpt = load_checkpoint(path, map_location)
    hp = ckpt.get("hyper_parameters", {})
    if "arch" not in hp:
        raise ValueError(f"{path} is not a classifier checkpoint of this framework (no 'arch' hyper-parameter)")
    if num_classes is not None and hp.get("num_classes") != num_classes:
        raise ValueError(
            f"class-count mismatch: checkpoint {path} has {hp.get('num_classes')} classes, the config asks for "
            f"{num_classes}"
        )
    for key, wanted in (expect or {}).items():
        have = hp.get(key, {"in_chans": 3, "output_stride": 32}.get(key))
        if wanted is not None and _plain(have) != _plain(wanted):
            raise ValueError(
                f"classifier checkpoint {path} has {key}={have!r}, the config asks for {key}={wanted!r}; give a "
                f"checkpoint of that architecture, or set model.init_args.{key} to {have!r}"
            )
    model = build_classifier(
        hp["arch"],
        num_classes=hp["num_classes"],
        pretrained=False,
        in_chans=hp.get("in_chans", 3),
        output_stride=hp.get("output_stride", 32),
        channels=hp.get("channels"),
    )
    model.load_state_dict(strip_prefix(ckpt["state_dict"], "classifier."))
    return model


def checkpoint_data(path: str | os.PathLike) -> dict[str, Any] | None:
    """The description of the data a checkpoint was trained on (class names, split sizes, image size), as
    ``ClassifierModule`` stores it under ``"data"``; None for checkpoints without one."""
    value = load_checkpoint(path).get("data")
    return value if isinstance(value, dict) else None


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO that writes to a temporary file then renames it: a kill mid-write never leaves a
    half-written checkpoint under the real name (``os.replace`` is atomic on POSIX and Windows). The temporary
    name is unique per process and write, so concurrent writers never share one. Loading uses
    ``weights_only=True``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
            with open(tmp, "rb") as f:  # flush to disk before the rename makes it visible
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = True) -> dict:
        return load_checkpoint(path, map_location or "cpu")
