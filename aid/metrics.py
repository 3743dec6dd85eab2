"""Attack and interpretation metrics: batched functions and torchmetrics ``Metric``s built on them.

Map conventions (the metric functions own the normalisation, so every caller compares alike):

- Maps are (B, 1, H, W) or (B, H, W) float tensors. Our interpreters already return maps in [0, 1]
  (GRAD, CAM, Grad-CAM, IG min-max normalised per image; RTS and MASK masks as they are, which is how
  the authors compare them too). With ``normalize="none"`` (default) the functions only clamp maps to
  [0, 1]; ``normalize="minmax"`` re-normalises each map per image first (for raw maps from elsewhere).
- Two maps are compared at the resolution of the first: the second is resized bilinearly
  (align_corners=False) when its size differs.
- L1 and L2 distances are normalised per pixel as in the paper (§4 Q2, Table 12), so they lie in
  [0, 1]: L1 = ‖a − b‖₁ / (H·W), L2 = ‖a − b‖₂ / √(H·W).
- IoU (§4 Q2, Figure 6) needs binary maps; the paper applies threshold binarisation without giving
  the threshold. We keep each map's top ``top_fraction`` of pixels (a per-map quantile, ties
  included) among its non-zero pixels (the paper's O(m) is the set of non-zero entries). A per-map
  quantile makes maps of different scales comparable (a GRAD map with a few bright pixels and a
  smooth CAM keep the same area) and lets nearly binary RTS masks keep their support.

The ``Metric`` classes accumulate sums and counts (``dist_reduce_fx="sum"``), so they reduce across
DDP ranks with no code of ours; ``compute()`` on no data returns NaN instead of raising.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

NORMALIZATIONS = ("none", "minmax")
DISTANCES = ("l1", "l2", "iou")


def _minmax(maps: Tensor, eps: float = 1e-8) -> Tensor:
    # Same rule as aid.interpreters.minmax_normalize (metrics stay a leaf module): constant -> 0.
    flat = maps.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    out = torch.where(hi - lo > eps, (flat - lo) / (hi - lo).clamp_min(eps), torch.zeros_like(flat))
    return out.view_as(maps)


def _as_maps(m: Tensor, name: str) -> Tensor:
    if m.dim() == 3:
        m = m[:, None]
    if m.dim() != 4 or m.shape[1] != 1:
        raise ValueError(f"{name} must have shape (B, 1, H, W) or (B, H, W), got {tuple(m.shape)}")
    return m.float()


def prepare_maps(a: Tensor, b: Tensor, normalize: str = "none") -> tuple[Tensor, Tensor]:
    """Bring two batches of maps to the common convention: float (B, 1, H, W) at a's size, in [0, 1].

    Args:
        a, b: maps (B, 1, H, W) or (B, H, W); b is resized bilinearly to a's size when it differs.
        normalize: ``"none"`` (clamp to [0, 1]) or ``"minmax"`` (per-image min-max, then clamp).
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    a, b = _as_maps(a, "a"), _as_maps(b, "b")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"batch sizes differ: {a.shape[0]} and {b.shape[0]}")
    if b.shape[-2:] != a.shape[-2:]:
        b = F.interpolate(b, size=a.shape[-2:], mode="bilinear", align_corners=False)
    if normalize == "minmax":
        a, b = _minmax(a), _minmax(b)
    return a.clamp(0, 1), b.clamp(0, 1)


def map_l1(a: Tensor, b: Tensor, normalize: str = "none") -> Tensor:
    """Per-sample L1 distance per pixel, ‖a − b‖₁ / (H·W), shape (B,), in [0, 1]."""
    a, b = prepare_maps(a, b, normalize)
    return (a - b).abs().flatten(1).mean(dim=1)


def map_l2(a: Tensor, b: Tensor, normalize: str = "none") -> Tensor:
    """Per-sample L2 distance per pixel, ‖a − b‖₂ / √(H·W), shape (B,), in [0, 1]."""
    a, b = prepare_maps(a, b, normalize)
    return (a - b).pow(2).flatten(1).mean(dim=1).sqrt()


