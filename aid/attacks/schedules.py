"""Small pieces shared by the iterative attacks: linear schedules, label-smoothed cross-entropy and the
per-sample best-iterate selection of the authors' ADV² scripts (§3.6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def linear_schedule(value: float | tuple[float, float] | list[float], step: int, total: int) -> float:
    """The value at ``step`` (0-based) of ``total`` steps of a linear ramp.

    ``value`` is a constant, or a pair ``(start, end)`` reached at step 0 and step ``total - 1``.
    Used for the label-smoothing ρ (0.05 → 0.01, §3.6) and, optionally, for λ (the authors' CAM
    script ramps c from 5 to 10).
    """
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"a schedule is a number or a pair (start, end), got {value!r}")
        start, end = float(value[0]), float(value[1])
        frac = step / (total - 1) if total > 1 else 1.0
        return start + (end - start) * frac
    return float(value)


def check_schedule(name: str, value: float | tuple[float, float] | list[float], low: float, high: float) -> None:
    """ValueError unless ``value`` (a number or a pair) lies in [low, high]."""
    values = list(value) if isinstance(value, (tuple, list)) else [value]
    if len(values) not in (1, 2) or not all(low <= float(v) <= high for v in values):
        raise ValueError(f"{name} must be a number or a pair (start, end) in [{low}, {high}], got {value!r}")


def smoothed_cross_entropy(logits: Tensor, target: Tensor, rho: float) -> Tensor:
    """Cross-entropy to the target class with label smoothing, per sample (B,).

    ``y_ct = 1 − ρ`` on the target class and ``ρ / (K − 1)`` on every other class (§3.6). The paper
    draws ``y_ct`` from U(1 − ρ, 1); we use the lower end, which is the authors' scripts' fixed 0.95 at
    ρ = 0.05, and needs no random numbers (so results do not depend on the batch composition).
    ``rho = 0`` is the plain cross-entropy.

    Args:
        logits: (B, K) logits.
        target: (B,) long target classes.
        rho: smoothing ρ in [0, 1).
    """
    logp = F.log_softmax(logits.float(), dim=1)
    nll = -logp.gather(1, target[:, None]).squeeze(1)
    if rho == 0:
        return nll
    k = logits.shape[1]
    others = -(logp.sum(dim=1)) - nll  # Σ_{c≠ct} −log f_c
    return (1 - rho) * nll + rho / max(k - 1, 1) * others


class BestIterate:
    """Per-sample best iterate: the lowest loss among iterates whose target confidence is ≥ κ.

    The authors keep, per sample, the iterate with the lowest interpretation loss among those whose
    target-class probability is above 0.8; samples for which no iterate qualified keep the last one
    (:meth:`result` takes it). Everything is a tensor operation over the batch (no per-image loop;
    a per-batch choice was one of the traps of their scripts).

    Args:
        x: (B, ...) the starting batch (its shape and dtype are reused).
        kappa: confidence threshold κ in [0, 1].

    Example:
        >>> best = BestIterate(x, kappa=0.8)
        >>> best.update(x_i, loss_i, conf_i, step=i); x_sel, step_sel = best.result(x_last, last_step)
    """

    def __init__(self, x: Tensor, kappa: float) -> None:
        self.kappa = float(kappa)
        self.x = x.detach().clone()
        self.loss = torch.full((x.shape[0],), float("inf"), device=x.device)
        self.step = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)

    def update(self, x: Tensor, loss: Tensor, confidence: Tensor, step: int) -> None:
        """Offer iterate ``x`` (B, ...) with per-sample ``loss`` (B,) and target ``confidence`` (B,)."""
        better = (confidence.detach() >= self.kappa) & (loss.detach().float() < self.loss)
        self.loss = torch.where(better, loss.detach().float(), self.loss)
        self.step = torch.where(better, torch.full_like(self.step, step), self.step)
        self.x = torch.where(better.view(-1, *([1] * (x.dim() - 1))), x.detach(), self.x)

    def merge(self, index: Tensor, other: BestIterate) -> None:
        """Take ``other``'s choices, made on the sub-batch ``self``'s samples ``index`` (n,), where it found one."""
        take = other.found
        rows = index[take]
        self.x[rows] = other.x[take]
        self.loss[rows] = other.loss[take]
        self.step[rows] = other.step[take]

    @property
    def found(self) -> Tensor:
        """(B,) bool: an iterate with confidence ≥ κ was seen."""
        return self.step >= 0

    def result(self, x_last: Tensor, last_step: int) -> tuple[Tensor, Tensor]:
        """(selected iterates (B, ...), their step (B,)); the last iterate where none qualified."""
        found = self.found
        x = torch.where(found.view(-1, *([1] * (x_last.dim() - 1))), self.x, x_last.detach())
        step = torch.where(found, self.step, torch.full_like(self.step, last_step))
        return x, step
