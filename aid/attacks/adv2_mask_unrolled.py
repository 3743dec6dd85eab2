"""ADV² against MASK through MASK's unrolled iterations: PGD on the exact gradient of a truncated MASK map.

MASK's map is a deterministic optimisation from a fixed start, so the map after its first K Adam
iterations is an exact (if truncated) differentiable function of x
(:meth:`~aid.interpreters.mask.MaskInterpreter.unrolled_map`). This estimate runs ADV² on PGD (Eqn 3–4,
as :class:`~aid.attacks.adv2.ADV2`) with ℓ_int on that K-step map, where Algorithm 1
(:class:`~aid.attacks.adv2_mask.ADV2Mask`) only estimates the map's response.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from aid.attacks.adv2_mask import MASK_ESTIMATES, ADV2MaskBase, require_at_least
from aid.attacks.base import ATTACKS
from aid.attacks.pgd import signed_step
from aid.attacks.schedules import BestIterate, check_schedule, linear_schedule
from aid.attacks.strategies import map_mse
from aid.interpreters.base import Interpreter
from aid.models import Classifier


@MASK_ESTIMATES.register("unrolled")
@ATTACKS.register("adv2_mask_unrolled")
class ADV2MaskUnrolled(ADV2MaskBase):
    r"""ADV² against MASK on PGD through MASK's first ``unroll`` iterations (the ``"unrolled"`` estimate).

    After the PGD warm start (:class:`~aid.attacks.adv2_mask.ADV2MaskBase`), each of ``steps`` iterations
    is an L∞ sign step of size α on ℓ_prd + λ·MSE(K-step map, target map), the K-step map being MASK's
    map after its first ``unroll`` Adam iterations from its start, differentiated exactly with respect to
    x (the graph kept through the iterations). Best iterate per sample: the lowest K-step ℓ_int among the
    iterates with target confidence ≥ κ, as in :class:`~aid.attacks.adv2.ADV2`.

    Cost: each step costs ``unroll`` double-backward MASK iterations, and the graph of all of them is held
    at once, so memory grows with ``unroll`` × the classifier's activations for the batch.

    Args:
        classifier, interpreter, **base_kwargs (eps, alpha, steps, warm_steps, smoothing, kappa, seed,
            progress; by keyword): see :class:`~aid.attacks.adv2_mask.ADV2MaskBase` (``alpha``: the step of
            the warm start and of every sign step); the interpreter needs ``unrolled_map``.
        unroll: K, MASK iterations differentiated through (default 20).
        lam: λ, a number or (start, end) ramped linearly over the steps as in ADV2 (default 100).

    Shapes: as :class:`~aid.attacks.adv2_mask.ADV2MaskBase`.

    Example:
        >>> attack = ADV2MaskUnrolled(classifier, build_interpreter("mask", classifier), unroll=20)
        >>> result = attack(images, target_classes)  # or build_attack("adv2", ..., estimate="unrolled")
    """

    name = "adv2_mask_unrolled"
    needs = ("unrolled_map", "optimize", "mask_to_map")

    def __init__(
        self,
        classifier: Classifier,
        interpreter: Interpreter,
        *,
        unroll: int = 20,
        lam: float | tuple[float, float] = 100.0,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(classifier, interpreter, **base_kwargs)
        require_at_least(1, unroll=unroll)
        check_schedule("lam", lam, 0.0, float("inf"))
        self.unroll = int(unroll)
        self.lam = lam

    def search(self, x_adv: Tensor, x: Tensor, target: Tensor, target_map: Tensor) -> tuple[Tensor, Tensor]:
        """ADV² on PGD through MASK's first ``unroll`` iterations; (selected iterates, their steps)."""
        best = BestIterate(x_adv, self.kappa)
        for i in self.step_range():
            x_var = x_adv.detach().requires_grad_(True)
            l_int = map_mse(self.interpreter.unrolled_map(x_var, target, self.unroll), target_map)
            # ℓ_prd through prediction_loss, so that subclasses (the adaptive attack) extend it here too.
            prd, logits = self.prediction_loss(x_var, target, min(i, self.steps - 1))
            conf = logits.detach().float().softmax(dim=1).gather(1, target[:, None]).squeeze(1)
            best.update(x_adv, l_int, conf, step=self.warm_steps + i)
            if i == self.steps:
                break
            lam = linear_schedule(self.lam, i, self.steps)
            loss = prd + lam * l_int
            (grad,) = torch.autograd.grad(loss.sum(), x_var)
            x_adv = signed_step(x_adv, x, grad, self.alpha, self.eps)
        return best.result(x_adv, self.warm_steps + self.steps)
