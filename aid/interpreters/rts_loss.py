"""The RTS training objective ℓ_int (paper Eqn 15 = Eqn 8 amortised; Dabkowski & Gal 2017).

    ℓ_int = λ_tv·TV(m) + λ_ar·mean((m + 5e-4)^p) + λ_p·preserve(f, φ(x; m)) + λ_d·destroy(f, φ(x; 1 − m))^λ4

- preserve: the kept region alone must still give class c. ``"hinge"`` (default, the authors' code):
  max(0, max_{j≠c} z_j − z_c + κ_p) on the logits z, κ_p = 1; ``"nll"`` (the paper's Eqn 15):
  −log f_c(φ(x; m)).
- destroy: removing the kept region must lose class c. ``"hinge"`` (default, the authors' code):
  max(0, z_c − max_{j≠c} z_j + κ_d), κ_d = 5; ``"prob"`` (the paper's Eqn 15): f_c(φ(x; 1 − m)).
- TV(m): Dabkowski & Gal's smoothness, per image Σ|Δm|^2 over neighbours plus 0.3·Σ m^2 on the border,
  divided by 2 (a sum, so it stays about the same when the mask resolution changes).
- φ: :class:`~aid.interpreters.blend.Blend` with the ``mixed`` reference: per image a strong blur (σ 11
  with a 55×55 kernel at 224 px, scaled to the image) or Gaussian noise σ 0.11 around a random colour.

Default weights are those of the authors' code: area 8 with power 0.3, preserver 0.3, destroyer 1 with
power 1. The smoothness weight is 0.5 in Dabkowski & Gal's code and 0.005 in the ADV² authors' copy;
we keep the authors' 0.005 (0.5 gives smoother masks). The paper's forms are ``preserver="nll",
destroyer="prob"``; with them keep the preserver weight near 1 (``preserve_weight=1``): the destroyer is
then at most 1, and with preserver 0.3 the all-zero mask costs less than a mask on the object under the
area weight 8.

This is the masker's *training* loss; the attack's term against RTS is
:class:`~aid.attacks.strategies.RTSInterpretationLoss`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aid.interpreters.blend import Blend


def smoothness(mask: Tensor, power: float = 2.0, border_penalty: float = 0.3) -> Tensor:
    """Dabkowski & Gal's total variation of masks (B, 1, h, w) per image (B,): (Σ|Δm|^p + border) / p."""
    dy = (mask[:, :, 1:, :] - mask[:, :, :-1, :]).abs().pow(power).flatten(1).sum(1)
    dx = (mask[:, :, :, 1:] - mask[:, :, :, :-1]).abs().pow(power).flatten(1).sum(1)
    tv = dy + dx
    if border_penalty > 0:
        edges = (
            torch.cat([mask[:, :, 0, :], mask[:, :, -1, :], mask[:, :, :, 0], mask[:, :, :, -1]], dim=-1)
            .pow(power)
            .flatten(1)
            .sum(1)
        )
        tv = tv + border_penalty * edges
    return tv / power


def area(mask: Tensor, power: float = 0.3) -> Tensor:
    """Mean of (m + 5e-4)^power per image (B,); the offset keeps the gradient finite at m = 0."""
    m = mask.flatten(1)
    return (m + 5e-4).pow(power).mean(1) if power != 1 else m.mean(1)


def margin(logits: Tensor, target: Tensor) -> Tensor:
    """z_c − max_{j≠c} z_j per image (B,) for logits (B, K) and classes target (B,)."""
    z = logits.float()
    this = z.gather(1, target[:, None]).squeeze(1)
    other = z.masked_fill(F.one_hot(target, z.shape[1]).bool(), float("-inf")).amax(1)
    return this - other


