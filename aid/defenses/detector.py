"""Feature-squeezing detector (Xu et al., NDSS 2018) as used in the paper's §4 Q3 (Table 4)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from aid.defenses.squeeze import Squeezer, build_squeezer
from aid.model_state import frozen_eval
from aid.models import Classifier, check_images

JOINT = "joint"


class FeatureSqueezingDetector:
    """Flag inputs whose prediction moves when the input is squeezed.

    The score of a squeezer ψ is ‖softmax(f(x)) − softmax(f(ψ(x)))‖₁ per image; the joint score is the
    largest over the squeezers. :meth:`fit` sets each threshold at the (1 − fpr) quantile of the
    scores of benign images (the authors: the 95th percentile on 500 benign images), so about a
    fraction ``fpr`` of benign inputs is flagged. Everything runs under ``no_grad`` with the
    classifier in eval mode (restored afterwards).

    Args:
        classifier: the classifier ``f`` ([0, 1] inputs, normalisation inside).
        squeezers: names (``"bit_depth_5"``, ``"median_3x3"``, ``"nlm_11_3_4"``, or registry names
            with defaults) or :class:`~aid.defenses.squeeze.Squeezer` instances.
        fpr: false-positive rate on the benign fitting set the thresholds are set for (default 0.05).

    Shapes: ``score(x)``: (B, C, H, W) -> (B,); ``scores(x)``: dict squeezer name -> (B,);
    ``detect(x)``: (B,) bool.

    Example:
        >>> det = FeatureSqueezingDetector(f, ["bit_depth_5", "median_2x2", "nlm_11_3_4"]).fit(x_benign)
        >>> rate = det.detection_rate(result.x_adv[result.success])
    """

    def __init__(
        self,
        classifier: Classifier,
        squeezers: Sequence[str | Squeezer],
        fpr: float = 0.05,
    ) -> None:
        if not 0 < fpr < 1:
            raise ValueError(f"fpr must lie in (0, 1), got {fpr}")
        if not squeezers:
            raise ValueError("give at least one squeezer")
        self.classifier = classifier
        self.squeezers = [build_squeezer(s) for s in squeezers]
        names = [s.name for s in self.squeezers]
        if len(set(names)) != len(names) or JOINT in names:
            raise ValueError(f"squeezer names must be distinct and not {JOINT!r}, got {names}")
        self.fpr = float(fpr)
        self.thresholds: dict[str, Tensor] = {}

    @property
    def names(self) -> list[str]:
        """Names of the squeezers, in order."""
        return [s.name for s in self.squeezers]

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` has set the thresholds."""
        return JOINT in self.thresholds

    @torch.no_grad()
    def scores(self, x: Tensor) -> dict[str, Tensor]:
        """Per-squeezer L1 distances (B,) between the softmax of x and of ψ(x), plus ``"joint"`` (the max)."""
        check_images(x, self.classifier)
        with frozen_eval(self.classifier):
            probs = self.classifier(x).float().softmax(dim=1)
            out = {}
            for sq in self.squeezers:
                sq_probs = self.classifier(sq(x)).float().softmax(dim=1)
                out[sq.name] = (probs - sq_probs).abs().sum(dim=1)
        out[JOINT] = torch.stack([out[n] for n in self.names]).amax(dim=0)
        return out

    def score(self, x: Tensor) -> Tensor:
        """Joint detection score (B,): the largest L1 distance over the squeezers, in [0, 2]."""
        return self.scores(x)[JOINT]

    def fit(self, x_benign: Tensor | Iterable[Tensor]) -> FeatureSqueezingDetector:
        """Set the thresholds at the (1 − fpr) quantile of benign scores (per squeezer and joint).

        ``x_benign`` is one batch (N, C, H, W) or an iterable of batches. The quantile is the
        "higher" order statistic and :meth:`detect` flags scores strictly above it, so the rate on the
        fitting set is at most ``fpr`` (equal up to ties and the 1/N granularity). Returns self.
        """
        batches = [x_benign] if isinstance(x_benign, Tensor) else list(x_benign)
        parts = [self.scores(b) for b in batches]
        q = 1.0 - self.fpr
        self.thresholds = {}
        for key in [*self.names, JOINT]:
            s = torch.cat([p[key] for p in parts])
            if s.numel() == 0:
                raise ValueError("fit needs at least one benign image")
            self.thresholds[key] = torch.quantile(s, q, interpolation="higher")
        return self

    def detect(self, x: Tensor, squeezer: str = JOINT) -> Tensor:
        """(B,) bool: the score of ``squeezer`` (default the joint score) is above its threshold."""
        if not self.fitted:
            raise RuntimeError("call fit(x_benign) before detect")
        if squeezer not in self.thresholds:
            raise KeyError(f"unknown squeezer {squeezer!r}; allowed: {', '.join(self.thresholds)}")
        s = self.scores(x)[squeezer]
        return s > self.thresholds[squeezer].to(s.device)

    def detection_rate(self, x_adv: Tensor, squeezer: str = JOINT) -> float:
        """Fraction of ``x_adv`` flagged (the callers pass successful adversarial examples only)."""
        if x_adv.shape[0] == 0:
            return float("nan")
        return self.detect(x_adv, squeezer).float().mean().item()

    def __repr__(self) -> str:
        return f"FeatureSqueezingDetector(squeezers={self.names}, fpr={self.fpr}, fitted={self.fitted})"
