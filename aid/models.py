"""Classifier factory: timm models with the input normalisation inside, split for CAM.

Every model in the framework takes images in [0, 1] (NCHW float). The mean/std normalisation lives
inside :class:`NormalizedClassifier`, so attacks, interpreters and metrics all work in pixel space.
"""

from __future__ import annotations

from collections.abc import Sequence

import timm
import torch
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_SIZE = 8  # below this the strided stems of timm CNNs leave nothing to classify or to map


class NormalizedClassifier(nn.Module):
    """A classifier ``f`` on [0, 1] images: normalise, backbone features, global pool + linear head.

    Args:
        backbone: a timm model (anything with ``forward_features``, ``forward_head`` and
            ``get_classifier``).
        mean, std: per-channel statistics used to normalise inputs, length ``in_chans``.

    Shapes: ``forward(x)``: (B, C, H, W) in [0, 1] -> logits (B, K). ``features(x)`` -> the last
    convolutional feature map (B, D, h, w); ``head(features)`` -> logits (B, K).
    """

    def __init__(self, backbone: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    @property
    def num_classes(self) -> int:
        """Number of output classes K."""
        return int(self.backbone.num_classes)

    @property
    def in_chans(self) -> int:
        """Number of input channels the model expects."""
        return int(self.mean.shape[1])

    @property
    def linear_head(self) -> nn.Linear:
        """The final linear layer (used by CAM for its class weights)."""
        fc = self.backbone.get_classifier()
        if not isinstance(fc, nn.Linear):
            raise TypeError(f"CAM needs a linear head, this model has {type(fc).__name__}")
        return fc

    def normalize(self, x: Tensor) -> Tensor:
        """Map [0, 1] pixels to the backbone's normalised input space."""
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def features(self, x: Tensor) -> Tensor:
        """Last convolutional feature map (B, D, h, w) of [0, 1] images x (B, C, H, W)."""
        return self.backbone.forward_features(self.normalize(x))

    def head(self, features: Tensor) -> Tensor:
        """Logits (B, K) from a feature map (B, D, h, w): global pooling then the linear head."""
        return self.backbone.forward_head(features)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, K) of [0, 1] images x (B, C, H, W)."""
        return self.head(self.features(x))


def build_classifier(
    name: str = "resnet10t",
    num_classes: int = 8,
    pretrained: bool = False,
    in_chans: int = 3,
    output_stride: int = 32,
    channels: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **timm_kwargs,
) -> NormalizedClassifier:
    """Build a timm classifier by name with the normalisation inside.

    Args:
        name: any timm model name (``resnet18``, ``resnet50``, ``densenet121``, ``densenet169``, ...).
        num_classes: number of classes K.
        pretrained: load timm's pretrained weights (needs network access the first time).
        in_chans: input channels.
        output_stride: 32 (the default of ImageNet models), or 16 / 8 for a finer CAM on small
            images (ResNets dilate their last stages instead of striding).
        channels: per-stage widths for timm ResNets (e.g. ``[32, 64, 128, 256]`` for a slim model).
        mean, std: normalisation; defaults to the model's pretrained config (ImageNet statistics).
        timm_kwargs: passed to :func:`timm.create_model`.
    """
    if name not in timm.list_models() and name.split(".")[0] not in timm.list_models():
        raise ValueError(
            f"unknown classifier {name!r}: give a timm model name, e.g. resnet18, resnet50, densenet121"
        )
    kwargs = dict(timm_kwargs)
    if output_stride != 32:
        kwargs["output_stride"] = output_stride
    if channels is not None:
        kwargs["channels"] = tuple(channels)
    backbone = timm.create_model(
        name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs
    )
    cfg = getattr(backbone, "pretrained_cfg", {}) or {}
    mean = tuple(mean if mean is not None else cfg.get("mean", IMAGENET_MEAN))
    std = tuple(std if std is not None else cfg.get("std", IMAGENET_STD))
    if len(mean) != in_chans:
        mean, std = (sum(mean) / len(mean),) * in_chans, (sum(std) / len(std),) * in_chans
    return NormalizedClassifier(backbone, mean, std)


def check_images(x: Tensor, model: NormalizedClassifier | None = None, name: str = "x") -> None:
    """Raise ValueError unless x is a finite float batch (B, C, H, W) with values in [0, 1].

    When ``model`` is given the channel count must match the model's input.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a float tensor in [0, 1], got dtype {x.dtype}")
    if x.shape[-1] < MIN_SIZE or x.shape[-2] < MIN_SIZE:
        size = f"{x.shape[-2]}x{x.shape[-1]}"
        raise ValueError(f"{name} is {size} pixels; the models need at least {MIN_SIZE}x{MIN_SIZE}")
    if model is not None and x.shape[1] != model.in_chans:
        raise ValueError(f"{name} has {x.shape[1]} channels, the model expects {model.in_chans}")
    if not x.numel():
        return
    # One pass: NaN propagates through aminmax and fails both comparisons, ±Inf fails one.
    lo, hi = torch.stack(torch.aminmax(x.detach())).float().tolist()  # one host sync
    if lo >= 0 and hi <= 1:
        return
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf")
    raise ValueError(
        f"{name} must lie in [0, 1] (got min {lo:.3g}, max {hi:.3g}); normalisation happens inside the model"
    )
