"""Class-per-folder image datasets: ImageNet, ISIC 2018 task 3 or CIFAR-10 exported to folders.

Layout: ``<root>/<split>/<class>/<file>`` with files ending in one of ``IMG_EXTENSIONS`` (any case;
files in nested sub-folders of a class folder count for that class; other files are ignored).
Optional ground-truth masks: ``<mask_root>/<split>/<class>/<same sub-path>/<stem>.png``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms

from datamodules.common import SplitDataModule, check_positive_int

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _class_names(split_dir: Path) -> list[str]:
    return sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))


def _image_files(class_dir: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames.sort()
        files += [Path(dirpath) / f for f in sorted(filenames) if f.lower().endswith(IMG_EXTENSIONS)]
    return files


def _unreadable(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.verify()
    except _READ_ERRORS:
        return True
    return False


class ImageFolderDataset(Dataset):
    """Images (and optional masks) of one split; items ``(image (3,S,S) in [0,1], label, mask (1,S,S))``.

    Args:
        samples: ``(image path, label)`` pairs.
        image_size: side S of the centre crop.
        resize: the shorter image side is resized to this before the crop (bilinear, antialiased).
        mask_paths: one mask path per sample (resized with nearest, binarised at 0.5), or ``None`` for
            zero masks.

    An unreadable image raises a ``RuntimeError`` naming the file when it is loaded.
    """

    def __init__(self, samples: list[tuple[Path, int]], image_size: int, resize: int,
                 mask_paths: list[Path] | None = None) -> None:
        self.samples = samples
        self.mask_paths = mask_paths
        self.image_size = image_size
        self.transform = transforms.Compose(
            [transforms.Resize(resize), transforms.CenterCrop(image_size), transforms.ToTensor()]
        )
        self.mask_transform = transforms.Compose([
            transforms.Resize(resize, interpolation=transforms.InterpolationMode.NEAREST),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
        ])

    def __len__(self) -> int:
        return len(self.samples)

    @staticmethod
    def _open(path: Path, mode: str, what: str) -> Image.Image:
        try:
            with Image.open(path) as im:
                return im.convert(mode)  # convert() decodes the whole file, so broken data fails here
        except _READ_ERRORS as err:
            raise RuntimeError(
                f"cannot read {what} file {path}: {err}. Replace or delete it, or set data.corrupt='skip' "
                "to skip unreadable images at setup"
            ) from err

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        path, label = self.samples[index]
        image = self._open(path, "RGB", "image")
        x = self.transform(image)
        if self.mask_paths is None:
            mask = torch.zeros(1, *x.shape[-2:], dtype=x.dtype)
        else:
            mask_image = self._open(self.mask_paths[index], "L", "mask")
            if mask_image.size != image.size:
                raise ValueError(
                    f"mask {self.mask_paths[index]} is {mask_image.size[0]}x{mask_image.size[1]} but its "
                    f"image {path} is {image.size[0]}x{image.size[1]}; masks must have their image's size"
                )
            mask = (self.mask_transform(mask_image) > 0.5).to(x.dtype)
        return x, torch.tensor(label, dtype=torch.long), mask


class ImageFolderDataModule(SplitDataModule):
    """LightningDataModule over ``<root>/<split>/<class>/<image>`` folders.

    Images are converted to RGB (grayscale and palette files work), resized on the shorter side to
    ``resize`` and centre-cropped to ``image_size`` (the ImageNet evaluation protocol), values in [0, 1].
    Class names and their label order come from the train split's folders (sorted); the val and test
    splits must have the same class folders.

    Args:
        root: dataset root folder.
        train_split, val_split: split folder names (defaults ``train``, ``val``).
        test_split: split folder used by ``test``; ``None`` (default) tests on ``val_split`` (ImageNet's
            test labels are not public).
        image_size: side of the square centre crop (default 224).
        resize: shorter-side size before the crop; default ``image_size`` for ``image_size < 64``, else
            ``int(image_size / 0.875)`` (256 for 224).
        batch_size: images per batch (default 64).
        num_workers: DataLoader worker processes (default 0).
        mask_root: folder of ground-truth masks ``<mask_root>/<split>/<class>/<stem>.png`` (binarised at
            0.5, resized with nearest neighbours); every image needs one. ``None``: zero masks and
            ``has_masks`` is False.
        seed: seed of the training shuffle (default 0).
        corrupt: what unreadable image files do. ``"error"`` (default): nothing is scanned; loading such a
            file raises a ``RuntimeError`` naming it. ``"skip"``: ``setup`` opens every file of the split
            with PIL's ``Image.verify()`` (a full pass over the files: slow on ImageNet-size folders),
            drops the unreadable ones and emits one warning with their count and first paths. ``verify``
            does not decode pixel data, so a truncated JPEG can still pass and then raise at load time.

    Example:
        >>> dm = ImageFolderDataModule("data/isic2018", image_size=224, test_split="test")
        >>> dm.setup("fit"); images, labels, masks = next(iter(dm.train_dataloader()))
    """

    def __init__(self, root: str, train_split: str = "train", val_split: str = "val",
                 test_split: str | None = None, image_size: int = 224, resize: int | None = None,
                 batch_size: int = 64, num_workers: int = 0, mask_root: str | None = None, seed: int = 0,
                 corrupt: str = "error") -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.root {str(root)!r} does not exist or is not a folder")
        self._image_size = check_positive_int("image_size", image_size)
        if resize is None:
            resize = image_size if image_size < 64 else int(image_size / 0.875)
        self.resize = check_positive_int("resize", resize, minimum=image_size)
        if corrupt not in ("error", "skip"):
            raise ValueError(f"data.corrupt must be 'error' or 'skip', got {corrupt!r}")
        self.corrupt = corrupt
        self.mask_root = Path(mask_root) if mask_root is not None else None
        if self.mask_root is not None and not self.mask_root.is_dir():
            raise FileNotFoundError(f"data.mask_root {str(mask_root)!r} does not exist or is not a folder")
        self.split_names = {"train": train_split, "val": val_split, "test": test_split or val_split}
        self._classes: list[str] | None = None
        self.save_hyperparameters()

    def _split_dir(self, split: str) -> Path:
        folder = self.root / split
        if not folder.is_dir():
            present = sorted(d.name for d in self.root.iterdir() if d.is_dir())
            raise FileNotFoundError(
                f"split folder {str(folder)!r} does not exist; folders under data.root: {present or 'none'}"
            )
        return folder

    @property
    def classes(self) -> list[str]:
        """Class names in label order (the train split's class folders, sorted)."""
        if self._classes is None:
            train_dir = self._split_dir(self.split_names["train"])
            classes = _class_names(train_dir)
            if not classes:
                raise ValueError(
                    f"no class folders in {str(train_dir)!r}: expected <split>/<class>/<image> folders"
                )
            self._classes = classes
        return self._classes

    def _build(self, split: str) -> ImageFolderDataset:
        name = self.split_names[split]
        split_dir = self._split_dir(name)
        found = _class_names(split_dir)
        if found != self.classes:
            missing = sorted(set(self.classes) - set(found))
            extra = sorted(set(found) - set(self.classes))
            raise ValueError(
                f"split {name!r} has different class folders from the train split "
                f"{self.split_names['train']!r}: missing {missing}, extra {extra}"
            )
        samples = [(f, label) for label, c in enumerate(self.classes) for f in _image_files(split_dir / c)]
        if not samples:
            raise ValueError(
                f"split folder {str(split_dir)!r} holds no images (extensions {', '.join(IMG_EXTENSIONS)})"
            )
        if self.corrupt == "skip":
            bad = [f for f, _ in samples if _unreadable(f)]
            if bad:
                shown = ", ".join(str(f) for f in bad[:5]) + (", ..." if len(bad) > 5 else "")
                warnings.warn(f"skipped {len(bad)} unreadable image file(s) in split {name!r}: {shown}",
                              stacklevel=2)
                bad_set = set(bad)
                samples = [s for s in samples if s[0] not in bad_set]
                if not samples:
                    raise ValueError(f"every image of split folder {str(split_dir)!r} is unreadable")
        mask_paths = None
        if self.mask_root is not None:
            mask_paths = [(self.mask_root / name / f.relative_to(split_dir)).with_suffix(".png")
                          for f, _ in samples]
            missing_masks = [m for m in mask_paths if not m.is_file()]
            if missing_masks:
                shown = ", ".join(str(m) for m in missing_masks[:5])
                raise FileNotFoundError(
                    f"{len(missing_masks)} mask file(s) missing under data.mask_root for split {name!r}: "
                    f"{shown}"
                )
        return ImageFolderDataset(samples, self._image_size, self.resize, mask_paths)

    def setup(self, stage: str | None = None) -> None:
        """Index the split folders the stage needs (and scan them when ``corrupt='skip'``)."""
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in needed.get(stage, ("train", "val", "test")) if stage else ("train", "val", "test"):
            if split not in self._splits:
                same = [s for s in self._splits if self.split_names[s] == self.split_names[split]]
                self._splits[split] = self._splits[same[0]] if same else self._build(split)

    @property
    def num_classes(self) -> int:
        """Number of classes (class folders of the train split)."""
        return len(self.classes)

    @property
    def image_size(self) -> int:
        """Side of the square images in pixels."""
        return self._image_size

    @property
    def has_masks(self) -> bool:
        """True when ``mask_root`` is given (masks are ground truth), else the masks are zeros."""
        return self.mask_root is not None
