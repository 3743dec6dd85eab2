"""CAM (Zhou et al. 2016; the paper's §3.3, Eqn 6-7) and Grad-CAM (Selvaraju et al. 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aid.hooked import capture_output
from aid.interpreters.base import INTERPRETERS, Interpreter, minmax_normalize
from aid.interpreters.grad import SCORES, class_score, grad_input
from aid.models import Classifier


def upsample_normalize(cams: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear (align_corners=False) upsampling of (B, 1, h, w) maps to ``size``, then per-image min-max.

    Half-precision maps (autocast) are promoted to float32 first, so the normalisation keeps its precision.
    """
    cams = F.interpolate(
        cams.float() if cams.dtype in (torch.float16, torch.bfloat16) else cams,
        size=size,
        mode="bilinear",
        align_corners=False,
    )
    return minmax_normalize(cams)


@INTERPRETERS.register("cam")
class CAM(Interpreter):
    """Class activation map: m_t[i, j] = Σ_k w_{t,k} a_k[i, j] (paper Eqn 7).

    a_k is the last convolutional feature map (``classifier.features``) and w_t the target row of the
    linear head that follows global average pooling (``classifier.linear_head``); the bias is a
    constant shift that min-max normalisation removes. The map is upsampled bilinearly to the input
    size and min-max normalised per image. The paper's Eqn 7 has no ReLU (default); ``relu=True``
    clamps negative evidence first, as Grad-CAM does. The map is a forward computation, so with
    ``create_graph=True`` it is differentiable with respect to x.

    Args:
        classifier: a :class:`~aid.models.Classifier` whose logits are its linear head applied to the global
            average pool of its feature map (a timm CNN; a wrapped torchvision ResNet with ``layer="layer4"``).
        relu: apply ReLU to the weighted sum before upsampling (default False, as Eqn 7).

    Shapes: x (B, C, H, W) in [0, 1], target (B,) -> maps (B, 1, H, W) in [0, 1].

    Example::

        cam = CAM(classifier)
        maps = cam(x, target)
    """

    name = "cam"
    differentiable = True

    def __init__(self, classifier: Classifier, relu: bool = False) -> None:
        super().__init__(classifier)
        classifier.check_cam()  # raises early if the end is not global average pooling + linear head
        self.relu = bool(relu)

    def from_features(self, feats: Tensor, target: Tensor, size: tuple[int, int]) -> Tensor:
        """Normalised CAMs (B, 1, *size) from the last feature map (B, D, h, w) of the classifier."""
        check_feature_map(feats, "CAM")
        w = self.classifier.linear_head.weight[target].to(feats.dtype)  # (B, D)
        cams = torch.einsum("bd,bdhw->bhw", w, feats)[:, None]
        if self.relu:
            cams = cams.relu()
        return upsample_normalize(cams, size)

    def _attribute(self, x: Tensor, target: Tensor, create_graph: bool) -> Tensor:
        with torch.set_grad_enabled(create_graph):
            return self.from_features(self.classifier.features(x), target, x.shape[-2:])


def check_feature_map(feats: Tensor, who: str) -> None:
    """Raise a ValueError unless ``feats`` is a CNN feature map (B, D, h, w) (a ViT gives tokens)."""
    if feats.dim() != 4:
        raise ValueError(f"{who} needs a convolutional feature map (B, D, h, w) from classifier.features, got "
                         f"shape {tuple(feats.shape)} (a transformer's tokens?); use grad, ig or rts instead")


@INTERPRETERS.register("gradcam")
class GradCAM(Interpreter):
    """Grad-CAM: m = ReLU(Σ_k α_k A_k), α_k = spatial mean of ∂f_t/∂A_k, for any convolutional layer.

    With the default layer (the last feature map, ``classifier.features``) and a global-average-pool
    + linear head, α_k = w_{t,k} / (h·w), so Grad-CAM and CAM (with ``relu=True``) give the same
    normalised map. A named layer is read with a forward hook removed on exit. The map is upsampled
    bilinearly to the input size and min-max normalised per image; with ``create_graph=True`` it is
    differentiable with respect to x (α then needs a double backward through the network).

    Args:
        classifier: target classifier ``f``.
        layer: a module name inside ``classifier`` (e.g. ``"backbone.layer3"``) or inside its backbone
            (``"layer3"``, as captum names it) whose output is A; None (default) = the output of
            ``classifier.features`` (a wrapped model's ``layer``).
        score: ``"logit"`` (default) or ``"prob"``: the class score f_t.
        relu: apply ReLU to the weighted sum (default True, as Selvaraju et al. and captum's
            ``relu_attributions=True``).

    Shapes: x (B, C, H, W) in [0, 1], target (B,) -> maps (B, 1, H, W) in [0, 1].

    Example::

        gradcam = GradCAM(classifier, layer="backbone.layer3")
        maps = gradcam(x, target)
    """

    name = "gradcam"
    differentiable = True

    def __init__(
        self,
        classifier: Classifier,
        layer: str | None = None,
        score: str = "logit",
        relu: bool = True,
    ) -> None:
        super().__init__(classifier)
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        self.module: nn.Module | None = None
        if layer is not None:
            named = dict(classifier.named_modules())
            inner = dict(classifier.backbone.named_modules()) if hasattr(classifier, "backbone") else {}
            if layer not in named and layer not in inner:
                some = ", ".join(n for n in list(named)[1:12] if n)
                raise ValueError(f"layer {layer!r} is not a module of the classifier (e.g. {some}, ...)")
            self.module = named[layer] if layer in named else inner[layer]
        self.layer, self.score, self.relu = layer, score, bool(relu)

    def activations_and_scores(self, x: Tensor, target: Tensor, cut: bool = False) -> tuple[Tensor, Tensor]:
        """Activations A (B, D, h, w) of the layer and target scores (B,) in one forward pass.

        With ``cut=True`` A is a fresh leaf that requires grad: the graph starts at the layer, so with
        frozen parameters (as inside :meth:`attribute`) the part of the network before it records
        nothing and the backward to A runs through the head only (the map is then not differentiable
        with respect to x).
        """
        if self.module is None:
            feats, logits = self.classifier.features_and_logits(x, cut=cut)
            check_feature_map(feats, "Grad-CAM")
            return feats, class_score(logits, target, self.score)
        with capture_output(self.module, cut=cut, name=self.layer) as captured:
            scores = class_score(self.classifier(x), target, self.score)
        return captured[-1], scores

    def _attribute(self, x: Tensor, target: Tensor, create_graph: bool) -> Tensor:
        if create_graph:
            with grad_input(x, create_graph) as xi:
                acts, scores = self.activations_and_scores(xi, target)
                (grads,) = torch.autograd.grad(scores.sum(), acts, create_graph=True)
        else:
            # No graph to x needed: start it at the layer (the classifier's parameters are frozen here).
            with torch.inference_mode(False), torch.enable_grad():
                xi = x.clone() if x.is_inference() else x.detach()
                acts, scores = self.activations_and_scores(xi, target, cut=True)
                (grads,) = torch.autograd.grad(scores.sum(), acts)
        with torch.set_grad_enabled(create_graph):
            alpha = grads.mean(dim=(2, 3), keepdim=True)
            cams = (alpha * acts).sum(dim=1, keepdim=True)
            if self.relu:
                cams = cams.relu()
            return upsample_normalize(cams, x.shape[-2:])
