"""MASK: meaningful perturbation (Fong & Vedaldi 2017; paper §3.5, Eqn 9), one optimisation per input.

A low-resolution *keep* mask m ∈ [0, 1]^(h×w) (1 keeps a pixel, 0 replaces it by the reference) is
upsampled bilinearly to the input and optimised with Adam so that the perturbed image φ(x; m) loses
the class:

    ℓ_map(m; x) = p_c(φ(x; m)) + λ_area · mean|1 − m| + λ_tv · mean_{neighbours} |m_i − m_j|^β.

The map is the deleted region 1 − m (upsampled): large = important. The paper's Eqn 9 writes the same
game with the roles of m and 1 − m swapped; we follow Fong & Vedaldi's convention inside and report
1 − m, so the map means "importance" like every other interpreter.

Settings, where they differ from the authors':

- reference ``grey`` (Fong & Vedaldi's constant perturbation) instead of the authors' blur: at 32 px a
  blur leaves small objects recognisable, so a blur MASK finds little whose deletion removes the class.
  Grey is also deterministic, so a sample's map does not depend on its batch (the random ``noise`` /
  ``color`` references do). ``perturbation="blur"`` gives the authors' MASK (the paper-scale configs
  use it).
- ``temperature``: the class probability is softmax(logits / T) (the paper: T = 1, the default). A very
  confident classifier saturates the softmax, its gradient with respect to the mask vanishes and the
  maps come out empty or weak; the embedded configs therefore set T = 10 with ``area_weight=1``. On a
  classifier that is not saturated, T > 1 flattens the probability until the area term wins and the
  maps come out empty.
- mask side ``max(H // mask_scale, min_mask_size)``: 28×28 at 224 px as the authors (``mask_scale=8``);
  16×16 at 32 px because of ``min_mask_size=16`` (an 8×8 mask, 4×4 pixels per cell, is coarse for the
  8–14 px objects of 32 px images).
- blur σ (``perturbation="blur"``) ``3.5·H/224`` with a floor of ``min_sigma`` (the authors: σ 3.5,
  21×21 kernel at 224 px); the floor is 2 px because σ 0.5 (the scaled value at 32 px) leaves small
  objects recognisable.
- Adam lr 0.1, 300 iterations (the authors' interpreter; their Algorithm 1 resets with 300 iterations).
- The regularisers are means over the mask (not sums), so their weights do not depend on the mask side.
  The authors' 1e-4·Σ|1 − m| on 28×28 is 0.078·mean; the default ``area_weight=0.25`` is for T = 1 with
  the grey reference, the embedded configs' 1 for T = 10 (a smaller weight spreads the maps beyond the
  object, a larger one shrinks them and weakens the deletion). ``tv_weight=0.2`` with β = 3.
- Initialisation m = 0.5 everywhere (deterministic; a start from m = 1, keep everything, can stall).
  ``seed`` seeds the random references (``perturbation="noise"`` / ``"color"``); blur and grey have no
  randomness. ``seed`` seeds the random references
  (``perturbation="noise"`` / ``"color"``); blur and grey have no randomness.

The map is not differentiable with respect to x (the inner optimisation is not unrolled). The ADV²
attacks against MASK (:mod:`aid.attacks.adv2_mask` and its sibling modules) use the public pieces:
:meth:`init_mask`, :meth:`mask_loss` (differentiable with respect to x and the mask parameter, with
``create_graph``), :meth:`optimize`, :meth:`keep_mask`, :meth:`mask_to_map` and :meth:`unrolled_map`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from aid.interpreters.base import INTERPRETERS, Interpreter
from aid.interpreters.blend import Blend
from aid.model_state import frozen_eval
from aid.models import Classifier


def total_variation(m: Tensor, beta: float = 3.0) -> Tensor:
    """Per-sample mean of |m_i − m_j|^β over horizontal and vertical neighbours of m (B, 1, h, w) -> (B,)."""
    dy = (m[:, :, 1:, :] - m[:, :, :-1, :]).abs().pow(beta).flatten(1)
    dx = (m[:, :, :, 1:] - m[:, :, :, :-1]).abs().pow(beta).flatten(1)
    return torch.cat([dy, dx], dim=1).mean(dim=1)


def forbid_deletion(keep: Tensor, kept: Tensor) -> Tensor:
    """Keep mask (B, 1, H, W) ``keep`` with the deletion undone where ``kept`` (B, 1, H, W) in {0, 1} is 1."""
    return 1 - (1 - keep) * (1 - kept)


def _no_inference_mode(who: str) -> None:
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{who} optimises with gradients and cannot run under torch.inference_mode(); "
            "evaluate with Trainer(inference_mode=False) (gradients are enabled inside)"
        )


@INTERPRETERS.register("mask")
class MaskInterpreter(Interpreter):
    """MASK (Fong & Vedaldi 2017; paper Eqn 9): the region whose deletion removes the class, found by Adam.

    Args:
        classifier: target classifier ``f``.
        iterations: Adam steps per call of :meth:`attribute` (default 300).
        lr: Adam learning rate on the mask (default 0.1).
        area_weight: λ_area on mean|1 − m| (default 0.25; the embedded configs: 1 with T = 10).
        tv_weight: λ_tv on the mean β-power of neighbour differences of m (default 0.2).
        tv_beta: β of the total variation (default 3).
        mask_scale: input side / mask side (default 8: 28×28 at 224 px).
        min_mask_size: smallest mask side (default 16).
        blur_sigma: σ of the blur in pixels; ``None`` scales 3.5 px at 224 px to the input, at least
            ``min_sigma``.
        min_sigma: floor of the scaled σ (default 2.0 px).
        perturbation: reference of φ: ``grey`` (default), ``blur`` (the authors'), ``noise``,
            ``color`` (see :mod:`blend`).
        init_value: initial value of the keep mask (default 0.5).
        temperature: T of the class probability p_c = softmax(logits / T)_c in ℓ_map (default 1, the
            paper's). A very confident classifier (p ≈ 0.999) has a saturated softmax whose gradient
            with respect to the mask vanishes; T > 1 softens it (the embedded configs: 10).
        seed: seed of the random references (blur and grey have none); same seed, same maps.

    Shapes: x (B, C, H, W) in [0, 1], target (B,) -> maps (B, 1, H, W) in [0, 1] (1 − m, upsampled).

    Example:
        >>> mask = MaskInterpreter(classifier, iterations=300)
        >>> maps = mask.attribute(x, target)  # (B, 1, H, W)
    """

    name = "mask"
    differentiable = False

    def __init__(
        self,
        classifier: Classifier,
        iterations: int = 300,
        lr: float = 0.1,
        area_weight: float = 0.25,
        tv_weight: float = 0.2,
        tv_beta: float = 3.0,
        mask_scale: int = 8,
        min_mask_size: int = 16,
        blur_sigma: float | None = None,
        min_sigma: float = 2.0,
        perturbation: str = "grey",
        init_value: float = 0.5,
        temperature: float = 1.0,
        seed: int | None = 0,
    ) -> None:
        super().__init__(classifier)
        if int(iterations) < 0:
            raise ValueError(f"iterations must be >= 0, got {iterations}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if int(mask_scale) < 1 or int(min_mask_size) < 1:
            raise ValueError(f"mask_scale and min_mask_size must be >= 1, got {mask_scale}, {min_mask_size}")
        if not 0 <= init_value <= 1:
            raise ValueError(f"init_value must lie in [0, 1], got {init_value}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if perturbation == "mixed":
            raise ValueError("MASK uses one reference: grey, blur, noise or color")
        self.iterations = int(iterations)
        self.lr = float(lr)
        self.area_weight = float(area_weight)
        self.tv_weight = float(tv_weight)
        self.tv_beta = float(tv_beta)
        self.mask_scale = int(mask_scale)
        self.min_mask_size = int(min_mask_size)
        self.init_value = float(init_value)
        self.temperature = float(temperature)
        self.seed = seed
        self.phi = Blend(perturbation, blur_sigma=blur_sigma, blur_sigma_224=3.5, min_sigma=min_sigma)

    # ----- the pieces the ADV² attacks against MASK build on ---------------------------------------------

    def mask_size(self, height: int, width: int) -> tuple[int, int]:
        """Side (h, w) of the low-resolution mask for H×W inputs."""
        h = min(max(height // self.mask_scale, self.min_mask_size), height)
        w = min(max(width // self.mask_scale, self.min_mask_size), width)
        return h, w

    def init_mask(self, x: Tensor) -> Tensor:
        """Fresh mask parameter (B, 1, h, w) = ``init_value`` for images x, a leaf with ``requires_grad``."""
        h, w = self.mask_size(*x.shape[-2:])
        return torch.full(
            (x.shape[0], 1, h, w), self.init_value, device=x.device, dtype=torch.float32, requires_grad=True
        )

    def keep_mask(self, param: Tensor, size: tuple[int, int]) -> Tensor:
        """Keep mask m (B, 1, H, W): the parameter clamped to [0, 1] and upsampled bilinearly to ``size``."""
        m = param.clamp(0, 1)
        return F.interpolate(m, size=tuple(size), mode="bilinear", align_corners=False)

    def mask_to_map(self, param: Tensor, size: tuple[int, int]) -> Tensor:
        """Attribution map 1 − m (B, 1, H, W) in [0, 1] of a mask parameter (B, 1, h, w)."""
        return 1 - self.keep_mask(param, size)

    def reference(self, x: Tensor) -> Tensor:
        """The reference r of φ for x (B, C, H, W): grey, its blur, or seeded random colours / noise."""
        gen = None
        if self.phi.random:
            gen = torch.Generator(device=x.device)
            gen.manual_seed(0 if self.seed is None else int(self.seed))
        return self.phi.reference(x, gen)

    def mask_loss(
        self, x: Tensor, target: Tensor, param: Tensor, reference: Tensor | None = None, kept: Tensor | None = None
    ) -> Tensor:
        """ℓ_map(m; x) per sample (B,): p_target(φ(x; m)) + λ_area·mean|1 − m| + λ_tv·TV_β(m) (p at
        ``temperature``). ``kept`` (B, 1, H, W) in {0, 1}: pixels that φ keeps whatever m says (a
        deletion forbidden there; the min-max estimate of ADV² against MASK, :mod:`aid.attacks.mask_game`),
        None (default) for MASK's own loss.

        Differentiable with respect to x (through φ and the blur reference) and the mask parameter
        (B, 1, h, w); use ``torch.autograd.grad(..., create_graph=True)`` for look-ahead steps. The
        caller provides gradient mode and a frozen classifier; ``reference`` defaults to
        :meth:`reference` of x. Per-sample terms never mix samples, so a sum over the batch optimises
        every image independently.
        """
        ref = self.reference(x) if reference is None else reference
        m_low = param.clamp(0, 1)
        keep = self.keep_mask(param, x.shape[-2:]).to(x.dtype)
        if kept is not None:
            keep = forbid_deletion(keep, kept)
        perturbed = self.phi(x, keep, reference=ref)
        logits = self.classifier(perturbed).float() / self.temperature
        prob = logits.softmax(dim=1).gather(1, target[:, None]).squeeze(1)
        area = (1 - m_low).abs().flatten(1).mean(dim=1)
        return prob + self.area_weight * area + self.tv_weight * total_variation(m_low, self.tv_beta)

    def optimize(
        self,
        x: Tensor,
        target: Tensor,
        steps: int | None = None,
        init: Tensor | None = None,
        kept: Tensor | None = None,
    ) -> Tensor:
        """Run ``steps`` (default ``iterations``) Adam steps on the mask; returns the parameter (B, 1, h, w).

        Starts from ``init`` (e.g. the previous estimate in Algorithm 1) or :meth:`init_mask`; the Adam
        state is fresh on every call and the parameter is projected onto [0, 1] after each step. x is
        treated as a constant; the classifier is frozen in eval mode for the call and restored.
        ``kept`` (B, 1, H, W) in {0, 1} forbids the deletion there (see :meth:`mask_loss`).
        """
        _no_inference_mode("MASK")
        steps = self.iterations if steps is None else int(steps)
        target = torch.as_tensor(target, device=x.device).long().expand(x.shape[0])
        if x.is_inference():
            x = x.clone()  # inference tensors cannot be saved for backward
        x = x.detach()
        start = self.init_mask(x) if init is None else init
        param = start.detach().float().clone().clamp_(0, 1).requires_grad_(True)
        with frozen_eval(self.classifier), torch.enable_grad():
            with torch.no_grad():
                ref = self.reference(x)
            opt = torch.optim.Adam([param], lr=self.lr)
            for _ in range(steps):
                loss = self.mask_loss(x, target, param, ref, kept=kept).sum()
                (grad,) = torch.autograd.grad(loss, param)
                param.grad = grad
                opt.step()
                with torch.no_grad():
                    param.clamp_(0, 1)
        return param.detach()

    def unrolled_map(self, x: Tensor, target: Tensor, steps: int) -> Tensor:
        """The map (B, 1, H, W) after ``steps`` Adam iterations from :meth:`init_mask`, differentiable in x.

        The same iterations as :meth:`optimize` (torch's Adam with its default betas and eps, the
        parameter clamped to [0, 1] after each step), written out so that autograd keeps the graph
        through them (``create_graph``): an exact gradient of the K-step map with respect to x, at the
        cost of K double backward passes. Used by
        :class:`~aid.attacks.adv2_mask_unrolled.ADV2MaskUnrolled` (ADV² with ``estimate="unrolled"``).
        """
        _no_inference_mode("MASK")
        target = torch.as_tensor(target, device=x.device).long().expand(x.shape[0])
        ref = self.reference(x)
        param = self.init_mask(x).detach().requires_grad_(True)
        m1, m2 = torch.zeros_like(param), torch.zeros_like(param)
        b1, b2, eps = 0.9, 0.999, 1e-8
        with torch.enable_grad():
            for i in range(1, int(steps) + 1):
                loss = self.mask_loss(x, target, param, ref).sum()
                (g,) = torch.autograd.grad(loss, param, create_graph=True)
                m1, m2 = b1 * m1 + (1 - b1) * g, b2 * m2 + (1 - b2) * g * g
                step = self.lr * (m1 / (1 - b1**i)) / ((m2 / (1 - b2**i)).sqrt() + eps)
                param = (param - step).clamp(0, 1)
        return self.mask_to_map(param, x.shape[-2:])

    # ----- interpreter interface -------------------------------------------------------------------

    def _attribute(self, x: Tensor, target: Tensor, create_graph: bool) -> Tensor:
        # The map is a constant with respect to x (the optimisation is not unrolled); create_graph
        # therefore returns it without a graph, and ADV² uses its own attacks on MASK instead.
        _no_inference_mode("MASK")
        param = self.optimize(x, target)
        return self.mask_to_map(param, x.shape[-2:])
