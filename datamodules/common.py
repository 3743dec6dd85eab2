"""Pieces shared by the datamodules: argument checks, the zero-mask wrapper and the loader base class.

Every datamodule of the framework yields tuples ``(image, label, mask)``: ``image`` float (3, H, W) in
[0, 1], ``label`` a long scalar, ``mask`` float (1, H, W) in {0, 1} (the ground-truth object mask, or
zeros where the data has none; ``has_masks`` tells which).
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler


def check_positive_int(name: str, value: int, minimum: int = 1) -> int:
    """``value`` as an int if it is an integer >= ``minimum``, else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"data.{name} must be an integer >= {minimum}, got {value!r}")
    return value


class EpochSeededSampler(Sampler[int]):
    """Random order drawn from ``(seed, epoch)`` alone: Lightning calls :meth:`set_epoch` before each epoch,
    so a run resumed from a checkpoint sees the same order in every later epoch as an uninterrupted run."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order :meth:`__iter__` yields."""
        self.epoch = int(epoch)

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=gen).tolist())

    def __len__(self) -> int:
        return self.size


class ZeroMaskDataset(Dataset):
    """Wrap a dataset of ``(image, label)`` pairs into ``(image, label, zeros(1, H, W))`` triples.

    Args:
        base: a map-style dataset whose items are ``(image float (C, H, W), label int)``.
    """

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        image, label = self.base[index]
        mask = torch.zeros(1, *image.shape[-2:], dtype=image.dtype)
        return image, torch.as_tensor(label, dtype=torch.long), mask


class SplitDataModule(pl.LightningDataModule):
    """Base class: builds the train / val / test loaders from ``self._splits`` filled by ``setup``.

    Subclasses fill ``self._splits[name]`` (name in ``train``, ``val``, ``test``) in ``setup``. The train
    loader shuffles with one ``torch.Generator`` seeded from ``seed`` and kept for the datamodule's life, so
    the run's sequence of epochs is reproducible and successive epochs differ even when Lightning reloads
    the loaders (under DDP Lightning swaps in its own ``DistributedSampler``, which it seeds itself).
    """

    def __init__(self, batch_size: int, num_workers: int, seed: int) -> None:
        super().__init__()
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.num_workers = check_positive_int("num_workers", num_workers, minimum=0)
        self.seed = int(seed)
        self._splits: dict[str, Dataset] = {}

    def _dataset(self, split: str) -> Dataset:
        if split not in self._splits:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        return self._splits[split]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self._dataset(split)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochSeededSampler(len(dataset), self.seed) if shuffle else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled (seeded) loader of the training split."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Loader of the validation split, in a fixed order."""
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Loader of the test split, in a fixed order."""
        return self._loader("test", shuffle=False)

    @property
    def in_chans(self) -> int:
        """Image channels (always 3: RGB)."""
        return 3
