"""Shared by the MASK scripts: a classifier checkpoint and the validation images it gets right."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aid.checkpoints import load_classifier  # noqa: E402
from aid.models import NormalizedClassifier  # noqa: E402
from datamodules import ShapesDataModule  # noqa: E402


def embedded_classifier(size: int = 32) -> str:
    """The best checkpoint of the embedded classifier at ``size`` px: the finished run that ``train.py --config
    classifier.yaml`` makes (the main job's, at 32 px), found as configs find their prerequisites."""
    from train import locate

    return str(locate("classifier.yaml", "best", [] if size == 32 else ["--data.init_args.image_size", str(size)]))


def correct_validation_images(
    classifier_ckpt: str | None, size: int = 32, images: int = 64
) -> tuple[NormalizedClassifier, Tensor, Tensor, Tensor]:
    """(frozen classifier, x (N, 3, size, size), y (N,), object masks (N, 1, size, size)): the first
    ``images`` images of the shapes data's first validation batch (seed 0, as the configs) that the
    classifier classifies correctly. ``classifier_ckpt`` None: :func:`embedded_classifier`."""
    clf = load_classifier(classifier_ckpt or embedded_classifier(size)).eval().requires_grad_(False)
    data = ShapesDataModule(image_size=size, num_classes=clf.num_classes, val_size=1000, test_size=1000, seed=0)
    data.setup("fit")
    x, y, objects = next(iter(data.val_dataloader()))[:3]
    with torch.no_grad():
        right = clf(x).argmax(1) == y
    return clf, x[right][:images], y[right][:images], objects[right][:images]