def binarize_top(maps: Tensor, top_fraction: float | Tensor = 0.25) -> Tensor:
    """Keep each map's top ``top_fraction`` of pixels: bool (B, 1, H, W).

    The threshold is the value of the ⌈k·N⌉-th largest pixel of each map (the per-map (1 − k)
    quantile); every pixel >= it is on (ties included, so a constant non-zero map is all on) and
    zero pixels are always off (a map that is zero everywhere is all off). ``top_fraction`` k is a
    float in [0, 1] or a tensor (B,) with one fraction per map.
    """
    maps = _as_maps(maps, "maps")
    n = maps[0].numel()
    if isinstance(top_fraction, Tensor):
        if top_fraction.numel() and (top_fraction.min() < 0 or top_fraction.max() > 1):
            raise ValueError("top_fraction must lie in [0, 1]")
        # The tolerance makes k = area / N give back that area despite float32 rounding.
        count = torch.ceil(top_fraction.float() * n - 1e-3).long()
    else:
        if not 0 <= top_fraction <= 1:
            raise ValueError(f"top_fraction must lie in [0, 1], got {top_fraction}")
        count = torch.full((maps.shape[0],), math.ceil(top_fraction * n - 1e-6), device=maps.device)
    return _binarize_count(maps, count)


def _binarize_count(maps: Tensor, count: Tensor) -> Tensor:
    """Per map, the ``count`` (B,) largest non-zero pixels and their ties are on."""
    flat = maps.flatten(1)
    count = count.to(flat.device).long().clamp(0, flat.shape[1]).expand(flat.shape[0])
    ordered = flat.sort(dim=1, descending=True).values
    thr = ordered.gather(1, (count - 1).clamp_min(0)[:, None])
    on = (flat >= thr) & (flat > 0) & (count[:, None] > 0)
    return on.view_as(maps)


def _iou(x: Tensor, y: Tensor) -> Tensor:
    inter = (x & y).flatten(1).sum(1).float()
    union = (x | y).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def map_iou(a: Tensor, b: Tensor, top_fraction: float = 0.25, normalize: str = "none") -> Tensor:
    """Per-sample IoU (B,) of the two maps after :func:`binarize_top` (empty union -> 1)."""
    a, b = prepare_maps(a, b, normalize)
    return _iou(binarize_top(a, top_fraction), binarize_top(b, top_fraction))


def localization(
    maps: Tensor, gt_masks: Tensor, top_fraction: float | None = None, eps: float = 1e-12
) -> tuple[Tensor, Tensor]:
    """How well maps find the object: (iou (B,), energy (B,)) against ground-truth masks.

    Args:
        maps: attribution maps (B, 1, H, W) or (B, H, W) in [0, 1] (clamped).
        gt_masks: object masks of the same layout (binarised at 0.5; resized bilinearly to the maps'
            size when it differs).
        top_fraction: fraction of pixels kept when binarising the map; None (default) = each image's
            own object area fraction, so the binary map has the object's area and IoU compares like
            with like.
        eps: guards the energy of an all-zero map, which is 0.

    iou: IoU of the binarised map with the mask (both empty -> 1). energy: share of the map's mass
    inside the object, Σ m·gt / Σ m.
    """
    m, gt = prepare_maps(maps, gt_masks)
    gt = gt > 0.5
    binary = (
        _binarize_count(m, gt.flatten(1).sum(1)) if top_fraction is None else binarize_top(m, top_fraction)
    )
    iou = _iou(binary, gt)
    energy = (m * gt).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(eps)
    return iou, energy


def _check_mask(valid_mask: Tensor | None, n: int, device: torch.device) -> Tensor:
    if valid_mask is None:
        return torch.ones(n, dtype=torch.bool, device=device)
    valid_mask = valid_mask.to(device).bool().flatten()
    if valid_mask.numel() != n:
        raise ValueError(f"valid_mask has {valid_mask.numel()} entries for a batch of {n}")
    return valid_mask


def _ratio(total: Tensor, count: Tensor) -> Tensor:
    """total / count, NaN when nothing was counted (no host sync, no division warning)."""
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, math.nan))


class _MaskedMean(Metric):
    """Sum and count of per-sample values over the samples a mask selects; compute = their ratio."""

    full_state_update = False
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def _accumulate(self, values: Tensor, valid_mask: Tensor | None = None) -> None:
        values = values.detach().flatten()
        keep = _check_mask(valid_mask, values.numel(), values.device)
        self.total += values[keep].float().sum()
        self.count += keep.sum().float()

    def compute(self) -> Tensor:
        return _ratio(self.total, self.count)


