"""ADV² against MASK by a min-max game: attack the condition under which MASK shows the target map.

Rather than estimating how MASK's map moves with x (Algorithm 1, the unrolled estimate), this attack
makes the target class survive MASK's best deletion outside the target region and die when the region is
deleted; the game's pieces are in :mod:`aid.attacks.mask_game`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from aid.attacks.adv2_mask import MASK_ESTIMATES, ADV2MaskBase, require_at_least
from aid.attacks.base import ATTACKS
from aid.attacks.mask_game import InnerPlayer, minmax_loss, target_region, worst_deletion_outside
from aid.attacks.pgd import signed_step
from aid.attacks.schedules import BestIterate, check_schedule, linear_schedule
from aid.interpreters.base import Interpreter
from aid.metrics import map_l1
from aid.models import Classifier


@MASK_ESTIMATES.register("minmax")
@ATTACKS.register("adv2_mask_minmax")
class ADV2MaskMinMax(ADV2MaskBase):
    r"""ADV² against MASK by the min-max game of :mod:`aid.attacks.mask_game` (the ``"minmax"`` estimate).

    With R the target map's pixels above ``region_threshold``, after the PGD warm start
    (:class:`~aid.attacks.adv2_mask.ADV2MaskBase`) each of ``steps`` iterations is an L∞ sign step of
    size α on

        ℓ_prd − ``survive_weight``·log p_t(φ(x; keep_out)) + λ·p_t^T(φ(x; 1 − R)):

    the target class t must survive the inner player's deletion keep_out (MASK's own optimisation,
    ``inner.iterations`` Adam steps with the deletion forbidden on R, re-solved every ``inner.every``
    steps; the mean over its last ``inner.pool`` solutions) and die when R is deleted (MASK's deletion
    term at its temperature T). Every ``select_every`` steps MASK's own map of the iterate is computed
    and each sample keeps the iterate nearest the target map in L1 among those with target confidence
    ≥ κ.

    Cost per ``select_every`` steps (defaults: 15): 3 classifier passes with backward per step, an inner
    solve of ``inner.iterations`` MASK iterations every ``inner.every`` steps, and one MASK map of the
    interpreter's ``iterations`` for the selection.

    Args:
        classifier, interpreter, **base_kwargs (eps, alpha, steps, warm_steps, smoothing, kappa, seed,
            progress; by keyword): see :class:`~aid.attacks.adv2_mask.ADV2MaskBase` (``alpha``: the step of
            the warm start and of every sign step); the interpreter needs ``phi``, ``keep_mask`` and
            ``temperature``.
        lam: λ, the weight of the region term, a number or (start, end) ramped linearly (default 100).
        select_every: offer an iterate to the selection every this many steps (default 15).
        inner: the inner player's schedule, an :class:`~aid.attacks.mask_game.InnerPlayer` or a mapping of
            its fields, e.g. ``{"every": 10, "iterations": 40, "pool": 1}`` (the defaults).
        survive_weight: weight of the survival term (default 3).
        region_threshold: threshold of the target map that gives the region R, in [0, 1) (default 0.05).

    Shapes: as :class:`~aid.attacks.adv2_mask.ADV2MaskBase`.

    Example:
        >>> attack = ADV2MaskMinMax(classifier, build_interpreter("mask", classifier), steps=300)
        >>> result = attack(images, target_classes)  # or build_attack("adv2", ..., estimate="minmax")
    """

    name = "adv2_mask_minmax"
    needs = ("optimize", "mask_to_map", "keep_mask", "phi", "reference", "temperature")

    def __init__(
        self,
        classifier: Classifier,
        interpreter: Interpreter,
        *,
        lam: float | tuple[float, float] = 100.0,
        select_every: int = 15,
        inner: InnerPlayer | dict[str, int] | None = None,
        survive_weight: float = 3.0,
        region_threshold: float = 0.05,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(classifier, interpreter, **base_kwargs)
        require_at_least(1, select_every=select_every)
        if not survive_weight >= 0 or not 0 <= region_threshold < 1:
            raise ValueError(f"survive_weight must be >= 0 and region_threshold in [0, 1), got {survive_weight}, "
                             f"{region_threshold}")
        check_schedule("lam", lam, 0.0, float("inf"))
        self.lam = lam
        self.select_every = int(select_every)
        self.inner = InnerPlayer.of(inner)
        self.survive_weight = float(survive_weight)
        self.region_threshold = float(region_threshold)

    def search(self, x_adv: Tensor, x: Tensor, target: Tensor, target_map: Tensor) -> tuple[Tensor, Tensor]:
        """The min-max game from the warm-started x_adv; (selected iterates, their steps)."""
        region = target_region(target_map, self.region_threshold)
        best = BestIterate(x_adv, self.kappa)
        keep_outs: list[Tensor] = []
        for i in self.step_range():
            if i % self.select_every == 0 or i == self.steps:
                l1 = map_l1(self.interpreter.attribute(x_adv, target), target_map)
                best.update(x_adv, l1, self.confidence(x_adv, target), step=self.warm_steps + i)
            if i == self.steps:
                break
            if i % self.inner.every == 0:
                keep = worst_deletion_outside(self.interpreter, x_adv, target, region, self.inner.iterations)
                keep_outs = [*keep_outs, keep][-self.inner.pool:]
            x_var = x_adv.detach().requires_grad_(True)
            prd, _ = self.prediction_loss(x_var, target, i)
            lam = linear_schedule(self.lam, i, self.steps)
            loss = minmax_loss(self.interpreter, x_var, target, region, keep_outs, prd, self.survive_weight, lam)
            (grad,) = torch.autograd.grad(loss.sum(), x_var)
            x_adv = signed_step(x_adv, x, grad, self.alpha, self.eps)
        return best.result(x_adv, self.warm_steps + self.steps)
