"""ADV² on the PGD framework (§3.1–3.4, §3.6; Eqn 3–4): fool the classifier and its interpreter at once."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from aid.attacks.base import ATTACKS, Attack, AttackResult
from aid.attacks.pgd import PGD, signed_step
from aid.attacks.schedules import BestIterate, check_schedule, linear_schedule, smoothed_cross_entropy
from aid.attacks.strategies import build_interpretation_loss, unique_modules
from aid.attacks.targets import benign_target_maps
from aid.interpreters.base import Interpreter
from aid.models import Classifier
from aid.registry import Registry

#: Attack classes that replace :class:`ADV2` for an interpreter family (``"mask"`` -> Algorithm 1). A variant with
#: several estimates lists them in its class attribute ``estimates`` (a :class:`~aid.registry.Registry`).
ADV2_VARIANTS: Registry[Attack] = Registry("ADV² variant")


def adv2_class(interpreter: Interpreter | str | None, estimate: str | None = None) -> type:
    """The ADV² class for an interpreter (or its family name) and, where the family has several, an estimate.

    ``ADV2_VARIANTS``' entry for the interpreter's name, else :class:`ADV2`. ``estimate`` (e.g. ``"minmax"``)
    picks among the variant's ``estimates`` (MASK: ``"algorithm1"``, the default, ``"unrolled"``,
    ``"minmax"``); it is ignored for a family without estimates, whose constructor then refuses the
    argument. An unknown estimate of a family that has them raises a ``ValueError`` listing them.
    """
    name = interpreter if isinstance(interpreter, str) else getattr(interpreter, "name", None)
    variant = ADV2_VARIANTS.get(name) if name is not None and name in ADV2_VARIANTS else ADV2
    estimates = getattr(variant, "estimates", None)
    if estimate is None or estimates is None:
        return variant
    import aid.attacks  # noqa: F401  (every estimate's module registers it)

    if estimate not in estimates:
        raise ValueError(f"estimate must be one of {', '.join(estimates.names())} for interpreter {name!r}, "
                         f"got {estimate!r}")
    return estimates.get(estimate)


def make_adv2(classifier: Classifier, interpreter: Interpreter, **kwargs: Any) -> Attack:
    """Build the ADV² attack that fits ``interpreter`` (and ``estimate``, for MASK), see :func:`adv2_class`."""
    cls = adv2_class(interpreter, kwargs.get("estimate"))
    if getattr(cls, "estimates", None) is not None:
        kwargs.pop("estimate", None)  # the selector; a class without estimates refuses the argument
    return cls(classifier, interpreter, **kwargs)


@ATTACKS.register("adv2")
class ADV2(Attack):
    r"""ADV² on PGD: ``min ℓ_prd(f(x), c_t) + λ·ℓ_int(g(x; f), m_t)`` s.t. ``‖x − x◦‖∞ ≤ ε`` (Eqn 3–4).

    1. Warm start (§3.6): ``warm_steps`` iterations of targeted PGD (:class:`~aid.attacks.pgd.PGD`).
    2. ``steps`` iterations ``x ← Π(x − α·sign(∇_x ℓ_adv))`` with ℓ_adv = label-smoothed CE (ρ decreasing
       linearly over the steps, §3.6) + λ·ℓ_int + λ_enc·(family's extra term; RTS: ℓ_enc).
       ℓ_int is the family's strategy (:mod:`aid.attacks.strategies`): GRAD through the smooth ReLU
       h(z), CAM / IG / Grad-CAM / ensemble on the interpreter's differentiable map, RTS on the mask.
    3. Best iterate (the authors' scripts): every ``select_every`` steps each sample keeps, among its
       iterates whose target-class probability is ≥ κ, the one with the lowest ℓ_int; a sample with
       none keeps its last iterate. Selection is per sample (tensor ops), never per batch.
    4. Follow-up (``extra_steps`` > 0): the samples that have no iterate with confidence ≥ κ after step 3
       go on alone (a sub-batch, so the cost is proportional to their number) for ``extra_steps`` more
       steps, each on the prediction loss alone until it reaches κ (ℓ_int is what held it below), then on
       ADV²'s whole loss, with the same selection. A hard image thus gets a longer budget, and the others'
       selection is untouched.

    The target map defaults to the benign map, the interpretation of x for the class the classifier
    predicts on it; ``result.maps`` is the interpretation of the selected x_adv for the target class
    (its predicted class when the attack succeeds), both by the attacked, ordinary interpreter.

    Building ``ADV2(classifier, interpreter)`` for an interpreter whose name is registered in
    ``ADV2_VARIANTS`` returns that class's attack instead (``__new__`` dispatches, see :func:`adv2_class`,
    so ``build_attack("adv2", ...)`` and configs naming ADV2 work for every family). For MASK the keyword
    ``estimate`` picks the attack: ``"algorithm1"`` (default, :class:`~aid.attacks.adv2_mask.ADV2Mask`),
    ``"unrolled"`` or ``"minmax"``; it is consumed by the dispatch, the other arguments go to that class.

    Randomness: none (no random start, deterministic label smoothing), so each sample's result
    is independent of the rest of the batch; ``seed`` is kept for the interface.

    Defaults are for the embedded 32 px setting (warm 50 + 150 steps; λ per family from its strategy's
    ``default_lam``: GRAD 30, CAM 10, RTS 30, others 10, chosen on the embedded classifier, see
    :mod:`aid.attacks.strategies`). Paper scale (ImageNet 224 px, ResNet-50; Appendix B Table 10,
    ε = 0.031, α = 1/255): GRAD 800 iterations, λ 0.007 (on a sum over pixels); CAM 1200 iterations,
    λ 0.204; RTS 1200 iterations, λ 0.002, ℓ_enc weight 0.1. The authors' scripts: CAM 400 warm + 1200
    steps with c ramped 5 → 10 (``lam=(5, 10)``), RTS 300 + 1000 with c = 5, GRAD 300 warm and c from
    0.001 to 0.05, selection every 10 steps with κ = 0.8, all on a mean over pixels as here.

    Args:
        classifier: target classifier ``f``.
        interpreter: the attacked interpreter ``g`` (also the evaluation interpreter).
        eps: L∞ budget ε (default 0.031).
        alpha: step size α (default 1/255).
        steps: ADV² iterations after the warm start (default 150).
        warm_steps: PGD iterations of the warm start (default 50; 0 = none).
        lam: λ, a number or a pair (start, end) ramped linearly over the steps (default None: the
            strategy's ``default_lam``).
        lam_enc: weight of the family's extra term (RTS: ℓ_enc; default 0.1).
        smoothing: label-smoothing ρ, a number or (start, end) (default (0.05, 0.01), §3.6; 0 = plain CE).
        kappa: κ, target-class probability an iterate needs to be selected (default 0.8).
        select_every: offer an iterate to the selection every this many steps (default 1).
        extra_steps: further steps for the samples that reach no confidence ≥ κ in ``steps`` (default 0:
            none).
        seed: seed of the attack's random numbers (unused: ADV² on PGD draws none).
        progress: show a tqdm progress bar.
        strategy_kwargs: constructor arguments of the ℓ_int strategy (e.g. ``{"presence_weight": 10.0}``
            against an RTSA, ``{"tau": 1e-3}`` against GRAD).

    Shapes: x (B, C, H, W) in [0, 1]; target (B,) long or an int; target_map (B, 1, H, W) or None.
    Returns an :class:`~aid.attacks.base.AttackResult` with ``maps`` and ``iterations`` = the step
    (warm-start steps included) of the selected iterate.

    Example:
        >>> attack = ADV2(classifier, build_interpreter("cam", classifier))
        >>> result = attack(images, target_classes)  # target map: the benign CAM
    """

    name = "adv2"

    def __new__(
        cls,
        classifier: Classifier | None = None,
        interpreter: Interpreter | None = None,
        *args: Any,
        **kwargs: Any,
    ):
        variant = cls.class_for(interpreter, kwargs.get("estimate"))
        if issubclass(variant, cls):
            # Python then runs variant.__init__ with the same arguments.
            return super().__new__(variant)
        kwargs.pop("estimate", None)  # the selector, consumed here
        return variant(classifier, interpreter, *args, **kwargs)

    @classmethod
    def class_for(cls, interpreter: Interpreter | str | None, estimate: str | None = None) -> type[Attack]:
        """The class that ``cls(classifier, interpreter, estimate=estimate, ...)`` builds (:func:`adv2_class`)."""
        return adv2_class(interpreter, estimate) if cls is ADV2 else cls

    def __init__(
        self,
        classifier: Classifier,
        interpreter: Interpreter,
        eps: float = 0.031,
        alpha: float = 1 / 255,
        steps: int = 150,
        warm_steps: int = 50,
        lam: float | tuple[float, float] | None = None,
        lam_enc: float = 0.1,
        smoothing: float | tuple[float, float] = (0.05, 0.01),
        kappa: float = 0.8,
        select_every: int = 1,
        extra_steps: int = 0,
        seed: int | None = 0,
        progress: bool = False,
        strategy_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(classifier, eps=eps, alpha=alpha, steps=steps, seed=seed, progress=progress)
        if int(warm_steps) < 0:
            raise ValueError(f"warm_steps must be >= 0, got {warm_steps}")
        if lam is not None:
            check_schedule("lam", lam, 0.0, float("inf"))
        if not lam_enc >= 0:
            raise ValueError(f"lam_enc must be >= 0, got {lam_enc}")
        check_schedule("smoothing", smoothing, 0.0, 0.999)
        if not 0 <= kappa <= 1:
            raise ValueError(f"kappa must lie in [0, 1], got {kappa}")
        if int(select_every) < 1:
            raise ValueError(f"select_every must be >= 1, got {select_every}")
        if int(extra_steps) < 0:
            raise ValueError(f"extra_steps must be >= 0, got {extra_steps}")
        self.interpreter = interpreter
        self.strategy = build_interpretation_loss(interpreter, **(strategy_kwargs or {}))
        self.lam = self.strategy.default_lam if lam is None else lam
        self.lam_enc = float(lam_enc)
        self.smoothing = smoothing
        self.kappa = float(kappa)
        self.warm_steps = int(warm_steps)
        self.select_every = int(select_every)
        self.extra_steps = int(extra_steps)
        self.warm = (
            PGD(classifier, eps=eps, alpha=alpha, steps=self.warm_steps, seed=seed, progress=progress)
            if self.warm_steps > 0
            else None
        )

    def models(self) -> list[nn.Module]:
        """The classifier and the interpreter's modules (e.g. the RTS masker), frozen during the attack."""
        return unique_modules([self.classifier, *self.strategy.modules()])

    def losses(
        self, x_adv: Tensor, target: Tensor, target_map: Tensor, step: int, interpretation: Tensor | float = 1.0
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(ℓ_adv (B,), ℓ_int (B,), logits (B, K)) of iterate x_adv at ADV² step ``step`` (0-based).

        ``interpretation``: per-sample (B,) or common weight of the interpretation terms in ℓ_adv (1: ADV²'s
        loss; 0: the prediction loss alone, as in the follow-up before a sample reaches κ)."""
        logits, l_int, extra = self.strategy.logits_and_losses(x_adv, target, target_map, self.classifier)
        prd = smoothed_cross_entropy(logits, target, linear_schedule(self.smoothing, step, self.steps))
        lam = linear_schedule(self.lam, step, self.steps)
        return prd + interpretation * (lam * l_int + self.lam_enc * extra), l_int, logits

    def measure(
        self, x_adv: Tensor, target: Tensor, target_map: Tensor, i: int, interpretation: Tensor | float = 1.0
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(ℓ_adv (B,), ℓ_int (B,), target confidence (B,)) of iterate ``x_adv`` at ADV² step i (0-based)."""
        loss, l_int, logits = self.losses(x_adv, target, target_map, min(i, self.steps - 1), interpretation)
        return loss, l_int, logits.detach().float().softmax(dim=1).gather(1, target[:, None]).squeeze(1)

    def descend(
        self,
        x_adv: Tensor,
        x: Tensor,
        target: Tensor,
        target_map: Tensor,
        best: BestIterate,
        steps: int,
        first: int = 0,
        follow_up: bool = False,
        desc: str = "adv2",
    ) -> Tensor:
        """``steps`` signed-gradient steps of ADV²'s loss from ``x_adv`` (B, C, H, W) around x, numbered from
        ``first`` (the schedules' step), offering iterates to ``best`` (updated in place): every
        ``select_every``-th and the last, or, with ``follow_up``, every one but the first (it was already
        offered) with the map term only for the samples ``best`` has found. Returns the last iterate."""
        for j in tqdm(range(steps + 1), desc=desc, disable=not self.progress, leave=False):
            x_adv.requires_grad_(True)
            # In the follow-up, per sample: the map term only once the sample has reached κ, so it cannot
            # hold it below.
            weight = best.found.to(x.dtype) if follow_up else 1.0
            loss, l_int, conf = self.measure(x_adv, target, target_map, first + j, interpretation=weight)
            offer = j > 0 if follow_up else j % self.select_every == 0 or j == steps
            if offer:
                best.update(x_adv, l_int, conf, step=self.warm_steps + first + j)
            if j == steps:  # the last iterate is evaluated, not stepped from
                break
            # A sum, not a mean: each sample's gradient is then independent of the batch size.
            (grad,) = torch.autograd.grad(loss.sum(), x_adv)
            x_adv = signed_step(x_adv, x, grad, self.alpha, self.eps)
        return x_adv.detach()

    def follow_up(self, best: BestIterate, x_adv: Tensor, x: Tensor, target: Tensor, target_map: Tensor) -> Tensor:
        """Step 4: continue the samples that ``best`` has not found, alone, for ``extra_steps`` steps: on the
        prediction loss until an iterate reaches κ, then on ADV²'s whole loss, keeping the confident iterate
        with the lowest ℓ_int (``best`` is updated in place). Returns the last iterates."""
        idx = (~best.found).nonzero().squeeze(1)
        if self.extra_steps == 0 or idx.numel() == 0:
            return x_adv
        sub = BestIterate(x_adv[idx].detach(), self.kappa)
        xs = self.descend(
            x_adv[idx].detach(), x[idx], target[idx], target_map[idx], sub, self.extra_steps,
            first=self.steps, follow_up=True, desc="adv2 follow-up",
        )
        best.merge(idx, sub)
        x_adv = x_adv.detach().clone()
        x_adv[idx] = xs
        return x_adv

    def _run(self, x: Tensor, target: Tensor, target_map: Tensor | None) -> AttackResult:
        if target_map is None:
            target_map = benign_target_maps(self.interpreter, self.classifier, x)
        target_map = target_map.detach().to(x.dtype)
        x_adv = self.warm_start(x, target)
        best = BestIterate(x_adv, self.kappa)
        x_adv = self.descend(x_adv, x, target, target_map, best, self.steps)
        x_adv = self.follow_up(best, x_adv, x, target, target_map)
        x_sel, step = best.result(x_adv, self.warm_steps + self.steps)
        success, confidence = self.evaluate(x_sel, target)
        maps = self.interpreter.attribute(x_sel, target).detach()
        return AttackResult(x_adv=x_sel, success=success, confidence=confidence, iterations=step, maps=maps)
