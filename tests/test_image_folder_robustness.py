"""Image folders never silently corrupt data: truncated and later-broken files, 16-bit images and masks, symbolic
link loops, one-class datasets (ImageFolderDataModule / ImageFolderDataset)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import DataLoader

from datamodules import ImageFolderDataModule
from datamodules.common import SkippedFilesReport
from datamodules.image_folder import ImageFolderDataset, unit_range_image

CLASSES = ("cat", "dog")


def write(path: Path, array: np.ndarray, mode: str | None = None, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.frombytes(mode, array.shape[1::-1], array.tobytes()) if mode else Image.fromarray(array)
    image.save(path, format=fmt)
    return path


def noise(seed: int, size: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """train/ and val/ splits, 2 classes, four 40×40 noise PNGs per class and split."""
    root = tmp_path / "data"
    for split in ("train", "val"):
        for label, name in enumerate(CLASSES):
            for i in range(4):
                write(root / split / name / f"{name}_{i}.png", noise(10 * label + i))
    return root


def module(root: Path, **kwargs) -> ImageFolderDataModule:
    return ImageFolderDataModule(str(root), image_size=32, batch_size=4, **kwargs)


# ----- corrupt files ----------------------------------------------------------------------------------


def test_half_truncated_jpeg_is_skipped_at_setup_with_one_warning_naming_it(folder: Path):
    buf = io.BytesIO()
    Image.fromarray(noise(99, 64)).save(buf, format="JPEG", quality=95)
    bad = folder / "train" / "cat" / "truncated.jpg"
    bad.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with Image.open(bad) as im:
        im.verify()  # the header check alone passes: only a full decode finds the damage
    dm = module(folder, corrupt="skip")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable.*truncated\.jpg") as record:
        dm.setup("fit")
    assert len([w for w in record if "unreadable" in str(w.message)]) == 1
    train = dm.train_dataloader().dataset
    assert len(train) == 8 and all(p != bad for p, _ in train.samples)


def test_file_broken_after_the_scan_is_replaced_by_the_next_sample_and_recorded(folder: Path):
    dm = module(folder, corrupt="skip")
    dm.setup("fit")
    train = dm.train_dataloader().dataset
    index = 2
    broken = train.samples[index][0]
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with pytest.warns(UserWarning, match=rf"{broken.name}.*sample {index + 1}"):
        image, label, mask = train[index]
    expected = train[index + 1]
    assert torch.equal(image, expected[0]) and int(label) == int(expected[1]) and torch.equal(mask, expected[2])
    assert image.shape == (3, 32, 32) and mask.shape == (1, 32, 32)
    assert train.take_skipped() == [str(broken)]
    assert train.take_skipped() == []  # reported once per failure


def test_file_broken_after_the_scan_raises_naming_it_in_error_mode(folder: Path):
    dm = module(folder)
    dm.setup("fit")
    train = dm.train_dataloader().dataset
    train.samples[0][0].write_bytes(b"not an image at all")
    with pytest.raises(RuntimeError, match=train.samples[0][0].name):
        train[0]


def test_the_last_sample_is_replaced_by_the_first(folder: Path):
    dm = module(folder, corrupt="skip")
    dm.setup("fit")
    train = dm.train_dataloader().dataset
    train.samples[-1][0].write_bytes(b"broken")
    with pytest.warns(UserWarning, match="sample 0"):
        assert torch.equal(train[len(train) - 1][0], train[0][0])


def test_failures_in_dataloader_workers_are_counted(folder: Path):
    dm = module(folder, corrupt="skip")
    dm.setup("fit")
    train = dm.train_dataloader().dataset
    broken = train.samples[5][0]
    broken.write_bytes(b"broken")
    loader = DataLoader(train, batch_size=4, num_workers=1)
    batches = list(loader)
    assert [len(b) for b in batches] == [3, 3] and all(b[0].shape == (4, 3, 32, 32) for b in batches)
    assert train.take_skipped() == [str(broken)]


class Linear(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 2)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self.layer(batch[0].mean(dim=(2, 3))), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_training_epoch_end_warns_with_the_count_and_names_of_replaced_files(folder: Path, tmp_path: Path):
    dm = module(folder, corrupt="skip")
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, accelerator="cpu", devices=1, limit_val_batches=0,
                         default_root_dir=str(tmp_path))
    broken = folder / "train" / "dog" / "dog_1.png"

    class BreakAfterSetup(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            broken.write_bytes(b"broken")

    trainer.callbacks.append(BreakAfterSetup())
    with pytest.warns(UserWarning) as record:
        trainer.fit(Linear(), datamodule=dm)
    assert sum(isinstance(cb, SkippedFilesReport) for cb in trainer.callbacks) == 1
    epoch_ends = [str(w.message) for w in record if "could not be decoded" in str(w.message)]
    assert len(epoch_ends) == 2  # one per epoch: the file fails in both
    assert all("1 image file(s) of the train split" in m and "dog_1.png" in m for m in epoch_ends)
    assert epoch_ends[0].startswith("training epoch 0") and epoch_ends[1].startswith("training epoch 1")


# ----- bit depths and modes ---------------------------------------------------------------------------

#: How each mode's file holds a grey picture ``a`` (uint8, H×W): its array, PIL mode, file format.
def as_file(a: np.ndarray, mode: str, offset: np.ndarray) -> tuple[np.ndarray, str | None, str]:
    deep = np.clip(a.astype(np.int64) * 257 + offset, 0, 65535)  # rounds back to a: |offset| <= 128
    if mode == "L":
        return a, None, "PNG"
    if mode == "RGB":
        return np.stack([a] * 3, axis=-1), None, "PNG"
    if mode == "RGBA":
        return np.stack([a] * 3 + [255 - a], axis=-1), None, "PNG"
    if mode == "I;16":
        return deep.astype("<u2"), "I;16", "PNG"
    if mode == "I;16B":
        return deep.astype(">u2"), "I;16B", "TIFF"
    return deep.astype("<i4"), "I", "TIFF"


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    mode=st.sampled_from(["L", "RGB", "RGBA", "P", "I;16", "I;16B", "I"]),
    side=st.integers(24, 40),
    resample=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_every_mode_and_bit_depth_gives_the_tensor_of_its_8_bit_rgb_picture(
    tmp_path_factory, mode, side, resample, seed
):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (side, side), dtype=np.uint8)
    offset = rng.integers(-128, 129, (side, side))
    root = tmp_path_factory.mktemp("modes")
    reference = write(root / "ref.png", np.stack([a] * 3, axis=-1))
    if mode == "P":
        path = root / "img.png"
        Image.fromarray(a).convert("P").save(path)
    else:
        array, pil_mode, fmt = as_file(a, mode, offset)
        path = write(root / f"img.{fmt.lower()}", array, pil_mode, fmt)
    with Image.open(path) as im:
        assert im.mode == mode
    size, resize = (20, 22) if resample else (side, side)
    data = ImageFolderDataset([(reference, 0), (path, 1)], image_size=size, resize=resize)
    want, got = data[0][0], data[1][0]
    assert got.shape == (3, size, size) and got.dtype == torch.float32
    assert 0 <= got.min() and got.max() <= 1
    # 8-bit modes are the same picture exactly. A 16-bit one rounds to it (value / 257 within half a level);
    # resampled, the 8-bit reference adds its own rounding (PIL rounds to bytes after each of its two passes,
    # up to one level), the 16-bit picture is resampled in float.
    tol = 0.0 if mode in ("L", "RGB", "RGBA", "P") else (2 if resample else 1) / 255
    assert (got - want).abs().max() <= tol + 1e-6


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I"])
def test_16_bit_grey_is_divided_by_65535_into_three_equal_channels(mode):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.int64)
    dtype = {"I;16": "<u2", "I;16B": ">u2", "I;16L": "<u2", "I": "<i4"}[mode]
    image = Image.frombytes(mode, (4, 1), values.astype(dtype).tobytes())
    out = unit_range_image(image, "RGB")
    assert out.mode == "F"
    assert np.allclose(np.asarray(out), values / 65535)


def test_16_bit_masks_binarise_at_half_their_range(folder: Path, tmp_path: Path):
    mask_root = tmp_path / "masks"
    mask = np.full((40, 40), 300, dtype="<u2")  # 300 / 65535: background (8-bit conversion saturated it to 255)
    mask[:, :20] = 40000
    for path in (folder / "val").rglob("*.png"):
        write(mask_root / "val" / path.relative_to(folder / "val"), mask, "I;16", "PNG")
    dm = module(folder, mask_root=str(mask_root))
    dm.setup("validate")
    _, _, masks = next(iter(dm.val_dataloader()))
    assert (masks[:, :, :, :16] == 1).all() and (masks[:, :, :, 16:] == 0).all()


# ----- folder structure -------------------------------------------------------------------------------


def test_symlink_loop_in_a_class_folder_is_followed_once(folder: Path, tmp_path: Path):
    cat = folder / "train" / "cat"
    os.symlink(cat, cat / "loop", target_is_directory=True)  # cat/loop -> cat
    extra = tmp_path / "extra"
    write(extra / "more.png", noise(7))
    os.symlink(extra, cat / "extra", target_is_directory=True)  # a link out is followed (once)
    os.symlink(extra, folder / "train" / "dog" / "extra", target_is_directory=True)
    dm = module(folder)
    dm.setup("fit")
    counts = np.bincount([label for _, label in dm.train_dataloader().dataset.samples])
    assert counts.tolist() == [5, 5]


def test_one_class_dataset_is_refused_at_setup(tmp_path: Path):
    for split in ("train", "val"):
        write(tmp_path / split / "cat" / "a.png", noise(0))
    dm = module(tmp_path)
    with pytest.raises(ValueError, match=r"only one class folder \('cat'\).*at least 2 classes"):
        dm.setup("fit")
