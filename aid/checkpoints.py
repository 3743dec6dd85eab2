"""Safe checkpoint loading (``weights_only=True``) and classifier reconstruction from checkpoints."""

from __future__ import annotations

import os
import pickle
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


def load_classifier(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", num_classes: int | None = None
) -> NormalizedClassifier:
    """Rebuild a :class:`NormalizedClassifier` from a checkpoint of ``ClassifierModule``.

    The checkpoint's ``hyper_parameters`` give the architecture; weights load from the
    ``classifier.`` entries of its state dict. With ``num_classes`` set, a mismatch with the
    checkpoint raises ValueError naming both counts.
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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO that writes to ``<path>.tmp`` then renames: a kill mid-write never leaves a
    half-written checkpoint under the real name (``os.replace`` is atomic on POSIX and Windows).
    Loading uses ``weights_only=True``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        with open(tmp, "rb") as f:  # flush to disk before the rename makes it visible
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = True) -> dict:
        return load_checkpoint(path, map_location or "cpu")
