"""Training augmentation of image batches (datamodules.augment): crops, flips, seeding, where it applies."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from datamodules import ImageFolderDataModule
from datamodules.augment import (
    batch_generator,
    random_crop_flip,
    random_resized_crop_flip,
    resolve_mode,
)


def test_a_random_crop_is_a_window_of_the_zero_padded_image_flipped_or_not():
    x = torch.rand(6, 3, 16, 16)
    m = (torch.rand(6, 1, 16, 16) > 0.5).float()
    out, out_m = random_crop_flip(x, m, batch_generator(0, 3), pad=2)
    padded, padded_m = F.pad(x, (2, 2, 2, 2)), F.pad(m, (2, 2, 2, 2))
    for i in range(6):  # each image is one of the (2·pad + 1)² windows, maybe mirrored, and its mask follows
        windows = [(padded[i, :, r:r + 16, c:c + 16], padded_m[i, :, r:r + 16, c:c + 16])
                   for r in range(5) for c in range(5)]
        hits = [(w, wm) for w, wm in windows for flip in (False, True)
                if torch.equal(out[i], w.flip(-1) if flip else w)
                and torch.equal(out_m[i], wm.flip(-1) if flip else wm)]
        assert hits, f"image {i} is not a padded window"


def test_the_same_seed_step_and_rank_draw_the_same_augmentation_and_other_steps_differ():
    x, m = torch.rand(8, 3, 16, 16), torch.zeros(8, 1, 16, 16)
    a = random_crop_flip(x, m, batch_generator(0, 7, rank=1))[0]
    assert torch.equal(a, random_crop_flip(x, m, batch_generator(0, 7, rank=1))[0])
    assert not torch.equal(a, random_crop_flip(x, m, batch_generator(0, 8, rank=1))[0])
    assert not torch.equal(a, random_crop_flip(x, m, batch_generator(0, 7, rank=0))[0])


def test_a_resized_crop_of_the_whole_image_is_the_image_or_its_mirror():
    x = torch.rand(8, 3, 16, 16)
    m = (torch.rand(8, 1, 16, 16) > 0.5).float()
    out, out_m = random_resized_crop_flip(x, m, batch_generator(1, 0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    for i in range(8):
        same = torch.allclose(out[i], x[i], atol=1e-5) and torch.equal(out_m[i], m[i])
        mirrored = torch.allclose(out[i], x[i].flip(-1), atol=1e-5) and torch.equal(out_m[i], m[i].flip(-1))
        assert same or mirrored
    part, part_m = random_resized_crop_flip(x, m, batch_generator(1, 1))
    assert part.shape == x.shape and set(part_m.unique().tolist()) <= {0.0, 1.0}


def test_auto_picks_crops_for_small_images_and_resized_crops_for_large_ones():
    assert resolve_mode("auto", 32) == "crop" and resolve_mode("auto", 224) == "resized_crop"
    with pytest.raises(ValueError, match="data.augment"):
        resolve_mode("mixup", 32)


def test_an_image_folder_augments_training_batches_only(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(2):
                Image.fromarray((rng.random((16, 16, 3)) * 255).astype("uint8")).save(tmp_path / split / c / f"{i}.png")
    dm = ImageFolderDataModule(str(tmp_path), image_size=16, batch_size=4)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    dm.trainer = types.SimpleNamespace(training=False, global_step=0, global_rank=0)
    assert torch.equal(dm.on_after_batch_transfer(batch, 0)[0], batch[0])
    dm.trainer = types.SimpleNamespace(training=True, global_step=0, global_rank=0)
    augmented = dm.on_after_batch_transfer(batch, 0)
    assert augmented[0].shape == batch[0].shape and not torch.equal(augmented[0], batch[0])
    assert torch.equal(augmented[1], batch[1])
    off = ImageFolderDataModule(str(tmp_path), image_size=16, batch_size=4, augment="none")
    off.trainer = dm.trainer
    assert torch.equal(off.on_after_batch_transfer(batch, 0)[0], batch[0])
