"""The interpreter interface ``g(x, target) -> map`` and the shared map normalisation."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from aid.model_state import frozen_eval
from aid.models import Classifier, check_images
from aid.registry import Registry, check_arguments

EPS = 1e-8


def minmax_normalize(maps: Tensor, eps: float = EPS) -> Tensor:
    """Scale each map of a batch (B, 1, H, W) to [0, 1] by its own min and max.

    A constant map (max == min) becomes all zeros instead of dividing by zero.
    """
    flat = maps.flatten(1)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    span = hi - lo
    out = (flat - lo) / span.clamp_min(eps)
    out = torch.where(span > eps, out, torch.zeros_like(out))
    return out.view_as(maps)


def as_target_tensor(target: int | list[int] | Tensor, batch: int, num_classes: int, device) -> Tensor:
    """Captum-style target (int, list or tensor per example) -> LongTensor (B,), range-checked."""
    try:
        t = torch.as_tensor(target, device=device).long()
    except (RuntimeError, OverflowError, TypeError, ValueError) as err:
        raise ValueError(f"target classes must be integers in [0, {num_classes - 1}], got {target!r}") from err
    if t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"target must be an int or have one class per image ({batch}), got {tuple(t.shape)}")
    if t.numel() and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"target classes must lie in [0, {num_classes - 1}], got {t.tolist()}")
    return t


class Interpreter:
    """An interpreter ``g``: ``attribute(x, target)`` -> maps (B, 1, H, W) in [0, 1], larger = more important.

    x is a batch (B, C, H, W) of [0, 1] images; target is an int, a list or a LongTensor (B,).
    Maps come at input resolution. Subclasses implement :meth:`_attribute` and say whether the map
    is differentiable with respect to x (``differentiable``); they never leave the classifier's
    mode, ``requires_grad`` flags or hooks changed.

    Args:
        classifier: the target classifier ``f`` (a :class:`~aid.models.Classifier`).
    """

    name: str = "base"
    differentiable: bool = True

    def __init__(self, classifier: Classifier) -> None:
        self.classifier = classifier

    def attribute(self, x: Tensor, target: int | list[int] | Tensor, create_graph: bool = False) -> Tensor:
        """Maps (B, 1, H, W) in [0, 1] for images x (B, C, H, W) and target classes.

        With ``create_graph=True`` the result keeps its graph to x so that a loss on the map can be
        differentiated with respect to x (what ADV² needs); otherwise it is detached.
        """
        check_images(x, self.classifier)
        t = as_target_tensor(target, x.shape[0], self.classifier.num_classes, x.device)
        # Eval mode (BatchNorm statistics, no dropout) and frozen parameters for the call only: the
        # caller's train/eval mode and requires_grad flags come back unchanged.
        with frozen_eval(self.classifier, *self.modules()):
            maps = self._attribute(x, t, create_graph=create_graph)
        return maps if create_graph else maps.detach()

    __call__ = attribute

    def _attribute(self, x: Tensor, target: Tensor, create_graph: bool) -> Tensor:
        raise NotImplementedError  # abstractmethod: each family implements its equation

    def modules(self) -> list[nn.Module]:
        """Extra modules (besides the classifier) run in eval mode with frozen parameters during
        :meth:`attribute`; none by default. A trainable interpreter whose parameters must receive
        gradients through ``attribute`` must not list them here."""
        return []

    def to(self, device: torch.device | str) -> Interpreter:
        """Interpreters own no tensors by default; trainable ones move their modules."""
        return self


INTERPRETERS: Registry[Interpreter] = Registry("interpreter")


def build_interpreter(name: str, classifier: Classifier, **kwargs) -> Interpreter:
    """Instantiate the interpreter registered under ``name`` (grad, cam, gradcam, ig, mask, rts, ensemble).

    An unknown name raises a ``KeyError`` listing the allowed ones; a keyword argument the interpreter's
    constructor does not accept raises a ``ValueError`` naming it and listing the accepted ones.

    Example:
        >>> mask = build_interpreter("mask", classifier, iterations=100)
    """
    import aid.interpreters  # noqa: F401  (fills the registry)

    cls = INTERPRETERS.get(name)
    check_arguments(f"interpreter {name!r} ({cls.__name__})", cls, kwargs, exclude=("classifier",))
    return cls(classifier, **kwargs)