class RTSLoss(nn.Module):
    """ℓ_int of Eqn 15 for masks of an RTS masker, per term and weighted: the masker's training loss.

    Not the attack's ℓ_int against RTS (:class:`~aid.attacks.strategies.RTSInterpretationLoss`).

    Args:
        area_weight: λ_ar (default 8).
        area_power: power of the area term (default 0.3).
        tv_weight: λ_tv on :func:`smoothness` (default 0.005).
        preserve_weight: λ_p (default 0.3).
        destroy_weight: λ_d (default 1).
        destroy_power: λ4 on the destroyer term (default 1).
        preserver: ``hinge`` (default) or ``nll``.
        destroyer: ``hinge`` (default) or ``prob``.
        preserve_confidence: κ_p of the preserver hinge (default 1).
        destroy_confidence: κ_d of the destroyer hinge (default 5).
        perturbation: reference of φ: ``mixed`` (default), ``blur``, ``noise``, ``color``, ``grey``.
        blur_sigma: σ of the blur reference in pixels; ``None`` scales 11 px at 224 px (floor 1 px).
        noise_std, color_range, blur_prob: of the random reference (see :mod:`blend`).
        reduction: ``mean`` (default) over the batch or ``none`` for per-image losses (B,).

    ``forward(classifier, x, target, mask, generator=None, real=None)``: x (B, C, H, W) in [0, 1], target
    (B,) long, mask (B, 1, h, w) in [0, 1] (upsampled bilinearly for φ when h×w ≠ H×W) -> dict with
    ``loss`` (weighted total, differentiable) and the detached terms ``tv``, ``area``, ``preserve``,
    ``destroy``. The caller freezes the classifier; ``generator`` drives the random references.
    ``real`` (B,) bool marks the images whose target class is present; for the others (Dabkowski &
    Gal's *fake labels*: a class the image does not show) the preserver and destroyer are dropped, so
    the area and smoothness terms drive the mask to empty. Default: every class is real.

    Example:
        >>> criterion = RTSLoss()
        >>> out = criterion(classifier, x, y, masker(x, y)[0]); out["loss"].backward()
    """

    def __init__(
        self,
        area_weight: float = 8.0,
        area_power: float = 0.3,
        tv_weight: float = 0.005,
        preserve_weight: float = 0.3,
        destroy_weight: float = 1.0,
        destroy_power: float = 1.0,
        preserver: str = "hinge",
        destroyer: str = "hinge",
        preserve_confidence: float = 1.0,
        destroy_confidence: float = 5.0,
        perturbation: str = "mixed",
        blur_sigma: float | None = None,
        noise_std: float = 0.11,
        color_range: float = 0.66,
        blur_prob: float = 0.5,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if preserver not in ("hinge", "nll"):
            raise ValueError(f"preserver must be 'hinge' or 'nll', got {preserver!r}")
        if destroyer not in ("hinge", "prob"):
            raise ValueError(f"destroyer must be 'hinge' or 'prob', got {destroyer!r}")
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        self.area_weight = float(area_weight)
        self.area_power = float(area_power)
        self.tv_weight = float(tv_weight)
        self.preserve_weight = float(preserve_weight)
        self.destroy_weight = float(destroy_weight)
        self.destroy_power = float(destroy_power)
        self.preserver = preserver
        self.destroyer = destroyer
        self.preserve_confidence = float(preserve_confidence)
        self.destroy_confidence = float(destroy_confidence)
        self.reduction = reduction
        self.phi = Blend(
            perturbation,
            blur_sigma=blur_sigma,
            blur_sigma_224=11.0,
            min_sigma=1.0,
            noise_std=noise_std,
            color_range=color_range,
            blur_prob=blur_prob,
        )

    def preserve_term(self, logits: Tensor, target: Tensor) -> Tensor:
        """Per-image preserver loss (B,) on the logits of φ(x; m)."""
        if self.preserver == "nll":
            return F.cross_entropy(logits.float(), target, reduction="none")
        return F.relu(self.preserve_confidence - margin(logits, target))

    def destroy_term(self, logits: Tensor, target: Tensor) -> Tensor:
        """Per-image destroyer loss (B,) on the logits of φ(x; 1 − m), before the power λ4."""
        if self.destroyer == "prob":
            return logits.float().softmax(1).gather(1, target[:, None]).squeeze(1)
        return F.relu(margin(logits, target) + self.destroy_confidence)

    def forward(
        self,
        classifier: nn.Module,
        x: Tensor,
        target: Tensor,
        mask: Tensor,
        generator: torch.Generator | None = None,
        real: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Weighted ℓ_int and its terms (see the class docstring)."""
        target = torch.as_tensor(target, device=x.device).long().expand(x.shape[0])
        mask = mask.float()
        full = mask
        if mask.shape[-2:] != x.shape[-2:]:
            full = F.interpolate(mask, size=x.shape[-2:], mode="bilinear", align_corners=False)
        with torch.no_grad():
            ref = self.phi.reference(x, generator)
        full = full.to(x.dtype)
        keep = self.phi(x, full, reference=ref)
        drop = self.phi(x, 1 - full, reference=ref)
        logits = classifier(torch.cat([keep, drop]))
        preserve = self.preserve_term(logits[: x.shape[0]], target)
        destroy = self.destroy_term(logits[x.shape[0] :], target)
        if self.destroy_power != 1:
            destroy = destroy.clamp_min(1e-8).pow(self.destroy_power)
        if real is not None:
            real = torch.as_tensor(real, device=x.device).bool().expand(x.shape[0])
            preserve, destroy = preserve * real, destroy * real
        terms = {
            "tv": smoothness(mask),
            "area": area(mask, self.area_power),
            "preserve": preserve,
            "destroy": destroy,
        }
        loss = (
            self.tv_weight * terms["tv"]
            + self.area_weight * terms["area"]
            + self.preserve_weight * terms["preserve"]
            + self.destroy_weight * terms["destroy"]
        )
        if self.reduction == "mean":
            loss = loss.mean()
            terms = {k: v.mean() for k, v in terms.items()}
        out = {"loss": loss}
        out.update({k: v.detach() for k, v in terms.items()})
        return out