class AttackSuccessRate(_MaskedMean):
    """Attack success rate (ASR): the fraction of samples the classifier assigns to the target class.

    ``update(success)`` with success a bool (B,) tensor; ``compute()`` -> float tensor (NaN if empty).

    Example::

        asr = AttackSuccessRate()
        asr.update(result.success)
    """

    higher_is_better = True

    def update(self, success: Tensor) -> None:
        self._accumulate(success.float())


class MeanConfidence(_MaskedMean):
    """Mean target-class confidence (MC) over the successful samples only, as the authors report it.

    ``update(confidence, success=None)`` with confidence (B,) probabilities and success a bool (B,)
    mask (None = all samples count); ``compute()`` -> float tensor (NaN if no sample counted).
    """

    higher_is_better = True

    def update(self, confidence: Tensor, success: Tensor | None = None) -> None:
        self._accumulate(confidence.float(), success)


class MapDistance(_MaskedMean):
    """Mean distance between two batches of maps: ``"l1"``, ``"l2"`` (per pixel) or ``"iou"``.

    ``update(a, b, valid_mask=None)``: maps (B, 1, H, W) or (B, H, W), see :func:`map_l1`,
    :func:`map_l2`, :func:`map_iou`; with ``valid_mask`` (bool (B,), e.g. the attack's success) only
    the selected samples count, as the authors' statistics over successful samples.
    ``compute()`` -> float tensor (NaN if no sample counted). Lower is better for L1 / L2 (the
    attacker's view: the adversarial map is close to the benign one), higher for IoU.

    Args:
        kind: ``"l1"``, ``"l2"`` or ``"iou"``.
        top_fraction: fraction of pixels kept by the IoU binarisation (default 0.25).
        normalize: ``"none"`` (clamp, default) or ``"minmax"``.

    Example::

        l1 = MapDistance("l1")
        l1.update(benign_maps, adv_maps, valid_mask=result.success)
    """

    def __init__(
        self, kind: str = "l1", top_fraction: float = 0.25, normalize: str = "none", **kwargs
    ) -> None:
        super().__init__(**kwargs)
        if kind not in DISTANCES:
            raise ValueError(f"kind must be one of {DISTANCES}, got {kind!r}")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        if not 0 < top_fraction <= 1:
            raise ValueError(f"top_fraction must lie in (0, 1], got {top_fraction}")
        self.kind, self.top_fraction, self.normalize = kind, float(top_fraction), normalize

    def update(self, a: Tensor, b: Tensor, valid_mask: Tensor | None = None) -> None:
        if self.kind == "l1":
            values = map_l1(a, b, self.normalize)
        elif self.kind == "l2":
            values = map_l2(a, b, self.normalize)
        else:
            values = map_iou(a, b, self.top_fraction, self.normalize)
        self._accumulate(values, valid_mask)


class Localization(Metric):
    """Localisation of the object by the maps: mean IoU and mean energy against ground-truth masks.

    ``update(maps, gt_masks, valid_mask=None)`` (see :func:`localization`); ``compute()`` -> a dict
    ``{"iou": tensor, "energy": tensor}`` of float tensors (NaN if no sample counted), ready for
    ``log_dict`` under ``localization/<interpreter>/``.

    Args:
        top_fraction: map binarisation fraction; None (default) = each image's object area fraction.

    Example::

        loc = Localization()
        loc.update(maps, masks)
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, top_fraction: float | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.top_fraction = top_fraction
        for name in ("iou_total", "energy_total", "count"):
            self.add_state(name, default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, maps: Tensor, gt_masks: Tensor, valid_mask: Tensor | None = None) -> None:
        iou, energy = localization(maps.detach(), gt_masks, self.top_fraction)
        keep = _check_mask(valid_mask, iou.numel(), iou.device)
        self.iou_total += iou[keep].float().sum()
        self.energy_total += energy[keep].float().sum()
        self.count += keep.sum().float()

    def compute(self) -> dict[str, Tensor]:
        return {"iou": _ratio(self.iou_total, self.count), "energy": _ratio(self.energy_total, self.count)}
