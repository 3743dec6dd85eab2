"""The target classifier ``f`` of the RTS, AID and evaluation modules: from a checkpoint, from timm, or given.

The three sources that ``ClassifierModule`` users know: a ``ClassifierModule`` checkpoint (its architecture
checked against the architecture arguments that are set), a timm architecture (``pretrained`` weights
need network access the first time), or an ``nn.Module`` object (Python API: a timm
:class:`~aid.models.NormalizedClassifier`, or any module through :func:`aid.models.wrap_classifier`).
:class:`TargetClassifierModule` is the LightningModule base that holds it.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from aid.checkpoints import checkpoint_data, load_classifier
from aid.models import build_classifier
from aid.modules.data_checks import check_class_count, check_same_data

#: The architecture arguments that :func:`target_classifier` takes by keyword (with their meaning there).
ARCHITECTURE = ("arch", "pretrained", "num_classes", "in_chans", "output_stride", "channels")


def target_classifier(
    classifier_ckpt: str | None = None, classifier: nn.Module | None = None, **architecture: Any
) -> nn.Module:
    """The target classifier, in eval mode with ``requires_grad`` off.

    Args:
        classifier_ckpt: checkpoint of a ``ClassifierModule`` run. The architecture arguments that are set
            must match it (ValueError naming the key and both values otherwise).
        classifier: a classifier object instead (Python API); ``classifier_ckpt`` and ``arch`` must then be
            unset.
        **architecture: by keyword, each None when not given: ``arch``, the timm model name used when no
            checkpoint is given (with ``num_classes``); ``pretrained``, timm's pretrained weights for ``arch``
            (None: False); ``num_classes``, ``in_chans``, ``output_stride``, ``channels``: the architecture
            (None: the checkpoint's, or the timm defaults 3 / 32 / the model's own widths).
    """
    unknown = sorted(set(architecture) - set(ARCHITECTURE))
    if unknown:
        raise TypeError(f"target_classifier got unexpected arguments {unknown}; architecture ones: {ARCHITECTURE}")
    arch, pretrained, num_classes, in_chans, output_stride, channels = (architecture.get(k) for k in ARCHITECTURE)
    if classifier is not None:
        if classifier_ckpt is not None or arch is not None:
            raise ValueError("give the classifier object, a classifier_ckpt or an arch, not several")
        model = classifier
    elif classifier_ckpt is not None:
        expect = {"arch": arch, "num_classes": num_classes, "in_chans": in_chans, "output_stride": output_stride,
                  "channels": list(channels) if channels is not None else None}
        model = load_classifier(classifier_ckpt, expect=expect)
    elif arch is not None:
        if num_classes is None:
            raise ValueError("model.num_classes is needed with model.arch when no model.classifier_ckpt is given")
        model = build_classifier(
            arch, num_classes=num_classes, pretrained=bool(pretrained), in_chans=in_chans or 3,
            output_stride=output_stride or 32, channels=channels,
        )
    else:
        raise ValueError("give model.classifier_ckpt (a trained classifier), or model.arch and model.num_classes")
    return model.eval().requires_grad_(False)


class TargetClassifierModule(pl.LightningModule):
    """Base of the LightningModules around a frozen target classifier (RTS, AID, evaluation).

    Builds ``self.classifier`` (:func:`target_classifier`), saves the hyper-parameters (the subclasses'
    constructor arguments too: Lightning collects them from the constructor frames that call this one;
    ``classifier`` is left out) with the classifier's class count as ``num_classes``, and at
    :meth:`setup` checks the class count and, for a checkpoint, the data it was trained on against the run's
    datamodule. Subclasses take their own arguments and pass these on by keyword (``**classifier_args``),
    so that the Lightning CLI lists them among the subclass's ``init_args``.

    Args:
        classifier_ckpt: checkpoint of a ``ClassifierModule`` run (a configs' prerequisite provides it).
        arch, pretrained, num_classes, in_chans, output_stride, channels: the classifier's architecture:
            checked against the checkpoint where set, or a timm model built from them without a checkpoint
            (None: not given; ``pretrained`` None means False).
        classifier: a classifier object instead (Python API; not saved in hyper-parameters).
    """

    def __init__(
        self,
        classifier_ckpt: str | None = None,
        arch: str | None = None,
        pretrained: bool | None = None,
        num_classes: int | None = None,
        in_chans: int | None = None,
        output_stride: int | None = None,
        channels: list[int] | None = None,
        classifier: torch.nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["classifier"])
        self.classifier = target_classifier(
            classifier_ckpt, classifier, arch=arch, pretrained=pretrained, num_classes=num_classes,
            in_chans=in_chans, output_stride=output_stride, channels=channels,
        )
        self._record_class_count()
        # What the classifier was trained on, checked against the run's data at setup.
        self._classifier_data = checkpoint_data(classifier_ckpt) if classifier_ckpt is not None else None

    def _record_class_count(self) -> None:
        """Store the classifier's class count in the hyper-parameters: what Lightning logs and checks against
        the datamodule's (a run that leaves ``num_classes`` unset would otherwise log None)."""
        self.hparams.num_classes = self._hparams_initial.num_classes = self.classifier.num_classes

    def setup(self, stage: str) -> None:
        check_class_count(self.classifier.num_classes, self.trainer, "the classifier")
        check_same_data(self._classifier_data, self.trainer, f"classifier checkpoint {self.hparams.classifier_ckpt}")
