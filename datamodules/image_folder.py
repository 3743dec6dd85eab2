"""Class-per-folder image datasets: ImageNet, ISIC 2018 task 3 or CIFAR-10 exported to folders.

Layout: ``<root>/<split>/<class>/<file>`` with files ending in one of ``IMG_EXTENSIONS`` (any case;
files in nested sub-folders of a class folder count for that class, symbolic links followed once each;
other files are ignored). Optional ground-truth masks: ``<mask_root>/<split>/<class>/<same sub-path>/<stem>.png``.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms

from datamodules.augment import resolve_mode
from datamodules.common import SplitDataModule, check_positive_int

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: PIL modes of 16-bit (and 32-bit integer) pixels: read as value / 65535, not saturated by ``convert``.
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class UnreadableFileError(RuntimeError):
    """An image or mask file that PIL cannot decode (the message names the file)."""


def _class_names(split_dir: Path) -> list[str]:
    return sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))


def _image_files(class_dir: Path) -> list[Path]:
    """Image files under ``class_dir``, sorted, following symbolic links to folders once each (a link back to
    a folder already walked, e.g. a loop, adds nothing)."""
    files, visited = [], set()
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames.sort()
        files += [Path(dirpath) / f for f in sorted(filenames) if f.lower().endswith(IMG_EXTENSIONS)]
    return files


def _unreadable(path: Path) -> bool:
    """Whether PIL fails to decode the whole file (``load``, so a truncated JPEG counts, unlike ``verify``)."""
    try:
        with Image.open(path) as im:
            im.load()
    except _READ_ERRORS:
        return True
    return False


def unit_range_image(image: Image.Image, mode: str) -> Image.Image:
    """``image`` in ``mode`` (``RGB`` or ``L``), or, for 16-bit pixels (``HIGH_BIT_MODES``), a float image
    (PIL mode ``F``, one channel) of value / 65535 clipped to [0, 1], which ``ToTensor`` keeps as it is.

    ``convert`` would saturate 16-bit values at 255 instead of rescaling them.
    """
    if image.mode in HIGH_BIT_MODES:
        values = np.asarray(image).astype(np.float32) / 65535.0
        return Image.fromarray(np.clip(values, 0.0, 1.0))
    return image.convert(mode)


def _pack(x: Tensor, label: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """An item in the cache's form: an image of 8-bit values as uint8 (exactly; others stay float), the mask as bool."""
    as_bytes = (x * 255).round()
    if torch.equal(as_bytes / 255, x):
        x = as_bytes.to(torch.uint8)
    return x, label, mask.bool()


