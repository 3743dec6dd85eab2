"""CIFAR-10 through torchvision (downloaded on first use), 32x32 RGB images in [0, 1], zero masks."""

from __future__ import annotations

from urllib.error import URLError

import torch
import torchvision.datasets as tv_datasets
from torch.utils.data import Subset
from torchvision import transforms

from datamodules.augment import resolve_mode
from datamodules.common import SplitDataModule, ZeroMaskDataset, check_positive_int

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_TRAIN_SIZE = 50000
_TEST_SIZE = 10000


class CIFAR10DataModule(SplitDataModule):
    """LightningDataModule of CIFAR-10 (torchvision ``CIFAR10``); items ``(image, label, zeros(1,32,32))``.

    The official test set is the test split; the validation split is ``val_size`` images held out from the
    official training set by a seeded permutation (the rest trains).

    Args:
        root: folder holding (or receiving) ``cifar-10-batches-py`` (default ``data/cifar10``).
        val_size: training images held out for validation, 1 to 49999 (default 5000).
        batch_size: images per batch (default 128).
        num_workers: DataLoader worker processes (default 0).
        seed: seed of the hold-out split, the training shuffle and augmentation (default 0).
        augment: training augmentation on the device (:mod:`datamodules.augment`; default ``"crop"``: random
            crops of the 4-pixel zero-padded image and flips), or ``"none"``.
        download: download the archive when it is missing (default True).

    Without network and without the files, ``prepare_data`` / ``setup`` raise a ``RuntimeError`` that says
    how to place the files by hand or to use ``ImageFolderDataModule`` on an exported copy.

    Example:
        >>> dm = CIFAR10DataModule("data/cifar10")
        >>> dm.prepare_data(); dm.setup("fit"); images, labels, masks = next(iter(dm.train_dataloader()))
    """

    has_masks = False

    def __init__(self, root: str = "data/cifar10", val_size: int = 5000, batch_size: int = 128,
                 num_workers: int = 0, seed: int = 0, download: bool = True, augment: str = "crop") -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        self.augment_mode = resolve_mode(augment, 32)
        self.root = root
        self.val_size = check_positive_int("val_size", val_size)
        if val_size >= _TRAIN_SIZE:
            raise ValueError(
                f"data.val_size must be < {_TRAIN_SIZE} (the CIFAR-10 training set), got {val_size}"
            )
        self.download = download
        self.save_hyperparameters()

    def _load(self, train: bool) -> tv_datasets.CIFAR10:
        # Looked up at call time so that tests can patch torchvision.datasets.CIFAR10.
        try:
            return tv_datasets.CIFAR10(
                self.root, train=train, download=self.download, transform=transforms.ToTensor()
            )
        except (URLError, OSError, RuntimeError) as err:
            why = "the download failed (no network?)" if self.download else "download=False"
            raise RuntimeError(
                f"CIFAR-10 is not available under {self.root!r} and {why}: {err}. Place the extracted "
                "'cifar-10-batches-py' folder (from https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz) "
                "under data.root, or export the images to <root>/<split>/<class>/ folders and use "
                "datamodules.ImageFolderDataModule"
            ) from err

    def prepare_data(self) -> None:
        """Download both CIFAR-10 sets if missing (called on one process per node by Lightning)."""
        if self.download:
            self._load(train=True)
            self._load(train=False)

    def setup(self, stage: str | None = None) -> None:
        """Load the sets the stage needs (downloading if allowed and missing) and hold out the val images."""
        if stage in (None, "fit", "validate") and "val" not in self._splits:
            full = ZeroMaskDataset(self._load(train=True))
            order = torch.randperm(_TRAIN_SIZE, generator=torch.Generator().manual_seed(self.seed)).tolist()
            self._splits["val"] = Subset(full, order[: self.val_size])
            self._splits["train"] = Subset(full, order[self.val_size:])
        if stage in (None, "test", "predict") and "test" not in self._splits:
            self._splits["test"] = ZeroMaskDataset(self._load(train=False))

    @property
    def num_classes(self) -> int:
        """10."""
        return 10

    @property
    def image_size(self) -> int:
        """32."""
        return 32

    @property
    def classes(self) -> list[str]:
        """CIFAR-10 class names in label order."""
        return list(CIFAR10_CLASSES)

    def split_sizes(self) -> dict[str, int]:
        """Images per split (the official sets, less the held-out validation images); nothing is read."""
        return {"train": _TRAIN_SIZE - self.val_size, "val": self.val_size, "test": _TEST_SIZE}
