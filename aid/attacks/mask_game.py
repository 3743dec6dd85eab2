"""The min-max game behind the ``"minmax"`` estimate of ADV² against MASK (:mod:`aid.attacks.adv2_mask_minmax`).

MASK's map of x marks the cheapest deletion that removes the class: m*(x) = argmin_m p_t(φ(x; m)) +
area + TV. For MASK to show a target map whose region is R, deleting R must remove the target class t,
and every deletion elsewhere must leave it. This module holds the game's pieces: the region R
(:func:`target_region`), the inner player, MASK's own optimisation with the deletion forbidden on R
(:func:`worst_deletion_outside`), and the attacker's loss (:func:`minmax_loss`), which makes t survive
the inner player's deletions and die when R is deleted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from aid.interpreters.base import Interpreter
from aid.interpreters.mask import forbid_deletion


@dataclass(frozen=True)
class InnerPlayer:
    """How the attacker re-solves the inner player (MASK's optimisation with the deletion forbidden on R).

    Args:
        every: attack steps between two solves (default 10).
        iterations: MASK iterations of one solve (default 40).
        pool: how many of the last solutions the target class must survive (default 1).
    """

    every: int = 10
    iterations: int = 40
    pool: int = 1

    def __post_init__(self) -> None:
        for key in ("every", "iterations", "pool"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"inner {key} must be >= 1, got {getattr(self, key)}")

    @classmethod
    def of(cls, value: InnerPlayer | Mapping[str, int] | None) -> InnerPlayer:
        """An InnerPlayer from itself, a mapping of its fields (as configs give it) or None (defaults)."""
        if value is None or isinstance(value, InnerPlayer):
            return value or cls()
        unknown = set(value) - {"every", "iterations", "pool"}
        if unknown:
            raise ValueError(f"unknown inner player settings {sorted(unknown)}; expected every, iterations, pool")
        return cls(**{k: int(v) for k, v in value.items()})


def target_region(target_map: Tensor, threshold: float) -> Tensor:
    """R (B, 1, H, W) in {0, 1}: the target map's pixels above ``threshold``."""
    return (target_map > threshold).to(target_map.dtype)


def worst_deletion_outside(
    interpreter: Interpreter, x: Tensor, target: Tensor, region: Tensor, iterations: int
) -> Tensor:
    """The inner player: keep mask (B, 1, H, W) of MASK's optimisation of x for ``target`` (its loss, Adam,
    start and clamping; ``iterations`` steps) with the deletion forbidden on ``region`` (B, 1, H, W) in
    {0, 1}, so 1 on the region. No graph to x."""
    param = interpreter.optimize(x.detach(), target, iterations, kept=region.detach())
    keep = interpreter.keep_mask(param, x.shape[-2:]).to(x.dtype)
    return forbid_deletion(keep, region).detach()


def minmax_loss(
    interpreter: Interpreter,
    x: Tensor,
    target: Tensor,
    region: Tensor,
    keep_outs: list[Tensor],
    prediction_loss: Tensor,
    survive_weight: float,
    region_weight: float,
) -> Tensor:
    """The loss (B,) of one step of the min-max estimate, differentiable in x:

        ℓ_prd − survive_weight · mean_k log p_t(φ(x; keep_k)) + region_weight · p_t^T(φ(x; 1 − R)),

    ℓ_prd the attack's prediction loss of x (B,) (ADV²'s label-smoothed cross-entropy, plus the
    squeeze term in the adaptive attack), keep_k the inner player's last keep masks (B, 1, H, W)
    each, p^T the class probability at MASK's temperature (MASK's own deletion term). φ's reference
    is that of x, as MASK computes it for x.
    """
    clf = interpreter.classifier
    ref = interpreter.reference(x)
    loss = prediction_loss
    if keep_outs:
        deleted = torch.cat([interpreter.phi(x, keep, reference=ref) for keep in keep_outs])
        log_p = F.log_softmax(clf(deleted).float(), dim=1).gather(1, target.repeat(len(keep_outs))[:, None])
        loss = loss - survive_weight * log_p.view(len(keep_outs), -1).mean(dim=0)
    region_logits = clf(interpreter.phi(x, 1 - region, reference=ref)).float() / interpreter.temperature
    p_region = region_logits.softmax(dim=1).gather(1, target[:, None]).squeeze(1)
    return loss + region_weight * p_region
