"""GRAD: gradient saliency (Simonyan et al. 2014; the paper's §3.2, Eqn 5), optionally with smooth ReLU."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from aid.interpreters.base import INTERPRETERS, Interpreter, minmax_normalize
from aid.interpreters.smooth_relu import SURROGATES, smooth_relu
from aid.models import Classifier

SCORES = ("logit", "prob")


@contextlib.contextmanager
def grad_input(x: Tensor, create_graph: bool) -> Iterator[Tensor]:
    """Yield the tensor to differentiate with respect to, with autograd on (also under ``no_grad`` or
    ``inference_mode``).

    When the caller wants a graph (``create_graph=True``) and x already requires grad, x itself is
    used so the map stays differentiable with respect to the caller's x; otherwise a detached copy
    that requires grad (the caller's x and its flags are never touched).
    """
    with torch.inference_mode(False), torch.enable_grad():
        if create_graph and x.requires_grad:
            yield x
        else:
            # clone() turns an inference tensor into a normal one; detach() alone suffices otherwise.
            xi = x.clone() if x.is_inference() else x.detach()
            yield xi.requires_grad_(True)


def class_score(logits: Tensor, target: Tensor, score: str = "logit") -> Tensor:
    """Per-sample score (B,) of the target class: the logit or the softmax probability."""
    if score == "prob":
        logits = logits.float().softmax(dim=1)
    return logits.gather(1, target[:, None]).squeeze(1)


@INTERPRETERS.register("grad")
class Grad(Interpreter):
    """Gradient saliency: m = minmax(max_c |∂f_t(x)/∂x_c|) (paper Eqn 5).

    The authors' code reduces the per-channel absolute gradient with the maximum over channels, as we
    do; captum's ``Saliency(abs=True)`` returns the per-channel (B, C, H, W) map, whose channel-max
    followed by per-image min-max normalisation equals our map. The paper writes the class score as
    a probability; the logit (default) is what saliency usually differentiates and avoids the softmax
    saturation, ``score="prob"`` follows the paper's wording.

    ``pool`` average-pools the channel-max map by that factor before the min-max normalisation and
    repeats each cell back to H×W (nearest), as the authors' GRAD does with 4 (224 → 56 cells). The
    embedded and paper-scale configs set ``pool: 4``; 1 (the default) is the per-pixel saliency map,
    which at 32 px is sparse.

    With ``smooth=True`` the map is computed with the paper's smooth ReLU backward h(z) (§3.2; see
    :mod:`aid.interpreters.smooth_relu`), so a loss on the map has a useful gradient with respect to
    x: that is the map ADV² attacks. With ``smooth=False`` and a pure-ReLU network that gradient is
    zero.

    Args:
        classifier: target classifier ``f``.
        score: ``"logit"`` (default) or ``"prob"``: which class score is differentiated.
        smooth: use the smooth ReLU surrogate in the backward pass (default False).
        surrogate: ``"h"`` (paper, default) or ``"softplus"`` (Dombrowski et al.), used when smooth.
        tau: τ of h(z) (default 1e-4).
        beta: β of the softplus surrogate (default 10).
        pool: average-pool factor of the map (default 1; the authors' 4). Sides that it does not
            divide end in a smaller last cell (``ceil_mode``).
        fused: with ``smooth`` and the ``"h"`` surrogate, run h(z)'s elementwise passes as
            ``torch.compile``d kernels (:mod:`aid.interpreters.smooth_relu`; after a one-off compilation,
            on any device; default False: on a CPU, C++ functions with the eager passes' numbers). ADV²
            against GRAD inherits it from this interpreter.

    Shapes: x (B, C, H, W) in [0, 1], target (B,) -> maps (B, 1, H, W) in [0, 1].

    Example::

        grad = Grad(classifier, smooth=True)
        maps = grad(x, target, create_graph=True)  # differentiable w.r.t. x
    """

    name = "grad"
    differentiable = True

    def __init__(
        self,
        classifier: Classifier,
        score: str = "logit",
        smooth: bool = False,
        surrogate: str = "h",
        tau: float = 1e-4,
        beta: float = 10.0,
        pool: int = 1,
        fused: bool = False,
    ) -> None:
        super().__init__(classifier)
        if int(pool) != pool or int(pool) < 1:
            raise ValueError(f"pool must be an integer >= 1, got {pool}")
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        if surrogate not in SURROGATES:
            raise ValueError(f"surrogate must be one of {SURROGATES}, got {surrogate!r}")
        self.score, self.smooth, self.surrogate = score, bool(smooth), surrogate
        self.tau, self.beta = float(tau), float(beta)
        self.pool = int(pool)
        self.fused = bool(fused)

    def logits_and_gradient(self, x: Tensor, target: Tensor, create_graph: bool = False) -> tuple[Tensor, Tensor]:
        """(logits (B, K), raw input gradient ∂f_t(x)/∂x (B, C, H, W)) from one pass (surrogate if smooth).

        With ``create_graph=True`` and an x that requires grad, both stay differentiable w.r.t. x.
        """
        ctx = (
            smooth_relu(self.classifier, self.tau, self.surrogate, self.beta, self.fused)
            if self.smooth
            else contextlib.nullcontext()
        )
        with grad_input(x, create_graph) as xi, ctx:
            logits = self.classifier(xi)
            s = class_score(logits, target, self.score)
            # autograd.grad w.r.t. the input only: parameter .grad fields are never touched.
            (g,) = torch.autograd.grad(s.sum(), xi, create_graph=create_graph)
        return logits, g

    def gradient(self, x: Tensor, target: Tensor, create_graph: bool = False) -> Tensor:
        """Raw input gradient ∂f_t(x)/∂x (B, C, H, W) of the target score (with the surrogate if smooth)."""
        return self.logits_and_gradient(x, target, create_graph)[1]

    def logits_and_map(self, x: Tensor, target: Tensor, create_graph: bool = False) -> tuple[Tensor, Tensor]:
        """(logits (B, K), map (B, 1, H, W)) from one pass; the map as :meth:`attribute` gives it (no
        freezing or input checks: the caller, e.g. an attack, holds the classifier frozen)."""
        logits, g = self.logits_and_gradient(x, target, create_graph)
        m = g.abs().amax(dim=1, keepdim=True)
        if self.pool > 1:
            h, w = m.shape[-2:]
            cells = F.avg_pool2d(m, self.pool, ceil_mode=True)
            m = cells.repeat_interleave(self.pool, -2).repeat_interleave(self.pool, -1)[..., :h, :w]
        return logits, minmax_normalize(m)

    def _attribute(self, x: Tensor, target: Tensor, create_graph: bool) -> Tensor:
        return self.logits_and_map(x, target, create_graph)[1]
