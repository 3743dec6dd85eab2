"""Classifiers on [0, 1] images: timm models (:func:`build_classifier`) or any ``nn.Module`` (:func:`wrap_classifier`).

Every model in the framework takes images in [0, 1] (NCHW float). The mean/std normalisation lives
inside the :class:`Classifier`, so attacks, interpreters and metrics all work in pixel space. A
:class:`Classifier` also gives what the representation interpreters need: a feature map (CAM, Grad-CAM),
the logits from the same pass, the linear head's class weights (CAM) and a multi-scale encoder copy (RTS).
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Sequence
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aid.hooked import HookedEncoder, capture_output
from aid.model_state import frozen_eval

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_SIZE = 8  # below this the strided stems of timm CNNs leave nothing to classify or to map


class Classifier(nn.Module, abc.ABC):
    """A classifier ``f`` on [0, 1] images with its normalisation inside: what attacks and interpreters use.

    ``backbone`` is the wrapped network (on normalised images), ``mean`` / ``std`` the normalisation
    buffers (1, C, 1, 1). Implementations: :class:`NormalizedClassifier` (timm) and
    :class:`WrappedClassifier` (any ``nn.Module``).

    Shapes: ``forward(x)``: (B, C, H, W) in [0, 1] -> logits (B, K); ``features(x)`` -> (B, D, h, w);
    ``features_and_logits(x)`` -> both from one forward pass.
    """

    backbone: nn.Module
    mean: Tensor
    std: Tensor

    @property
    @abc.abstractmethod
    def num_classes(self) -> int:
        """Number of output classes K."""

    @property
    def in_chans(self) -> int:
        """Number of input channels the model expects."""
        return int(self.mean.shape[1])

    @property
    @abc.abstractmethod
    def linear_head(self) -> nn.Linear:
        """The final linear layer (CAM's class weights); TypeError when the model has none."""

    def normalize(self, x: Tensor) -> Tensor:
        """Map [0, 1] pixels to the backbone's normalised input space."""
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    @abc.abstractmethod
    def features(self, x: Tensor) -> Tensor:
        """The feature map (B, D, h, w) of [0, 1] images x (B, C, H, W)."""

    @abc.abstractmethod
    def features_and_logits(self, x: Tensor, cut: bool = False) -> tuple[Tensor, Tensor]:
        """(feature map (B, D, h, w), logits (B, K)) of [0, 1] images x from one forward pass.

        With ``cut=True`` the feature map is a fresh leaf that requires grad and the logits' graph starts
        there (Grad-CAM's weights without a graph to x).
        """

    @abc.abstractmethod
    def check_cam(self) -> None:
        """Raise (TypeError / ValueError, naming what is missing) unless CAM is defined for this model:
        logits = linear_head(global average pool of the feature map)."""

    @abc.abstractmethod
    def copy_encoder(self) -> nn.Module:
        """A deep copy of the network as a multi-scale encoder of normalised images with timm's interface
        (``forward_intermediates``, ``forward_head``, ``feature_info``, ``num_classes``): the RTS masker's."""

    def _set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))