def _unpack(x: Tensor, label: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """An item of the cache as the dataset returns it (float image in [0, 1], label, float mask)."""
    return (x.float() / 255 if x.dtype == torch.uint8 else x.clone()), label, mask.float()


class ImageFolderDataset(Dataset):
    """Images (and optional masks) of one split; items ``(image (3,S,S) in [0,1], label, mask (1,S,S))``.

    Args:
        samples: ``(image path, label)`` pairs.
        image_size: side S of the centre crop.
        resize: the shorter image side is resized to this before the crop (bilinear, antialiased).
        mask_paths: one mask path per sample (resized with nearest, binarised at 0.5), or ``None`` for
            zero masks.
        corrupt: ``"error"`` (default): a file that cannot be decoded raises an :class:`UnreadableFileError`
            (a ``RuntimeError``) naming it. ``"skip"``: the item is replaced by the next readable sample
            (index + 1, + 2, ... modulo the length: deterministic, and the item keeps its
            ``(image, label, mask)`` form), with a warning naming the file, and the failure is recorded for
            :meth:`take_skipped` (in shared memory, so loads in DataLoader workers count too).

    16-bit images (``HIGH_BIT_MODES``) are read as value / 65535 (a grey one becomes 3 equal channels), so
    that they give the tensor of their 8-bit rescaling; 16-bit masks are binarised at half their range.

    ``cache``: keep every item after its first load, in memory (8-bit images as bytes: 3·S² bytes each, 150 MB
    for CIFAR-10's 50,000 at 32 px), so that later epochs decode nothing. Each DataLoader worker keeps its own.
    """

    def __init__(self, samples: list[tuple[Path, int]], image_size: int, resize: int,
                 mask_paths: list[Path] | None = None, corrupt: str = "error", cache: bool = False) -> None:
        if corrupt not in ("error", "skip"):
            raise ValueError(f"corrupt must be 'error' or 'skip', got {corrupt!r}")
        self.samples = samples
        self.mask_paths = mask_paths
        self.corrupt = corrupt
        # Failed loads per sample; in shared memory so that DataLoader workers' failures reach the main process.
        self.failures = torch.zeros(len(samples), dtype=torch.int32)
        if corrupt == "skip":
            try:
                self.failures.share_memory_()
            except RuntimeError:  # no shared memory here: the count then covers this process's loads only
                pass
        self._reported = torch.zeros_like(self.failures)
        self._cache: dict[int, tuple[Tensor, Tensor, Tensor]] | None = {} if cache else None
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
                im.load()  # decodes the whole file, so broken data fails here
                return unit_range_image(im, mode)
        except _READ_ERRORS as err:
            raise UnreadableFileError(
                f"cannot read {what} file {path}: {err}. Replace or delete it, or set data.corrupt='skip' "
                "to skip unreadable images (at setup and when loading)"
            ) from err

    def load(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        """Item ``index`` as ``(image (3, S, S) in [0, 1], label, mask (1, S, S))``; an
        :class:`UnreadableFileError` when its image or mask cannot be decoded."""
        path, label = self.samples[index]
        image = self._open(path, "RGB", "image")
        x = self.transform(image).clamp(0, 1)
        if x.shape[0] == 1:  # a 16-bit grey image
            x = x.expand(3, -1, -1).contiguous()
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

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        if self._cache is not None:
            if index not in self._cache:
                self._cache[index] = _pack(*self._load_or_replace(index))
            return _unpack(*self._cache[index])
        return self._load_or_replace(index)

    def _load_or_replace(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        try:
            return self.load(index)
        except UnreadableFileError as err:
            if self.corrupt != "skip":
                raise
            first = err
        n = len(self.samples)
        self.failures[index] += 1
        for step in range(1, n):
            other = (index + step) % n
            try:
                item = self.load(other)
            except UnreadableFileError:
                self.failures[other] += 1
                continue
            warnings.warn(f"{first}; sample {other} ({self.samples[other][0]}) is used in its place", stacklevel=2)
            return item
        raise RuntimeError(f"no file of this split can be decoded (the first: {first})") from first

    def take_skipped(self) -> list[str]:
        """Paths of the files that failed to load since the last call (sorted by sample index)."""
        counts = self.failures.clone()
        new = (counts > self._reported).nonzero().flatten().tolist()
        self._reported = counts
        return [str(self.samples[i][0]) for i in new]


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
        seed: seed of the training shuffle, augmentation and ``train_size`` subset (default 0).
        train_size: train on a seeded random subset of this many training images (default None: all of
            them); the validation and test splits stay whole.
        cache: keep decoded images in memory after their first epoch (default False; for small images, e.g.
            CIFAR-10: 150 MB at 32 px for 50,000 images, and the later epochs decode nothing).
        augment: training augmentation, on the device (:mod:`datamodules.augment`): ``"auto"`` (default:
            ``"crop"`` below 64 px, random crops of the zero-padded image and flips as for CIFAR;
            ``"resized_crop"`` from 64 px on, random crops of 35–100 % of the area and flips as for
            ImageNet), one of those two, or ``"none"``. Validation and test batches are never augmented.
        corrupt: what unreadable image files do. ``"error"`` (default): nothing is scanned; loading such a
            file raises a ``RuntimeError`` naming it. ``"skip"``: ``setup`` decodes every file of the split
            fully (``Image.load``, in threads; a full pass over the data, minutes on ImageNet-size folders),
            drops the unreadable ones (a truncated JPEG included) and emits one warning with their count
            and first paths. A file that still fails later (changed after the scan, or a broken mask) is
            replaced by the next readable sample with a warning naming it, and at the end of every
            training epoch (and of validate / test runs) one warning gives the count and names of the
            files replaced since the last one (:class:`~datamodules.common.SkippedFilesReport`, added to
            the trainer by ``setup``). That count includes DataLoader workers' loads (the dataset keeps
            them in shared memory) on this rank; under DDP each rank reports its own.

    16-bit images (PIL modes ``I;16``, ``I;16B``, ``I;16L``, ``I``) are read as value / 65535, so they give the
    tensor of their 8-bit rescaling; a grey one becomes 3 equal channels. 16-bit masks binarise at half range.
    A split needs at least 2 class folders (a classifier needs 2 classes).

    Example:
        >>> dm = ImageFolderDataModule("data/isic2018", image_size=224, test_split="test")
        >>> dm.setup("fit"); images, labels, masks = next(iter(dm.train_dataloader()))
    """

    def __init__(self, root: str, train_split: str = "train", val_split: str = "val",
                 test_split: str | None = None, image_size: int = 224, resize: int | None = None,
                 batch_size: int = 64, num_workers: int = 0, mask_root: str | None = None, seed: int = 0,
                 corrupt: str = "error", augment: str = "auto", train_size: int | None = None,
                 cache: bool = False) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.root {str(root)!r} does not exist or is not a folder")
        self._image_size = check_positive_int("image_size", image_size)
        self.augment_mode = resolve_mode(augment, self._image_size)
        self.train_size = None if train_size is None else check_positive_int("train_size", train_size)
        self.cache = bool(cache)
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
            if len(classes) < 2:
                raise ValueError(
                    f"only one class folder ({classes[0]!r}) in {str(train_dir)!r}: a classifier needs at least "
                    "2 classes, one folder each (<split>/<class>/<image>)"
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
        if split == "train":
            samples = [samples[i] for i in self._subset(len(samples))]
        if self.corrupt == "skip":
            # Decoding releases the GIL: threads make the full pass several times faster.
            with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
                flags = list(pool.map(_unreadable, [f for f, _ in samples]))
            bad = [f for (f, _), broken in zip(samples, flags, strict=True) if broken]
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
        return ImageFolderDataset(samples, self._image_size, self.resize, mask_paths, corrupt=self.corrupt,
                                  cache=self.cache)

    def setup(self, stage: str | None = None) -> None:
        """Index the split folders the stage needs (and scan them when ``corrupt='skip'``, then add the
        end-of-epoch report of files skipped while loading to the trainer)."""
        if self.corrupt == "skip":
            self.attach_skip_report()
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in needed.get(stage, ("train", "val", "test")) if stage else ("train", "val", "test"):
            if split not in self._splits:
                same = [s for s in self._splits if self.split_names[s] == self.split_names[split]]
                self._splits[split] = self._splits[same[0]] if same else self._build(split)

    def _subset(self, total: int) -> list[int]:
        """Indices of the training images used: all, or a seeded random ``train_size`` of them, in order."""
        if self.train_size is None or self.train_size >= total:
            return list(range(total))
        order = torch.randperm(total, generator=torch.Generator().manual_seed(self.seed))
        return sorted(order[: self.train_size].tolist())

    def split_sizes(self) -> dict[str, int]:
        """Image files per split folder (listed, not decoded: before ``corrupt='skip'`` drops any), the
        training split after ``train_size``."""
        out = {}
        for split, name in self.split_names.items():
            folder = self._split_dir(name)
            out[split] = sum(len(_image_files(folder / c)) for c in _class_names(folder))
        out["train"] = len(self._subset(out["train"]))
        return out

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
