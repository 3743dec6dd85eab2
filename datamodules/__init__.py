"""LightningDataModules yielding ``(image (B,3,H,W) in [0,1], label (B,), mask (B,1,H,W))`` batches.

``ShapesDataModule`` is the embedded synthetic default with ground-truth object masks;
``CIFAR10DataModule`` and ``ImageFolderDataModule`` (ImageNet, ISIC 2018, exported CIFAR-10) load real data.
"""

from datamodules.cifar10 import CIFAR10DataModule
from datamodules.image_folder import ImageFolderDataModule
from datamodules.shapes import SHAPE_NAMES, ShapesDataModule, ShapesDataset, generate_shapes

__all__ = [
    "CIFAR10DataModule",
    "ImageFolderDataModule",
    "SHAPE_NAMES",
    "ShapesDataModule",
    "ShapesDataset",
    "generate_shapes",
]
