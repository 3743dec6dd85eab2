"""Pieces shared by the datamodules: argument checks, the zero-mask wrapper, the loader base class and the
end-of-epoch report of image files that could not be decoded.

Every datamodule of the framework yields tuples ``(image, label, mask)``: ``image`` float (3, H, W) in
[0, 1], ``label`` a long scalar, ``mask`` float (1, H, W) in {0, 1} (the ground-truth object mask, or
zeros where the data has none; ``has_masks`` tells which).
"""

from __future__ import annotations

import warnings

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.trainer.states import TrainerFn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from datamodules.augment import augment_batch, batch_generator


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


class SkippedFilesReport(Callback):
    """Warns, at the end of every training epoch (and of ``validate`` / ``test`` runs), about the files that
    the datamodule's datasets could not decode and replaced by other samples (``report_skipped`` of a
    :class:`SplitDataModule`). A datamodule that skips such files adds this callback to its trainer itself.
    """

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer, f"training epoch {trainer.current_epoch}")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING:  # in fit, the training epoch's report covers validation
            self._report(trainer, "validation")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer, "test")

    @staticmethod
    def _report(trainer: pl.Trainer, when: str) -> None:
        report = getattr(trainer.datamodule, "report_skipped", None)
        if report is not None:
            report(when)


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

    #: Training augmentation applied on the device (:mod:`datamodules.augment`); ``"none"``: off.
    augment_mode: str = "none"

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Augment training batches (``augment_mode``), seeded by (seed, global step, rank); others pass."""
        trainer = getattr(self, "trainer", None)
        if self.augment_mode == "none" or trainer is None or not trainer.training:
            return batch
        x, y, m = batch[0], batch[1], batch[2]
        gen = batch_generator(self.seed, trainer.global_step, trainer.global_rank)
        x, m = augment_batch(x, m, self.augment_mode, gen)
        return (x, y, m, *batch[3:])

    def describe(self) -> dict:
        """What the data is, for run folders and checkpoints (a run on other data never reuses this one's):
        the class, class names in label order, image size and images per split (:meth:`split_sizes`)."""
        return {
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "classes": list(self.classes),
            "image_size": self.image_size,
            "sizes": self.split_sizes(),
        }

    def split_sizes(self) -> dict[str, int]:
        """Images per split (``train``, ``val``, ``test``), found without decoding any image."""
        return {split: len(self._dataset(split)) for split in ("train", "val", "test")}  # type: ignore[arg-type]

    def attach_skip_report(self) -> None:
        """Add a :class:`SkippedFilesReport` to the trainer this datamodule is attached to (once)."""
        trainer = getattr(self, "trainer", None)
        if trainer is not None and not any(isinstance(cb, SkippedFilesReport) for cb in trainer.callbacks):
            trainer.callbacks.append(SkippedFilesReport())

    def report_skipped(self, when: str = "") -> dict[str, list[str]]:
        """Warn about the files each split's dataset replaced since the last report (datasets with a
        ``take_skipped()`` method, such as the image folders with ``corrupt="skip"``); returns them by split.

        The count covers the loads of this process and of DataLoader workers (the datasets record failures
        in shared memory), on this rank.
        """
        out: dict[str, list[str]] = {}
        seen: set[int] = set()
        for split, dataset in self._splits.items():
            take = getattr(dataset, "take_skipped", None)
            if take is None or id(dataset) in seen:
                continue
            seen.add(id(dataset))
            paths = take()
            if paths:
                out[split] = paths
                shown = ", ".join(paths[:10]) + (", ..." if len(paths) > 10 else "")
                warnings.warn(
                    f"{when + ': ' if when else ''}{len(paths)} image file(s) of the {split} split could not be "
                    f"decoded and were replaced by other samples (data.corrupt='skip'): {shown}",
                    stacklevel=2,
                )
        return out

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