class NormalizedClassifier(Classifier):
    """A classifier ``f`` on [0, 1] images: normalise, backbone features, global pool + linear head.

    Args:
        backbone: a timm model (anything with ``forward_features``, ``forward_head`` and
            ``get_classifier``).
        mean, std: per-channel statistics used to normalise inputs, length ``in_chans``.

    Shapes: ``forward(x)``: (B, C, H, W) in [0, 1] -> logits (B, K). ``features(x)`` -> the last
    convolutional feature map (B, D, h, w); ``head(features)`` -> logits (B, K).

    Example::

        classifier = NormalizedClassifier(timm.create_model("resnet18", num_classes=10), IMAGENET_MEAN, IMAGENET_STD)
        logits = classifier(x)
    """

    def __init__(self, backbone: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.backbone = backbone
        self._set_normalization(mean, std)

    @property
    def num_classes(self) -> int:
        """Number of output classes K."""
        return int(self.backbone.num_classes)

    @property
    def linear_head(self) -> nn.Linear:
        """The final linear layer (used by CAM for its class weights)."""
        fc = self.backbone.get_classifier()
        if not isinstance(fc, nn.Linear):
            raise TypeError(f"CAM needs a linear head, this model has {type(fc).__name__}")
        return fc

    def check_cam(self) -> None:
        """Raise unless the head is global average pooling + linear (TypeError / ValueError)."""
        self.linear_head  # noqa: B018  (raises TypeError if the head is not linear)
        gp = getattr(self.backbone, "global_pool", None)
        pool = gp if isinstance(gp, str) else getattr(gp, "pool_type", "avg")  # timm ViTs name it: "token"
        if pool != "avg":
            raise ValueError(f"CAM needs global average pooling before the linear head, got {pool!r}")

    def features(self, x: Tensor) -> Tensor:
        """Last convolutional feature map (B, D, h, w) of [0, 1] images x (B, C, H, W)."""
        return self.backbone.forward_features(self.normalize(x))

    def head(self, features: Tensor) -> Tensor:
        """Logits (B, K) from a feature map (B, D, h, w): global pooling then the linear head."""
        return self.backbone.forward_head(features)

    def features_and_logits(self, x: Tensor, cut: bool = False) -> tuple[Tensor, Tensor]:
        """(:meth:`features`, :meth:`head` of them) of [0, 1] images x; with ``cut=True`` the features are
        computed without a graph and the logits' graph starts at them (a leaf that requires grad)."""
        if cut:
            with torch.no_grad():
                feats = self.features(x)
            feats = feats.detach().requires_grad_(True)
        else:
            feats = self.features(x)
        return feats, self.head(feats)

    def copy_encoder(self) -> nn.Module:
        """A deep copy of the timm backbone (its ``forward_intermediates`` gives the levels)."""
        return copy.deepcopy(self.backbone)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, K) of [0, 1] images x (B, C, H, W)."""
        return self.head(self.features(x))


class WrappedClassifier(Classifier):
    """Any ``nn.Module`` classifier (a torchvision model, one's own CNN) as a :class:`Classifier`.

    The normalisation runs before the module; the feature map is the output of the module named
    ``layer`` (as captum names it: ``"layer4"`` for a torchvision ResNet), read by a forward hook during
    the ordinary forward pass, so one pass gives features and logits. CAM needs the module to end with
    global average pooling and a linear layer (``head``, default: the last ``nn.Linear``) right after
    ``layer``; :meth:`check_cam` verifies this on a dummy input. Grad-CAM works for any ``layer`` with a
    (B, D, h, w) output. RTS gets a copy of the module whose levels are read by hooks
    (:class:`~aid.hooked.HookedEncoder`). Build it with :func:`wrap_classifier`.

    Args:
        model: the classifier on normalised images, returning logits (B, K).
        mean, std: per-channel normalisation (both or neither; default None: the identity, for a model
            that normalises itself).
        layer: name of the feature layer inside ``model`` (default None: no features; CAM, Grad-CAM
            without a layer and RTS then raise).
        head: name of the final ``nn.Linear`` (default None: the last ``nn.Linear`` of ``model``).
        num_classes: K (default: ``out_features`` of the head).
        in_chans: input channels (default: ``len(mean)``, else the first ``nn.Conv2d``'s ``in_channels``).
        probe_size: side of the dummy input of :meth:`check_cam` and :meth:`copy_encoder` (default 64).

    Shapes: ``forward(x)``: (B, C, H, W) in [0, 1] -> logits (B, K); ``features(x)`` -> (B, D, h, w).

    Example::

        clf = wrap_classifier(torchvision.models.resnet18(num_classes=10), IMAGENET_MEAN, IMAGENET_STD, layer="layer4")
        maps = build_interpreter("cam", clf)(x, target)
    """

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        layer: str | None = None,
        head: str | None = None,
        num_classes: int | None = None,
        in_chans: int | None = None,
        probe_size: int = 64,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither (the model then normalises itself)")
        self.backbone = model
        named = dict(model.named_modules())
        if layer is not None and layer not in named:
            some = ", ".join(n for n in list(named)[1:12] if n)
            raise ValueError(f"layer {layer!r} is not a module of {type(model).__name__} (e.g. {some}, ...)")
        linears = [n for n, m in named.items() if isinstance(m, nn.Linear)]
        if head is not None and not isinstance(named.get(head), nn.Linear):
            raise ValueError(f"head {head!r} is not an nn.Linear of {type(model).__name__}; linear layers: {linears}")
        self.layer = layer
        self.head_name = head if head is not None else (linears[-1] if linears else None)
        if num_classes is None:
            if self.head_name is None:
                raise ValueError(f"{type(model).__name__} has no nn.Linear: give num_classes")
            num_classes = named[self.head_name].out_features
        self._num_classes = int(num_classes)
        if in_chans is None:
            convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
            if mean is not None:
                in_chans = len(mean)
            elif convs:
                in_chans = convs[0].in_channels
            else:
                raise ValueError(f"cannot tell the input channels of {type(model).__name__}: give in_chans or mean")
        in_chans = int(in_chans)
        if mean is None:
            mean, std = (0.0,) * in_chans, (1.0,) * in_chans  # exact identity: (x - 0) / 1 == x
        if len(mean) != in_chans or len(std) != in_chans:
            raise ValueError(f"mean and std need {in_chans} values (in_chans), got {len(mean)} and {len(std)}")
        self._set_normalization(tuple(mean), tuple(std))
        self.probe_size = int(probe_size)

    @property
    def num_classes(self) -> int:
        """Number of output classes K."""
        return self._num_classes

    def _submodule(self, name: str | None, missing: str) -> nn.Module:
        """The module of the wrapped model called ``name``; TypeError with the message ``missing`` when None."""
        if name is None:
            raise TypeError(missing)
        return self.backbone.get_submodule(name)

    @property
    def feature_layer(self) -> nn.Module:
        """The module named ``layer`` (TypeError when no layer was given)."""
        return self._submodule(self.layer, f"{type(self.backbone).__name__} was wrapped without a feature layer: "
                               "give layer=<module name> (as captum names it, e.g. 'layer4') to wrap_classifier")

    @property
    def linear_head(self) -> nn.Linear:
        """The final ``nn.Linear`` (``head``, else the last one); TypeError when there is none."""
        return self._submodule(self.head_name, f"CAM needs a final nn.Linear, {type(self.backbone).__name__} has "
                               "none (give head=<name of the linear layer> to wrap_classifier, or use gradcam)")

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, K) of [0, 1] images x (B, C, H, W)."""
        return self.backbone(self.normalize(x))

    def features_and_logits(self, x: Tensor, cut: bool = False) -> tuple[Tensor, Tensor]:
        """(output of ``layer`` (B, D, h, w), logits (B, K)) of [0, 1] images x from one forward pass.

        With ``cut=True`` the layer's output is a leaf that requires grad (see
        :func:`~aid.hooked.capture_output`); the layers before it record a graph only if their parameters
        require grad.
        """
        with capture_output(self.feature_layer, cut=cut, name=self.layer) as captured:
            logits = self(x)
        if not captured:
            raise RuntimeError(f"layer {self.layer!r} was not called in the forward pass")
        return captured[-1], logits

    def features(self, x: Tensor) -> Tensor:
        """Output (B, D, h, w) of ``layer`` for [0, 1] images x (B, C, H, W)."""
        return self.features_and_logits(x)[0]

    def check_cam(self) -> None:
        """Raise a TypeError unless logits = linear_head(spatial mean of ``layer``'s output), checked on a
        seeded dummy input in eval mode (modes and flags restored)."""
        fc, name = self.linear_head, type(self.backbone).__name__
        g = torch.Generator().manual_seed(0)
        x = torch.rand(2, self.in_chans, self.probe_size, self.probe_size, generator=g).to(self.mean.device)
        with frozen_eval(self), torch.no_grad():
            feats, logits = self.features_and_logits(x.to(fc.weight.dtype))
            if feats.shape[1] != fc.in_features:
                raise TypeError(f"CAM needs layer {self.layer!r} to feed the linear head {self.head_name!r}: "
                                f"it has {feats.shape[1]} channels, the head takes {fc.in_features} features")
            pooled = F.linear(feats.mean(dim=(2, 3)), fc.weight, fc.bias)
        tol = 1e-4 * (1.0 + logits.abs().max().item())
        if logits.shape != pooled.shape or not torch.allclose(pooled.float(), logits.float(), rtol=1e-3, atol=tol):
            raise TypeError(f"CAM needs {name}'s logits to be {self.head_name!r} applied to the global average "
                            f"pool of layer {self.layer!r}; they are not (another pooling or layers in between?): "
                            "use gradcam")

    def copy_encoder(self) -> HookedEncoder:
        """A deep copy of the module as a :class:`~aid.hooked.HookedEncoder` with levels up to ``layer``."""
        self.feature_layer  # noqa: B018  (raises TypeError without a layer)
        return HookedEncoder(
            copy.deepcopy(self.backbone), self.layer, self.in_chans, self.num_classes, self.probe_size
        )


def wrap_classifier(
    model: nn.Module, mean: Sequence[float] | None = None, std: Sequence[float] | None = None, **kwargs: Any
) -> Classifier:
    """Any ``nn.Module`` classifier on [0, 1] images as a :class:`Classifier`: a :class:`WrappedClassifier`
    built from ``model``, ``mean``, ``std`` and ``kwargs`` (``layer``, ``head``, ``num_classes``, ``in_chans``,
    ``probe_size``; see there).

    A :class:`Classifier` (e.g. from :func:`build_classifier`) is returned as it is when no other argument
    is given (``probe_size`` aside).

    Example::

        clf = wrap_classifier(torchvision.models.resnet18(num_classes=10), IMAGENET_MEAN, IMAGENET_STD, layer="layer4")
        atk = build_attack("adv2", clf, interpreter=build_interpreter("cam", clf), eps=8 / 255)
    """
    if isinstance(model, Classifier):
        settings = {"mean": mean, "std": std, **kwargs}
        settings.pop("probe_size", None)
        if any(a is not None for a in settings.values()):
            raise ValueError(f"{type(model).__name__} is already a Classifier (normalisation inside); wrap its "
                             "backbone instead to change its settings")
        return model
    return WrappedClassifier(model, mean, std, **kwargs)


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


def check_images(x: Tensor, model: Classifier | None = None, name: str = "x") -> None:
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
