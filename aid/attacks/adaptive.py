"""Adaptive ADV² against feature squeezing (§4 Q3, Algorithm 2).

ADV² plus a term that keeps the prediction stable under the squeezer ψ, so that the detector's score
‖softmax f(x) − softmax f(ψ(x))‖₁ stays low:

* smoothing squeezers (median, non-local means): ℓ_adv(x) + λ_s·ℓ_sqz(f(x), f(ψ(x))), ℓ_sqz the cross
  entropy between the predictions of the input and of the squeezed input (§4 Q3);
* bit-depth reduction, two stages (Algorithm 2): (1) x⁺ ← PGD in the squeezed space from ψ(x◦) with
  step α = 1/2^i (i bits) towards c_t; (2) ADV² in B_ε(x◦) with ℓ_adv(x) + λ_s·‖f(x) − f(x⁺)‖₁.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from aid.attacks.adv2 import ADV2, adv2_class
from aid.attacks.adv2_mask import ADV2Mask
from aid.attacks.adv2_mask_minmax import ADV2MaskMinMax
from aid.attacks.adv2_mask_unrolled import ADV2MaskUnrolled
from aid.attacks.base import ATTACKS, Attack, AttackResult
from aid.attacks.pgd import signed_step
from aid.defenses.squeeze import BitDepth, Squeezer, build_squeezer
from aid.interpreters.base import Interpreter
from aid.models import Classifier

Mode = Literal["auto", "consistency", "two_stage"]


class SqueezeTerm:
    """Algorithm 2's extra loss, shared by the adaptive variants of :class:`ADV2` and of the attacks on MASK.

    A mixin placed before the ADV² class it extends: it adds ``λ_s·term`` to that class's loss hook
    (``ADV2.losses`` or ``ADV2MaskBase.prediction_loss``) and wraps ``_run`` with the squeezed-space
    search of the two-stage mode.

    Args (keywords of the adaptive attacks):
        squeezer: the squeezer ψ to evade: a name (``"median_3x3"``, ``"nlm_11_3_4"``,
            ``"bit_depth_3"``) or a :class:`~aid.defenses.squeeze.Squeezer`.
        lam_sqz: λ_s, weight of the squeeze term (default 1.0).
        mode: ``"consistency"`` (the smoothing-squeezer term), ``"two_stage"`` (Algorithm 2 for
            bit depth) or ``"auto"`` (default: two-stage for bit depth, consistency otherwise).
        consistency: ℓ_sqz of the consistency mode: ``"ce"`` (default, the paper's cross entropy
            −Σ_c p_c(x) log p_c(ψ(x))) or ``"l1"`` (the detector's own score).
        plus_steps: PGD iterations of stage 1 (default 20).
    """

    squeezer: Squeezer

    def _setup_squeeze(
        self,
        squeezer: str | Squeezer,
        lam_sqz: float,
        mode: Mode,
        consistency: Literal["ce", "l1"],
        plus_steps: int,
    ) -> None:
        self.squeezer = build_squeezer(squeezer)
        if not lam_sqz >= 0:
            raise ValueError(f"lam_sqz must be >= 0, got {lam_sqz}")
        if mode not in ("auto", "consistency", "two_stage"):
            raise ValueError(f"mode must be 'auto', 'consistency' or 'two_stage', got {mode!r}")
        if consistency not in ("ce", "l1"):
            raise ValueError(f"consistency must be 'ce' or 'l1', got {consistency!r}")
        is_bits = isinstance(self.squeezer, BitDepth)
        if mode == "two_stage" and not is_bits:
            raise ValueError(f"the two-stage mode is for bit-depth reduction, not {self.squeezer.name}")
        if int(plus_steps) < 1:
            raise ValueError(f"plus_steps must be >= 1, got {plus_steps}")
        self.lam_sqz = float(lam_sqz)
        self.mode = ("two_stage" if is_bits else "consistency") if mode == "auto" else mode
        self.consistency = consistency
        self.plus_steps = int(plus_steps)
        self._p_plus: Tensor | None = None

    def squeeze_loss(self, x_adv: Tensor, logits: Tensor) -> Tensor:
        """The squeeze term per sample (B,) for iterate x_adv and its logits, differentiable in x_adv."""
        logp = F.log_softmax(logits.float(), dim=1)
        if self.mode == "two_stage":
            return (logp.exp() - self._p_plus).abs().sum(dim=1)
        # BPDA: exact gradient for the median, the documented surrogate for NLM and bit depth.
        logq = F.log_softmax(self.classifier(self.squeezer.bpda(x_adv)).float(), dim=1)
        if self.consistency == "ce":
            return -(logp.exp() * logq).sum(dim=1)
        return (logp.exp() - logq.exp()).abs().sum(dim=1)

    def squeezed_space_search(self, x: Tensor, target: Tensor) -> Tensor:
        """Stage 1 of Algorithm 2: x⁺ = ψ(z), z found by PGD in B_ε(x◦) with step 1/2^i; returns x⁺.

        Each step takes the gradient of the cross-entropy to c_t at the squeezed point ψ(z) and moves
        z by α = 1/2^i (one quantisation level) along its sign, projected onto B_ε(x◦) ∩ [0, 1]; x⁺ is
        therefore a squeezed image that some input of the ε-ball maps to. (The paper only asks x⁺ to
        be "close to x◦'s ε-neighbourhood"; the projection makes that precise.)
        """
        alpha = 1.0 / 2**self.squeezer.bits
        z = x.detach().clone()
        for _ in range(self.plus_steps):
            x_plus = self.squeezer(z).requires_grad_(True)
            loss = F.cross_entropy(self.classifier(x_plus).float(), target, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_plus)
            z = signed_step(z, x, grad, alpha, self.eps)
        return self.squeezer(z)

    def _run(self, x: Tensor, target: Tensor, target_map: Tensor | None) -> AttackResult:
        if self.mode != "two_stage":
            return super()._run(x, target, target_map)
        x_plus = self.squeezed_space_search(x, target)
        with torch.no_grad():
            self._p_plus = self.classifier(x_plus).float().softmax(dim=1)
        try:
            return super()._run(x, target, target_map)
        finally:
            self._p_plus = None


@ATTACKS.register("adv2_adaptive")
class ADV2Adaptive(SqueezeTerm, ADV2):
    r"""Adaptive ADV² against feature squeezing (Algorithm 2) on the PGD framework.

    :class:`~aid.attacks.adv2.ADV2` (warm start, label smoothing, per-sample best iterate; every
    argument of ADV2 is accepted) with ℓ_adv augmented by λ_s times

    * for smoothing squeezers, ℓ_sqz = −Σ_c p_c(x) log p_c(ψ(x)), the cross entropy of the predictions
      of the input and the squeezed input (or their L1 distance, ``consistency="l1"``); the
      gradient through ψ is exact for the median and BPDA for non-local means (forward NLM,
      backward identity or blur, :class:`~aid.defenses.squeeze.NonLocalMeans`);
    * for bit-depth reduction with i bits, ‖p(x) − p(x⁺)‖₁ where x⁺ is found first by PGD in the
      squeezed space (step 1/2^i, :meth:`squeezed_space_search`). The paper's stage 2 does not tie
      ψ(x*) to x⁺; ``mode="consistency"`` uses the straight-through consistency term instead.

    For a MASK interpreter the class returns the adaptive variant of the ADV² attack on MASK that
    ``estimate`` selects (:func:`adaptive_class`: :class:`ADV2MaskAdaptive` for Algorithm 1, the default,
    :class:`ADV2MaskUnrolledAdaptive`, :class:`ADV2MaskMinMaxAdaptive`). The paper reports detection rates
    for MASK and RTS (Table 4): basic ADV² is detected as often as PGD, the adaptive variant far less.
    The authors' script is untargeted with a differentiable median pooling and a detector threshold at
    the 95th percentile of 500 benign images.

    Args:
        classifier: target classifier ``f``.
        interpreter: the attacked interpreter ``g``.
        squeezer: the squeezer ψ (default ``"median_3x3"``, Table 4's local smoothing).
        lam_sqz: λ_s (default 1.0).
        mode: ``"auto"`` (default), ``"consistency"`` or ``"two_stage"``; see :class:`SqueezeTerm`.
        consistency: ``"ce"`` (default) or ``"l1"``.
        plus_steps: stage-1 PGD iterations of the two-stage mode (default 20).
        **adv2_kwargs: the arguments of :class:`~aid.attacks.adv2.ADV2` (eps, alpha, steps, ...).

    Shapes: as :class:`~aid.attacks.adv2.ADV2`.

    Example:
        >>> attack = ADV2Adaptive(classifier, build_interpreter("cam", classifier), squeezer="median_3x3")
        >>> result = attack(images, target_classes)
    """

    name = "adv2_adaptive"

    def __init__(
        self,
        classifier: Classifier,
        interpreter: Interpreter,
        squeezer: str | Squeezer = "median_3x3",
        lam_sqz: float = 1.0,
        mode: Mode = "auto",
        consistency: Literal["ce", "l1"] = "ce",
        plus_steps: int = 20,
        **adv2_kwargs: Any,
    ) -> None:
        super().__init__(classifier, interpreter, **adv2_kwargs)
        self._setup_squeeze(squeezer, lam_sqz, mode, consistency, plus_steps)

    @classmethod
    def class_for(cls, interpreter: Interpreter | str | None, estimate: str | None = None) -> type[Attack]:
        """The class that ``cls(classifier, interpreter, estimate=estimate, ...)`` builds (:func:`adaptive_class`)."""
        return adaptive_class(interpreter, estimate) if cls is ADV2Adaptive else cls

    def losses(
        self, x_adv: Tensor, target: Tensor, target_map: Tensor, step: int, interpretation: Tensor | float = 1.0
    ) -> tuple[Tensor, Tensor, Tensor]:
        # The squeeze term belongs to the prediction side: ADV²'s follow-up keeps it.
        loss, l_int, logits = super().losses(x_adv, target, target_map, step, interpretation)
        return loss + self.lam_sqz * self.squeeze_loss(x_adv, logits), l_int, logits


class MaskSqueezeTerm(SqueezeTerm):
    """:class:`SqueezeTerm` for the ADV² attacks on MASK: the term joins ℓ_prd (``prediction_loss``).

    A mixin placed before the attack on MASK it extends: in Algorithm 1 the term enters the prediction
    step (i) (the interpretation step (ii) is unchanged); in the unrolled and min-max estimates, the loss
    of every step.

    Args:
        classifier, interpreter: as :class:`~aid.attacks.adv2_mask.ADV2MaskBase`.
        squeezer, lam_sqz, mode, consistency, plus_steps: as :class:`ADV2Adaptive`.
        **mask_kwargs: the arguments of the extended attack on MASK.
    """

    def __init__(
        self,
        classifier: Classifier,
        interpreter: Interpreter,
        squeezer: str | Squeezer = "median_3x3",
        lam_sqz: float = 1.0,
        mode: Mode = "auto",
        consistency: Literal["ce", "l1"] = "ce",
        plus_steps: int = 20,
        **mask_kwargs: Any,
    ) -> None:
        super().__init__(classifier, interpreter, **mask_kwargs)
        self._setup_squeeze(squeezer, lam_sqz, mode, consistency, plus_steps)

    def prediction_loss(self, x_adv: Tensor, target: Tensor, step: int) -> tuple[Tensor, Tensor]:
        loss, logits = super().prediction_loss(x_adv, target, step)
        return loss + self.lam_sqz * self.squeeze_loss(x_adv, logits), logits


@ATTACKS.register("adv2_mask_adaptive")
class ADV2MaskAdaptive(MaskSqueezeTerm, ADV2Mask):
    r"""Adaptive ADV² against feature squeezing for MASK by Algorithm 1: :class:`~aid.attacks.adv2_mask.ADV2Mask`
    with Algorithm 2's term in its prediction step (:class:`MaskSqueezeTerm`).

    Args: those of :class:`MaskSqueezeTerm` and :class:`~aid.attacks.adv2_mask.ADV2Mask`.

    Example:
        >>> attack = ADV2MaskAdaptive(classifier, build_interpreter("mask", classifier), squeezer="median_3x3")
        >>> result = attack(images, target_classes)
    """

    name = "adv2_mask_adaptive"


@ATTACKS.register("adv2_mask_unrolled_adaptive")
class ADV2MaskUnrolledAdaptive(MaskSqueezeTerm, ADV2MaskUnrolled):
    r"""Adaptive ADV² against feature squeezing for MASK through its unrolled iterations:
    :class:`~aid.attacks.adv2_mask_unrolled.ADV2MaskUnrolled` with Algorithm 2's term in every step's loss.

    Args: those of :class:`MaskSqueezeTerm` and :class:`~aid.attacks.adv2_mask_unrolled.ADV2MaskUnrolled`.
    """

    name = "adv2_mask_unrolled_adaptive"


@ATTACKS.register("adv2_mask_minmax_adaptive")
class ADV2MaskMinMaxAdaptive(MaskSqueezeTerm, ADV2MaskMinMax):
    r"""Adaptive ADV² against feature squeezing for MASK by the min-max game:
    :class:`~aid.attacks.adv2_mask_minmax.ADV2MaskMinMax` with Algorithm 2's term in every step's loss.

    Args: those of :class:`MaskSqueezeTerm` and :class:`~aid.attacks.adv2_mask_minmax.ADV2MaskMinMax`.
    """

    name = "adv2_mask_minmax_adaptive"


#: The adaptive variant of each ADV² attack on MASK.
MASK_ADAPTIVE: dict[type[Attack], type[Attack]] = {
    ADV2Mask: ADV2MaskAdaptive,
    ADV2MaskUnrolled: ADV2MaskUnrolledAdaptive,
    ADV2MaskMinMax: ADV2MaskMinMaxAdaptive,
}


def adaptive_class(interpreter: Interpreter | str | None, estimate: str | None = None) -> type[Attack]:
    """The adaptive attack for an interpreter (or family name) and estimate: the adaptive variant of the ADV²
    class that :func:`~aid.attacks.adv2.adv2_class` picks (MASK), else :class:`ADV2Adaptive`."""
    return MASK_ADAPTIVE.get(adv2_class(interpreter, estimate), ADV2Adaptive)
