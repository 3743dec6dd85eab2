"""LightningModule that trains the target classifier ``f``."""

from __future__ import annotations

from typing import Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor

from aid.models import build_classifier
from aid.runs.identity import data_description


class ClassifierModule(pl.LightningModule):
    """Train a timm classifier (normalisation inside) with cross-entropy and torchmetrics accuracy.

    Args:
        arch: timm model name (``resnet10t``, ``resnet18``, ``resnet50``, ``densenet121``, ...).
        num_classes: classes K; ``None`` takes the datamodule's ``num_classes`` at setup.
        pretrained: start from timm's pretrained weights (needs network the first time).
        in_chans: input channels.
        output_stride: 32 for ImageNet-size inputs; 8 or 16 gives small inputs a usable CAM.
        channels: per-stage widths of timm ResNets (a slim model for the embedded data).
        optimizer: ``adamw`` or ``sgd`` (momentum 0.9, nesterov).
        lr: peak learning rate of the one-cycle schedule.
        weight_decay: decoupled weight decay.
        label_smoothing: cross-entropy label smoothing.

    Logs ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc`` (and ``test/...``).
    """

    def __init__(
        self,
        arch: str = "resnet10t",
        num_classes: int | None = None,
        pretrained: bool = False,
        in_chans: int = 3,
        output_stride: Literal[8, 16, 32] = 32,
        channels: list[int] | None = None,
        optimizer: Literal["adamw", "sgd"] = "adamw",
        lr: float = 2e-3,
        weight_decay: float = 5e-4,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"model.lr must be > 0, got {lr}")
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"model.label_smoothing must lie in [0, 1), got {label_smoothing}")
        self.save_hyperparameters()
        self.classifier = None
        if num_classes is not None:
            self._build(num_classes)

    def _build(self, num_classes: int) -> None:
        hp = self.hparams
        self.classifier = build_classifier(
            hp.arch,
            num_classes=num_classes,
            pretrained=hp.pretrained,
            in_chans=hp.in_chans,
            output_stride=hp.output_stride,
            channels=hp.channels,
        )
        self.hparams.num_classes = num_classes
        if getattr(self, "_hparams_initial", None) is not None:  # what Lightning logs and merges
            self._hparams_initial.num_classes = num_classes
        metric = dict(task="multiclass", num_classes=num_classes)
        self.train_acc = torchmetrics.Accuracy(**metric)
        self.val_acc = torchmetrics.Accuracy(**metric)
        self.test_acc = torchmetrics.Accuracy(**metric)

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        dm_classes = getattr(dm, "num_classes", None)
        if self.classifier is None:
            if dm_classes is None:
                raise ValueError("model.num_classes is not set and the datamodule does not say how many classes")
            self._build(int(dm_classes))
        elif dm_classes is not None and int(dm_classes) != self.hparams.num_classes:
            raise ValueError(
                f"class-count mismatch: model.num_classes={self.hparams.num_classes} but the data has "
                f"{dm_classes} classes; set model.num_classes to {dm_classes} or leave it unset"
            )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Store what the classifier is trained on (class names, split sizes, image size) with its weights, so
        that a run given this checkpoint can refuse it for other data."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        described = data_description(dm)
        if described is not None:
            checkpoint["data"] = described

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, K) of [0, 1] images (B, C, H, W)."""
        return self.classifier(x)

    def _step(self, batch, stage: str) -> Tensor:
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing if stage == "train" else 0.0)
        acc = getattr(self, f"{stage}_acc")
        acc(logits, y)
        self.log(f"{stage}/loss", loss, prog_bar=stage != "test", sync_dist=stage != "train")
        self.log(f"{stage}/acc", acc, prog_bar=True, on_epoch=True, on_step=False)
        return loss

    def training_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self):
        hp = self.hparams
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(
                self.parameters(), lr=hp.lr, momentum=0.9, nesterov=True, weight_decay=hp.weight_decay
            )
        else:
            opt = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        total = self.trainer.estimated_stepping_batches
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=hp.lr, total_steps=max(int(total), 1), pct_start=0.2)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
