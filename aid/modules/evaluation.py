"""LightningModule for evaluation-only runs (``evaluate.py``): a classifier and optional RTS maskers."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torchmetrics
from torch import Tensor

from aid.checkpoints import load_classifier
from aid.interpreters import Interpreter
from aid.interpreters.rts import RTSInterpreter, RTSMasker, load_masker_state
from aid.models import build_classifier
from aid.modules.data_checks import check_class_count


class EvaluationModule(pl.LightningModule):
    """Holds what the evaluation callbacks attack: the classifier and, optionally, RTS / RTSA maskers.

    Args:
        classifier_ckpt: checkpoint of a ``ClassifierModule``; or
        arch: a timm model name used when no checkpoint is given (``pretrained`` passed through), for
            users who evaluate pretrained models directly.
        num_classes, pretrained, output_stride: for ``arch``.
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
        pretrained: bool = False,
        output_stride: int = 32,
        rts_ckpt: str | None = None,
        rtsa_ckpt: str | None = None,
        mask_scale: int = 2,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if classifier_ckpt is not None:
            classifier = load_classifier(classifier_ckpt, num_classes=num_classes)
        elif arch is not None and num_classes is not None:
            classifier = build_classifier(
                arch, num_classes=num_classes, pretrained=pretrained, output_stride=output_stride
            )
        else:
            raise ValueError("give model.classifier_ckpt, or model.arch and model.num_classes")
        self.classifier = classifier.eval().requires_grad_(False)
        # Record the real class count (what Lightning logs and checks against the datamodule's hparams).
        self.hparams.num_classes = classifier.num_classes
        self._hparams_initial.num_classes = classifier.num_classes
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
