"""The target classifier ``f`` of the RTS, AID and evaluation modules: from a checkpoint, from timm, or given.

The three sources that ``ClassifierModule`` users know: a ``ClassifierModule`` checkpoint (its architecture
checked against the architecture arguments that are set), a timm architecture (``pretrained`` weights
need network access the first time), or an ``nn.Module`` object (Python API: a timm
:class:`~aid.models.NormalizedClassifier`, or any module through :func:`aid.models.wrap_classifier`).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from aid.checkpoints import load_classifier
from aid.models import build_classifier


def target_classifier(
    classifier_ckpt: str | None = None,
    arch: str | None = None,
    pretrained: bool | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    output_stride: int | None = None,
    channels: Sequence[int] | None = None,
    classifier: nn.Module | None = None,
) -> nn.Module:
    """The target classifier, in eval mode with ``requires_grad`` off.

    Args:
        classifier_ckpt: checkpoint of a ``ClassifierModule`` run. The architecture arguments below that are
            set must match it (ValueError naming the key and both values otherwise).
        arch: timm model name, used when no checkpoint is given (with ``num_classes``).
        pretrained: timm's pretrained weights for ``arch`` (None: False).
        num_classes, in_chans, output_stride, channels: the architecture (None: the checkpoint's, or the
            timm defaults 3 / 32 / the model's own widths).
        classifier: a classifier object instead (Python API); the other arguments must then be unset.
    """
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
