"""ADV² against MASK (§3.5, Algorithm 1; §3.6): the base shared by the attacks on MASK, and Algorithm 1.

MASK's map m*(x) = argmin_m ℓ_map(m; x) is itself an optimisation, so its response to x has no direct
gradient. Three attacks estimate it, one class and module each, all on :class:`ADV2MaskBase` (PGD warm
start, label-smoothed ℓ_prd, per-sample best iterate, MASK's own map of the result):

* ``"algorithm1"``: :class:`ADV2Mask` (here), the paper's Algorithm 1: a follower tracks the map and the
  leader steps x through a look-ahead of the follower's next moves;
* ``"unrolled"``: :class:`~aid.attacks.adv2_mask_unrolled.ADV2MaskUnrolled`, PGD through MASK's first K
  iterations, differentiated exactly;
* ``"minmax"``: :class:`~aid.attacks.adv2_mask_minmax.ADV2MaskMinMax`, a game against MASK's best
  deletion outside the target region.

Each is registered in ``ATTACKS`` under its own name (``adv2_mask``, ``adv2_mask_unrolled``,
``adv2_mask_minmax``) and in :data:`MASK_ESTIMATES` under its estimate's. ``ADV2`` / ``ADV2Adaptive``
built for a MASK interpreter (``build_attack("adv2", classifier, interpreter=mask, estimate="minmax")``,
or a config's ``adv2.mask: {estimate: minmax, ...}``) pick the class by ``estimate`` (default
``"algorithm1"``) and pass it the other arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from aid.attacks.adv2 import ADV2_VARIANTS
from aid.attacks.base import ATTACKS, Attack, AttackResult
from aid.attacks.mask_follower import MaskFollower
from aid.attacks.pgd import PGD
from aid.attacks.schedules import BestIterate, check_schedule, linear_schedule, smoothed_cross_entropy
from aid.attacks.strategies import map_mse, unique_modules
from aid.attacks.targets import benign_target_maps
from aid.interpreters.base import Interpreter
from aid.models import Classifier
from aid.registry import Registry

#: The ADV² attacks against MASK by estimate name (``"algorithm1"``, ``"unrolled"``, ``"minmax"``).
MASK_ESTIMATES: Registry[Attack] = Registry("ADV² estimate against MASK")


def require_at_least(minimum: int, **values: int) -> None:
    """ValueError naming the first of ``values`` (name=value) whose integer value is below ``minimum``."""
    for key, value in values.items():
        if int(value) < minimum:
            raise ValueError(f"{key} must be >= {minimum}, got {value}")


class ADV2MaskBase(Attack):
    """What the ADV² attacks on MASK share; a subclass implements :meth:`search`, one estimate of the map.

    :meth:`_run`: the target map (default: MASK's benign map), ``warm_steps`` of targeted L∞ PGD
    (:class:`~aid.attacks.pgd.PGD`, cross-entropy; the authors' script uses a CW margin, which drives the
    same target class), the subclass's :meth:`search` from there (which returns each sample's selected
    iterate), then the classifier's verdict and MASK's own map (the interpreter's ``iterations``) of the
    selected x_adv for the target class. The prediction loss ℓ_prd of every estimate is
    :meth:`prediction_loss` (label-smoothed cross-entropy, ρ ramped linearly, §3.6), the hook that the
    adaptive attack (:mod:`aid.attacks.adaptive`) extends. Every x is projected onto the ε-ball and the
    [0, 1] box. The attacks draw no random numbers (MASK seeds its own).

    Args:
        classifier: target classifier ``f``.
        interpreter: the MASK interpreter (:class:`~aid.interpreters.mask.MaskInterpreter`); each subclass
            names the methods it needs in ``needs``.
        eps: L∞ budget ε in pixel units of [0, 1] (default 0.031).
        alpha: L∞ step of the PGD warm start, and of the signed steps of the estimates that take them
            (default 1/255).
        steps: iterations after the warm start (default 60).
        warm_steps: PGD warm-start iterations (default 50; 0 = none).
        smoothing: label-smoothing ρ of ℓ_prd, a number or (start, end) ramped over the steps (default
            (0.05, 0.01), §3.6).
        kappa: κ, the target confidence an iterate needs to be selected (default 0.8).
        seed: kept for the interface (no random numbers are drawn).
        progress: show a tqdm progress bar.

    Shapes: x (B, C, H, W) in [0, 1]; target (B,) long or an int; target_map (B, 1, H, W) or None (the
    benign MASK map). Returns an :class:`~aid.attacks.base.AttackResult` with ``maps``; ``iterations`` is
    the step (warm start included) of the selected iterate.
    """

    #: The estimates by name, so that ``ADV2`` can dispatch on ``estimate``.
    estimates: ClassVar[Registry[Attack]] = MASK_ESTIMATES
    #: Interpreter methods and attributes the attack uses (checked when it is built).
    needs: ClassVar[tuple[str, ...]] = ("optimize", "mask_to_map")

    def __init__(
        self,
        classifier: Classifier,
        interpreter: Interpreter,
        eps: float = 0.031,
        alpha: float = 1 / 255,
        steps: int = 60,
        warm_steps: int = 50,
        smoothing: float | tuple[float, float] = (0.05, 0.01),
        kappa: float = 0.8,
        seed: int | None = 0,
        progress: bool = False,
    ) -> None:
        super().__init__(classifier, eps=eps, alpha=alpha, steps=steps, seed=seed, progress=progress)
        missing = [key for key in self.needs if not hasattr(interpreter, key)]
        if missing:
            raise TypeError(
                f"{type(self).__name__} needs a MASK interpreter (missing {missing[0]!r}), got {interpreter!r}"
            )
        require_at_least(0, warm_steps=warm_steps)
        check_schedule("smoothing", smoothing, 0.0, 0.999)
        if not 0 <= kappa <= 1:
            raise ValueError(f"kappa must lie in [0, 1], got {kappa}")
        self.interpreter = interpreter
        self.warm_steps = int(warm_steps)
        self.smoothing = smoothing
        self.kappa = float(kappa)
        self.warm = PGD(classifier, eps=eps, alpha=alpha, steps=self.warm_steps) if self.warm_steps else None

    def models(self) -> list[nn.Module]:
        """The classifier (also the interpreter's), frozen during the attack."""
        return unique_modules([self.classifier, self.interpreter.classifier])

    def confidence(self, x_adv: Tensor, target: Tensor) -> Tensor:
        """Target-class probability (B,) of the classifier on x_adv, without a graph."""
        with torch.no_grad():
            return self.classifier(x_adv).float().softmax(dim=1).gather(1, target[:, None]).squeeze(1)

    def prediction_loss(self, x_adv: Tensor, target: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """(ℓ_prd (B,), logits (B, K)) at outer iteration ``step``: label-smoothed cross-entropy to the target."""
        logits = self.classifier(x_adv)
        rho = linear_schedule(self.smoothing, step, self.steps)
        return smoothed_cross_entropy(logits, target, rho), logits

    def step_range(self) -> tqdm:
        """The outer iterations 0 … ``steps`` (the last one is evaluated, not stepped from), with the bar."""
        return tqdm(range(self.steps + 1), desc=self.name, disable=not self.progress, leave=False)

    def search(self, x_adv: Tensor, x: Tensor, target: Tensor, target_map: Tensor) -> tuple[Tensor, Tensor]:
        """(selected iterates (B, C, H, W), their steps (B,)) of the estimate, from the warm-started x_adv."""
        raise NotImplementedError  # abstractmethod: each estimate implements its loop

    def _run(self, x: Tensor, target: Tensor, target_map: Tensor | None) -> AttackResult:
        if target_map is None:
            target_map = benign_target_maps(self.interpreter, self.classifier, x)
        target_map = target_map.detach().to(x.dtype)
        x_adv = self.warm_start(x, target)
        x_sel, step = self.search(x_adv, x, target, target_map)
        success, confidence = self.evaluate(x_sel, target)
        maps = self.interpreter.attribute(x_sel, target).detach()
        return AttackResult(x_adv=x_sel, success=success, confidence=confidence, iterations=step, maps=maps)


def bisect_step(
    accept: Callable[[Tensor], Tensor], x_adv: Tensor, direction: Tensor, alpha_max: float, n_bs: int
) -> Tensor:
    """Largest step s ∈ [0, α_max] per sample (B,) with ``accept(x_adv + s·direction)`` true, by bisection.

    ``accept`` maps a batch (B, C, H, W) to (B,) bool. All samples bisect at once: ``n_bs`` evaluations
    of the whole batch, each halving every sample's interval [lo, hi]; the result is the final ``lo``
    (0 when even the smallest tried step is rejected), so a sample's step depends on its own images
    only. ``accept`` should be true at s = 0 for the guarantee to mean something.
    """
    view = (-1, *([1] * (x_adv.dim() - 1)))
    lo = torch.zeros(x_adv.shape[0], device=x_adv.device)
    hi = torch.full_like(lo, float(alpha_max))
    for _ in range(int(n_bs)):
        mid = (lo + hi) / 2
        ok = accept(x_adv + mid.view(view).to(x_adv.dtype) * direction)
        lo = torch.where(ok, mid, lo)
        hi = torch.where(ok, hi, mid)
    return lo


def l2_normalize(g: Tensor) -> Tensor:
    """Each sample of g (B, ...) divided by its L2 norm (zero where the norm is zero)."""
    norm = g.flatten(1).norm(dim=1).view(-1, *([1] * (g.dim() - 1)))
    return torch.where(norm > 0, g / norm.clamp_min(1e-12), torch.zeros_like(g))


@MASK_ESTIMATES.register("algorithm1")
@ADV2_VARIANTS.register("mask")
@ATTACKS.register("adv2_mask")
class ADV2Mask(ADV2MaskBase):
    r"""ADV² against MASK by Algorithm 1 (§3.5) with the optimisations of §3.6, batched and per-sample.

    After the PGD warm start (:class:`ADV2MaskBase`), m ← MASK(x) for the target class, then ``steps``
    (n_total) outer iterations:

    a. follower (line 3): ``n_step`` Adam steps of the map estimate on ℓ_map(m; x)
       (:class:`~aid.attacks.mask_follower.MaskFollower`);
    b. leader, two-step update (§3.6): (i) a step of L2 norm ``pred_step`` along −∇_x of the
       label-smoothed cross-entropy; (ii) a step along the L2-normalised −∇_x of the interpretation loss
       averaged over ``n_step`` differentiable look-ahead updates of the map
       (:meth:`~aid.attacks.mask_follower.MaskFollower.lookahead`), whose size is the largest
       s ∈ [0, α_max] that keeps the target confidence ≥ κ, found by ``n_bs`` bisections for every
       sample at once (:func:`bisect_step`);
    c. every ``n_reset`` iterations (and at the end) the estimate is replaced by a fresh MASK run and the
       Adam state is cleared (periodical reset).

    Best iterate: at each reset the fresh MASK map gives the true ℓ_int; per sample the attack returns
    the reset point with the lowest ℓ_int among those whose target confidence is ≥ κ (else the last
    iterate).

    Paper scale (Table 10, ImageNet, ResNet-50 / DenseNet-169): n_total 1000, n_step 4, n_reset 50,
    α_max 0.08, n_bs 12; the authors' scripts: 400 CW warm-start steps, 300-iteration resets, a
    prediction step L2-normalised to 0.05 and 10 bisections. The defaults are scaled to 32 px images: a
    unit L2 step spreads over 3 072 values at 32 px instead of 150 528 at 224 px (7× fewer per side), and
    the attack has 60 instead of 1000 iterations, hence ``pred_step`` 0.1 and α_max 1.0 instead of the
    authors' 0.05 and 0.08.

    Cost: one outer iteration is about 14 MASK iterations (``n_step`` inner steps, one prediction step,
    ``n_step`` look-ahead steps with a double backward, ``n_bs`` forward passes), and each reset one MASK
    run of ``reset_iterations``; with the defaults the attack costs about 5 MASK runs of 300 iterations.
    Fewer ``steps`` or a cheaper interpreter (its ``iterations`` set the final map's cost) scale it down.

    Args:
        classifier, interpreter, **base_kwargs (eps, alpha, steps, warm_steps, smoothing, kappa, seed,
            progress; by keyword): see :class:`ADV2MaskBase` (``alpha`` is the warm start's step; ``steps`` is
            n_total, default 60, paper 1000).
        n_step: inner Adam and look-ahead steps per iteration (default 4, as the paper).
        n_reset: iterations between resets of the map estimate (default 20; paper 50).
        reset_iterations: MASK iterations of a reset (default 100; the authors' 300).
        pred_step: L2 norm per image of the prediction step (i) (default 0.1; authors 0.05 at 224 px).
        alpha_max: largest interpretation step (ii), L2 norm per image (default 1.0; paper 0.08).
        n_bs: bisections of the step size (default 8; paper 12).
        mask_lr: Adam learning rate of the map estimate (default None: the interpreter's ``lr``).

    Shapes: as :class:`ADV2MaskBase`.

    Example:
        >>> attack = ADV2Mask(classifier, build_interpreter("mask", classifier))
        >>> result = attack(images, target_classes)  # target map: the benign MASK map
    """

    name = "adv2_mask"
    needs = ("init_mask", "mask_loss", "optimize", "mask_to_map", "reference")

    def __init__(
        self,
        classifier: Classifier,
        interpreter: Interpreter,
        *,
        n_step: int = 4,
        n_reset: int = 20,
        reset_iterations: int = 100,
        pred_step: float = 0.1,
        alpha_max: float = 1.0,
        n_bs: int = 8,
        mask_lr: float | None = None,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(classifier, interpreter, **base_kwargs)
        require_at_least(1, n_step=n_step, n_reset=n_reset, reset_iterations=reset_iterations, n_bs=n_bs)
        if not alpha_max > 0 or not pred_step >= 0:
            raise ValueError(f"alpha_max must be > 0 and pred_step >= 0, got {alpha_max}, {pred_step}")
        self.n_step = int(n_step)
        self.n_reset = int(n_reset)
        self.reset_iterations = int(reset_iterations)
        self.pred_step = float(pred_step)
        self.alpha_max = float(alpha_max)
        self.n_bs = int(n_bs)
        self.mask_lr = mask_lr

    def prediction_step(self, x_adv: Tensor, x: Tensor, target: Tensor, step: int) -> Tensor:
        """Step (i): x ← Π(x − β·∇_x ℓ_prd / ‖∇_x ℓ_prd‖₂) per sample, β = ``pred_step``."""
        x_adv = x_adv.detach().requires_grad_(True)
        loss, _ = self.prediction_loss(x_adv, target, step)
        (grad,) = torch.autograd.grad(loss.sum(), x_adv)
        return self.project(x_adv.detach() - self.pred_step * l2_normalize(grad.float()).to(x_adv.dtype), x)

    def interpretation_step(
        self, x_adv: Tensor, x: Tensor, target: Tensor, target_map: Tensor, follower: MaskFollower
    ) -> Tensor:
        """Step (ii): along −∇_x of the look-ahead ℓ_int, as far as the confidence stays ≥ κ (bisection)."""
        x_var = x_adv.detach().requires_grad_(True)
        l_int = follower.lookahead(x_var, target_map)
        (grad,) = torch.autograd.grad(l_int.sum(), x_var)
        direction = -l2_normalize(grad.float()).to(x_adv.dtype)
        x_adv = x_adv.detach()

        def accept(x_try: Tensor) -> Tensor:
            return self.confidence(self.project(x_try, x), target) >= self.kappa

        s = bisect_step(accept, x_adv, direction, self.alpha_max, self.n_bs)
        return self.project(x_adv + s.view(-1, 1, 1, 1).to(x_adv.dtype) * direction, x)

    def search(self, x_adv: Tensor, x: Tensor, target: Tensor, target_map: Tensor) -> tuple[Tensor, Tensor]:
        """Algorithm 1 from the warm-started x_adv; (selected iterates, their steps)."""
        follower = MaskFollower(self.interpreter, target, self.n_step, self.mask_lr, self.reset_iterations)
        best = BestIterate(x_adv, self.kappa)
        for i in self.step_range():
            if i % self.n_reset == 0 or i == self.steps:
                fresh = follower.reset(x_adv)  # periodical reset; its map is MASK's own: select on it
                conf = self.confidence(x_adv, target)
                best.update(x_adv, map_mse(fresh, target_map), conf, step=self.warm_steps + i)
            if i == self.steps:
                break
            follower.update(x_adv)
            x_adv = self.prediction_step(x_adv, x, target, i)
            x_adv = self.interpretation_step(x_adv, x, target, target_map, follower)
        return best.result(x_adv, self.warm_steps + self.steps)
