"""Class-per-folder images (ImageFolderDataModule) and the offline error of CIFAR10DataModule."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import CIFAR10DataModule, ImageFolderDataModule

CLASSES = ("cat", "dog", "fox")


def _write_image(path: Path, value: int, mode: str = "RGB", size: int = 40) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = 3 if mode == "RGB" else 1
    array = np.full((size, size, channels), value, dtype=np.uint8).squeeze(-1 if channels == 1 else ())
    Image.fromarray(array, mode=mode).save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """train/ and test/ splits, 3 classes, 40x40 jpg and png files, one grayscale file."""
    root = tmp_path / "data"
    for split, per_class in (("train", 3), ("test", 2)):
        for label, name in enumerate(CLASSES):
            for i in range(per_class):
                ext = "png" if i % 2 else "jpg"
                _write_image(root / split / name / f"{name}_{i}.{ext}", 60 * label + 20)
    _write_image(root / "train" / "dog" / "gray.png", 200, mode="L")
    (root / "train" / "dog" / "notes.txt").write_text("not an image")
    return root


def test_loads_images_resized_in_unit_range_with_labels(folder: Path):
    dm = ImageFolderDataModule(str(folder), val_split="test", image_size=32, batch_size=16)
    assert (dm.num_classes, dm.image_size, dm.in_chans, dm.has_masks) == (3, 32, 3, False)
    assert dm.classes == list(CLASSES)
    dm.setup("fit")
    x, y, m = next(iter(dm.val_dataloader()))
    assert x.shape == (6, 3, 32, 32) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1
    assert y.tolist() == [0, 0, 1, 1, 2, 2]
    assert m.shape == (6, 1, 32, 32) and not m.any()
    # Flat images keep their value (within JPEG error), so each sample is the file of its label.
    assert torch.allclose(x.mean(dim=(1, 2, 3)), (60 * y + 20).float() / 255, atol=0.02)
    train = dm.train_dataloader().dataset
    assert len(train) == 10  # 9 files + the grayscale one; notes.txt ignored
    gray = next(i for i, (p, _) in enumerate(train.samples) if p.name == "gray.png")
    image, label, _ = train[gray]
    assert image.shape == (3, 32, 32) and int(label) == 1
    assert torch.allclose(image, torch.full_like(image, 200 / 255))


def test_default_resize_follows_the_imagenet_protocol(folder: Path):
    assert ImageFolderDataModule(str(folder), image_size=32).resize == 32
    assert ImageFolderDataModule(str(folder), image_size=224).resize == 256
    assert ImageFolderDataModule(str(folder), image_size=224, resize=240).resize == 240


def test_test_split_defaults_to_the_val_split(folder: Path):
    dm = ImageFolderDataModule(str(folder), val_split="test", image_size=32)
    dm.setup("test")
    assert len(dm.test_dataloader().dataset) == 6


def test_corrupt_file_raises_naming_it_in_error_mode(folder: Path):
    bad = folder / "train" / "cat" / "broken.jpg"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    dm = ImageFolderDataModule(str(folder), val_split="test", image_size=32)
    dm.setup("fit")
    train = dm.train_dataloader().dataset
    index = next(i for i, (p, _) in enumerate(train.samples) if p == bad)
    with pytest.raises(RuntimeError, match="broken.jpg"):
        train[index]


def test_corrupt_file_is_skipped_with_one_warning_in_skip_mode(folder: Path):
    bad = folder / "train" / "cat" / "broken.jpg"
    bad.write_bytes(b"\x00not a jpeg" * 20)
    dm = ImageFolderDataModule(str(folder), val_split="test", image_size=32, corrupt="skip")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable.*broken\.jpg") as record:
        dm.setup("fit")
    assert len([w for w in record if "unreadable" in str(w.message)]) == 1
    train = dm.train_dataloader().dataset
    assert len(train) == 10 and all(p != bad for p, _ in train.samples)
    assert all(train[i][0].shape == (3, 32, 32) for i in range(len(train)))


def test_bad_corrupt_option_is_rejected(folder: Path):
    with pytest.raises(ValueError, match="corrupt"):
        ImageFolderDataModule(str(folder), corrupt="ignore")


def test_missing_root_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="data.root"):
        ImageFolderDataModule(str(tmp_path / "nowhere"))


def test_missing_split_folder_lists_what_exists(folder: Path):
    dm = ImageFolderDataModule(str(folder), image_size=32)  # val_split "val" does not exist
    with pytest.raises(FileNotFoundError, match=r"val' does not exist.*\['test', 'train'\]"):
        dm.setup("fit")


def test_empty_split_is_a_clear_error(folder: Path):
    for name in CLASSES:
        (folder / "empty" / name).mkdir(parents=True)
    dm = ImageFolderDataModule(str(folder), val_split="empty", image_size=32)
    with pytest.raises(ValueError, match="no images"):
        dm.setup("validate")


def test_split_without_class_folders_is_a_clear_error(tmp_path: Path):
    _write_image(tmp_path / "train" / "loose.png", 10)
    dm = ImageFolderDataModule(str(tmp_path), image_size=32)
    with pytest.raises(ValueError, match="no class folders"):
        dm.setup("fit")


def test_mismatched_classes_between_splits_name_the_difference(folder: Path):
    (folder / "test" / "fox").rename(folder / "test" / "wolf")
    dm = ImageFolderDataModule(str(folder), val_split="test", image_size=32)
    with pytest.raises(ValueError, match=r"missing \['fox'\], extra \['wolf'\]"):
        dm.setup("validate")


def test_masks_from_mask_root_are_loaded_binarised(folder: Path, tmp_path: Path):
    mask_root = tmp_path / "masks"
    left_half = np.zeros((40, 40), dtype=np.uint8)
    left_half[:, :20] = 255
    for path in (folder / "test").rglob("*.*"):
        target = mask_root / "test" / path.relative_to(folder / "test").with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(left_half, mode="L").save(target)
    dm = ImageFolderDataModule(str(folder), val_split="test", image_size=32, mask_root=str(mask_root))
    assert dm.has_masks
    dm.setup("validate")
    _, _, masks = next(iter(dm.val_dataloader()))
    assert masks.shape == (6, 1, 32, 32)
    assert set(masks.unique().tolist()) == {0.0, 1.0}
    assert (masks[:, :, :, :16] == 1).all() and (masks[:, :, :, 16:] == 0).all()


def test_missing_mask_files_are_a_clear_error(folder: Path, tmp_path: Path):
    (tmp_path / "masks" / "test").mkdir(parents=True)
    mask_root = str(tmp_path / "masks")
    dm = ImageFolderDataModule(str(folder), val_split="test", image_size=32, mask_root=mask_root)
    with pytest.raises(FileNotFoundError, match="6 mask file"):
        dm.setup("validate")


def test_cifar10_offline_without_files_explains_what_to_do(monkeypatch, tmp_path: Path):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("torchvision.datasets.CIFAR10", no_network)
    dm = CIFAR10DataModule(root=str(tmp_path / "cifar"))
    assert (dm.num_classes, dm.image_size, dm.has_masks) == (10, 32, False)
    with pytest.raises(RuntimeError, match="download failed") as info:
        dm.prepare_data()
    assert "ImageFolderDataModule" in str(info.value) and "cifar-10-batches-py" in str(info.value)
    with pytest.raises(RuntimeError, match="no network"):
        dm.setup("fit")


def test_cifar10_items_are_image_label_zero_mask(monkeypatch, tmp_path: Path):
    class FakeCIFAR10(torch.utils.data.Dataset):
        def __init__(self, root, train, download, transform):
            self.n, self.transform = (50000 if train else 10000), transform

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            return self.transform(Image.fromarray(np.full((32, 32, 3), i % 256, dtype=np.uint8))), i % 10

    monkeypatch.setattr("torchvision.datasets.CIFAR10", FakeCIFAR10)
    dm = CIFAR10DataModule(root=str(tmp_path), val_size=100, batch_size=8)
    dm.setup("fit")
    assert len(dm.val_dataloader().dataset) == 100 and len(dm.train_dataloader().dataset) == 49900
    x, y, m = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 32) and 0 <= x.min() and x.max() <= 1
    assert y.dtype == torch.long and m.shape == (8, 1, 32, 32) and not m.any()


def test_a_cached_image_folder_gives_the_same_items_and_decodes_each_file_once(tmp_path, monkeypatch):
    import PIL.Image

    from datamodules import ImageFolderDataModule

    rng = np.random.default_rng(1)
    for c in ("a", "b"):
        (tmp_path / "train" / c).mkdir(parents=True)
        for i in range(3):
            pixels = (rng.random((12, 12, 3)) * 255).astype("uint8")
            PIL.Image.fromarray(pixels).save(tmp_path / "train" / c / f"{i}.png")
    plain = ImageFolderDataModule(str(tmp_path), val_split="train", image_size=8)
    cached = ImageFolderDataModule(str(tmp_path), val_split="train", image_size=8, cache=True)
    plain.setup("fit"), cached.setup("fit")
    first = [cached._splits["train"][i] for i in range(6)]
    opened = []
    real_open = PIL.Image.open
    monkeypatch.setattr(PIL.Image, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    again = [cached._splits["train"][i] for i in range(6)]
    assert not opened  # the second pass decodes nothing
    for (x, y, m), (x2, y2, m2), (xp, yp, mp) in zip(first, again, [plain._splits["train"][i] for i in range(6)],
                                                     strict=True):
        assert torch.equal(x, xp) and torch.equal(x2, xp) and x2.dtype == torch.float32
        assert y == yp == y2 and torch.equal(m, mp) and torch.equal(m2, mp)
