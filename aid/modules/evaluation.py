"""LightningModule for evaluation-only runs (``evaluate.py``): a classifier and optional RTS maskers."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torchmetrics
from torch import Tensor

from aid.checkpoints import checkpoint_data
from aid.interpreters import Interpreter
from aid.interpreters.rts import RTSInterpreter, RTSMasker, load_masker_state
from aid.modules.data_checks import check_class_count, check_same_data
from aid.modules.target_classifier import target_classifier


class EvaluationModule(pl.LightningModule):
    """Holds what the evaluation callbacks attack: the classifier and, optionally, RTS / RTSA maskers.

    Args:
        classifier_ckpt: checkpoint of a ``ClassifierModule``; or
        arch: a timm model name used when no checkpoint is given (with ``num_classes``; ``pretrained`` passed
            through), for users who evaluate pretrained models directly.
        pretrained, num_classes, in_chans, output_stride, channels: the classifier's architecture: checked
            against the checkpoint where set, else what ``arch`` builds.
        classifier: a classifier object instead (Python API; not saved in hyper-parameters).
        rts_ckpt, rtsa_ckpt: checkpoints of ``RTSModule`` / ``AIDModule`` runs; they become the
            interpreters ``rts`` and ``rtsa``.
        mask_scale: the maskers' mask resolution divisor (as trained).

    ``test_step`` / ``validation_step`` log the classifier's accuracy (``test/acc``, ``val/acc``);
    the evaluation callbacks do the rest.
    """

    def __init__(
        self,
        classifier_ckpt: str | None = None,
        arch: str | None = None,
        num_classes: int | None = None,
        pretrained: bool | None = None,
        output_stride: int | None = None,
        rts_ckpt: str | None = None,
        rtsa_ckpt: str | None = None,
        mask_scale: int = 2,
        in_chans: int | None = None,
        channels: list[int] | None = None,
        classifier: torch.nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["classifier"])
        self.classifier = target_classifier(
            classifier_ckpt, arch, pretrained, num_classes, in_chans, output_stride, channels, classifier
        )
        self._classifier_data = checkpoint_data(classifier_ckpt) if classifier_ckpt is not None else None
        # Record the real class count (what Lightning logs and checks against the datamodule's hparams).
        self.hparams.num_classes = self.classifier.num_classes
        self._hparams_initial.num_classes = self.classifier.num_classes
        self.maskers = torch.nn.ModuleDict()
        for name, ckpt in (("rts", rts_ckpt), ("rtsa", rtsa_ckpt)):
            if ckpt is not None:
                masker = RTSMasker.from_classifier(self.classifier, mask_scale=mask_scale)
                load_masker_state(masker, ckpt)
                self.maskers[name] = masker.eval().requires_grad_(False)
        k = self.classifier.num_classes
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=k)
        self.test_acc = torchmetrics.Accuracy(task="multiclass", num_classes=k)

    def setup(self, stage: str) -> None:
        check_class_count(self.classifier.num_classes, self.trainer, "the classifier")
        check_same_data(self._classifier_data, self.trainer, f"classifier checkpoint {self.hparams.classifier_ckpt}")

    def interpreters(self) -> dict[str, Interpreter]:
        """``rts`` / ``rtsa`` interpreters from the given checkpoints."""
        return {name: RTSInterpreter(self.classifier, masker=m) for name, m in self.maskers.items()}

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, K) of [0, 1] images."""
        return self.classifier(x)

    def validation_step(self, batch, batch_idx: int) -> None:
        self.val_acc(self(batch[0]), batch[1])
        self.log("val/acc", self.val_acc, on_epoch=True)

    def test_step(self, batch, batch_idx: int) -> None:
        self.test_acc(self(batch[0]), batch[1])
        self.log("test/acc", self.test_acc, on_epoch=True)
