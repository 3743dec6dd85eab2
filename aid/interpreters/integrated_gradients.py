"""Integrated Gradients (Sundararajan et al. 2017; the paper's §5, Eqn 11)."""

from __future__ import annotations

import math

import kornia
import torch
from torch import Tensor

from aid.interpreters.base import INTERPRETERS, Interpreter, as_target_tensor, minmax_normalize
from aid.interpreters.grad import SCORES, class_score, grad_input
from aid.model_state import frozen_eval
from aid.models import Classifier, check_images

REDUCTIONS = ("sum", "max")
#: Default pass sizes of :class:`IntegratedGradients`, in pixels of path images per forward pass: on a CPU
#: about half a million (larger passes leave the caches and the heap the allocator reuses; smaller ones
#: pay per-pass overhead), on an accelerator four million (few kernel launches).
CPU_PASS_PIXELS = 2**19
ACCELERATOR_PASS_PIXELS = 2**22


def default_pass(x: Tensor) -> int:
    """Path images per forward pass for a batch x (B, C, H, W) when ``internal_batch_size`` is None:
    the whole batch, or more images up to the device's pixel budget."""
    b, (h, w) = x.shape[0], x.shape[-2:]
    budget = CPU_PASS_PIXELS if x.device.type == "cpu" else ACCELERATOR_PASS_PIXELS
    return max(b, budget // (h * w))


@INTERPRETERS.register("ig")
class IntegratedGradients(Interpreter):
    """Integrated Gradients: a_i = (x_i − x̄_i) ∫₀¹ ∂f_t(x̄ + α(x − x̄))/∂x_i dα (paper Eqn 11).

    The integral uses the trapezoid rule on ``steps`` equal intervals (``steps + 1`` gradient
    evaluations, endpoints weighted ½); captum's default is Gauss-Legendre, ours is its
    ``riemann_trapezoid`` with one more point. The attributions satisfy completeness,
    Σ_i a_i ≈ f_t(x) − f_t(x̄), up to the quadrature error, which shrinks with ``steps``. The map is
    |a| reduced over channels with a sum (default: completeness is additive, so a pixel's value is
    its share of f_t(x) − f_t(x̄)) or a max, then min-max normalised per image. With
    ``create_graph=True`` the map is differentiable with respect to x (a double backward).

    Args:
        classifier: target classifier ``f``.
        baseline: x̄: ``"zeros"`` (default, a black image), a float fill value in [0, 1], ``"blur"``
            (x blurred by a Gaussian of std ``blur_sigma`` pixels) or a tensor broadcastable to x.
        steps: number of trapezoid intervals (default 32).
        internal_batch_size: at most this many path images per forward pass; the result does not
            depend on it. Default None: for a batch of B images, max(B, 2¹⁹ pixels / (H·W)) on a CPU
            (512 images of 32×32, 128 of 64×64: each pass reuses the memory of the one before) and
            elsewhere max(B, 2²² pixels / (H·W)) (4,096 images of 32×32, 83 of 224×224: few kernel
            launches). Unlike captum's None (all
            B·(steps + 1) images at once), the default needs the memory of one such pass however many
            ``steps`` there are.
        score: ``"logit"`` (default) or ``"prob"``: the class score f_t.
        reduce: ``"sum"`` (default) or ``"max"`` of |a| over channels.
        blur_sigma: std of the ``"blur"`` baseline in pixels (default 5).

    Shapes: x (B, C, H, W) in [0, 1], target (B,) -> maps (B, 1, H, W) in [0, 1];
    :meth:`attributions` -> (B, C, H, W).

    Example::

        ig = IntegratedGradients(classifier, steps=64)
        maps = ig(x, target)
    """

    name = "ig"
    differentiable = True

    def __init__(
        self,
        classifier: Classifier,
        baseline: float | str | Tensor = "zeros",
        steps: int = 32,
        internal_batch_size: int | None = None,
        score: str = "logit",
        reduce: str = "sum",
        blur_sigma: float = 5.0,
    ) -> None:
        super().__init__(classifier)
        if isinstance(baseline, str) and baseline not in ("zeros", "blur"):
            raise ValueError(f"baseline must be 'zeros', 'blur', a float or a tensor, got {baseline!r}")
        if int(steps) < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if internal_batch_size is not None and int(internal_batch_size) < 1:
            raise ValueError(f"internal_batch_size must be >= 1 or None, got {internal_batch_size}")
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
        self.baseline, self.steps, self.score, self.reduce = baseline, int(steps), score, reduce
        self.internal_batch_size = None if internal_batch_size is None else int(internal_batch_size)
        self.blur_sigma = float(blur_sigma)

    def make_baseline(self, x: Tensor) -> Tensor:
        """The baseline x̄ (B, C, H, W) for images x."""
        b = self.baseline
        if isinstance(b, Tensor):
            return b.to(device=x.device, dtype=x.dtype).expand_as(x)
        if b == "zeros":
            return torch.zeros_like(x)
        if b == "blur":
            # Largest odd kernel within ~3 σ that reflect padding allows on this image size.
            k = min(2 * math.ceil(3 * self.blur_sigma) + 1, 2 * min(x.shape[-2:]) - 1)
            s = self.blur_sigma
            return kornia.filters.gaussian_blur2d(x, (k, k), (s, s), border_type="reflect")
        return torch.full_like(x, float(b))

    def attributions(self, x: Tensor, target: Tensor | int | list[int], create_graph: bool = False) -> Tensor:
        """Raw IG attributions a (B, C, H, W); Σ a ≈ f_t(x) − f_t(x̄) (completeness)."""
        check_images(x, self.classifier)
        t = as_target_tensor(target, x.shape[0], self.classifier.num_classes, x.device)
        with frozen_eval(self.classifier):
            a = self._attributions(x, t, create_graph)
        return a if create_graph else a.detach()

    def _attributions(self, x: Tensor, target: Tensor, create_graph: bool) -> Tensor:
        n, b = self.steps, x.shape[0]
        with grad_input(x, create_graph) as xi:
            base = self.make_baseline(xi)
            diff = xi - base
            alphas = torch.linspace(0, 1, n + 1, device=x.device, dtype=x.dtype)
            weights = torch.full_like(alphas, 1.0 / n)
            weights[0] = weights[-1] = 0.5 / n
            # Path images in step-major order: row r = s·B + i is x̄_i + α_s (x_i − x̄_i); each pass builds
            # only its own rows, so the whole path never sits in memory.
            rows = (n + 1) * b
            chunk = self.internal_batch_size or default_pass(x)
            grads = []
            for start in range(0, rows, chunk):
                r = torch.arange(start, min(start + chunk, rows), device=x.device)
                step, image = r // b, r % b
                p = base[image] + alphas[step].view(-1, 1, 1, 1) * diff[image]
                if not create_graph:
                    p = p.detach().requires_grad_(True)
                s = class_score(self.classifier(p), target[image], self.score)
                grads.append(torch.autograd.grad(s.sum(), p, create_graph=create_graph)[0])
            g = torch.cat(grads).view(n + 1, b, *x.shape[1:])
            avg = (weights.view(-1, 1, 1, 1, 1) * g).sum(dim=0)
            return diff * avg

    def _attribute(self, x: Tensor, target: Tensor, create_graph: bool) -> Tensor:
        a = self._attributions(x, target, create_graph).abs()
        m = a.sum(dim=1, keepdim=True) if self.reduce == "sum" else a.amax(dim=1, keepdim=True)
        return minmax_normalize(m)
