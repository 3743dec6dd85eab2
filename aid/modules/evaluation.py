"""LightningModule for evaluation-only runs (``evaluate.py``): a classifier and optional RTS maskers."""

from __future__ import annotations

from typing import Any

import torch
import torchmetrics
from torch import Tensor

from aid.interpreters import Interpreter
from aid.interpreters.rts import RTSInterpreter, RTSMasker, load_masker_state
from aid.modules.target_classifier import TargetClassifierModule


class EvaluationModule(TargetClassifierModule):
    """Holds what the evaluation callbacks attack: the classifier and, optionally, RTS / RTSA maskers.

    Args:
        classifier_ckpt, **classifier_args (arch, pretrained, num_classes, in_chans, output_stride, channels,
            classifier; by keyword): the classifier, see
            :class:`~aid.modules.target_classifier.TargetClassifierModule` (``arch`` without a checkpoint:
            for users who evaluate pretrained models directly).
        rts_ckpt, rtsa_ckpt: checkpoints of ``RTSModule`` / ``AIDModule`` runs; they become the
            interpreters ``rts`` and ``rtsa``.
        mask_scale: the maskers' mask resolution divisor (as trained).

    ``test_step`` / ``validation_step`` log the classifier's accuracy (``test/acc``, ``val/acc``);
    the evaluation callbacks do the rest.
    """

    def __init__(
        self,
        classifier_ckpt: str | None = None,
        rts_ckpt: str | None = None,
        rtsa_ckpt: str | None = None,
        mask_scale: int = 2,
        **classifier_args: Any,
    ) -> None:
        super().__init__(classifier_ckpt, **classifier_args)
        self.maskers = torch.nn.ModuleDict()
        for name, ckpt in (("rts", rts_ckpt), ("rtsa", rtsa_ckpt)):
            if ckpt is not None:
                masker = RTSMasker.from_classifier(self.classifier, mask_scale=mask_scale)
                load_masker_state(masker, ckpt)
                self.maskers[name] = masker.eval().requires_grad_(False)
        k = self.classifier.num_classes
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=k)
        self.test_acc = torchmetrics.Accuracy(task="multiclass", num_classes=k)

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
