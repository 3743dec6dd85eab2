"""Ensemble interpretation (the paper's §5, Defence 1): a weighted mean of complementary interpreters."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from aid.interpreters.base import INTERPRETERS, Interpreter, build_interpreter, minmax_normalize
from aid.models import Classifier


@INTERPRETERS.register("ensemble")
class Ensemble(Interpreter):
    """m = minmax(Σ_i w_i g_i(x, t) / Σ_i w_i) over member interpreters g_i (Defence 1).

    Different interpreters look at different aspects of the model (CAM at deep representations,
    GRAD and MASK at the input-prediction relation), so an attack has to fool all of them at once.
    Each member returns a [0, 1] map at input resolution; the weighted mean is min-max normalised
    again per image. The ensemble is differentiable when every member is; an adaptive ADV² then
    attacks all members through one map.

    Args:
        classifier: target classifier ``f``.
        members: interpreter names (built on ``classifier``) or ready :class:`Interpreter` objects
            (default ``("grad", "cam")``).
        weights: non-negative weight per member, not all zero (default: equal weights).
        member_kwargs: constructor arguments per member name, e.g. ``{"grad": {"smooth": True}}``.

    Shapes: x (B, C, H, W) in [0, 1], target (B,) -> maps (B, 1, H, W) in [0, 1].

    Example::

        ens = Ensemble(classifier, members=["grad", "cam"], weights=[1.0, 2.0])
        maps = ens(x, target)
    """

    name = "ensemble"

    def __init__(
        self,
        classifier: Classifier,
        members: Sequence[str | Interpreter] = ("grad", "cam"),
        weights: Sequence[float] | None = None,
        member_kwargs: dict[str, dict] | None = None,
    ) -> None:
        super().__init__(classifier)
        if len(members) == 0:
            raise ValueError("an ensemble needs at least one member interpreter")
        member_kwargs = dict(member_kwargs or {})
        names = [m for m in members if isinstance(m, str)]
        unknown = set(member_kwargs) - set(names)
        if unknown:
            raise ValueError(f"member_kwargs names {sorted(unknown)} that are not members {names}")
        self.members: list[Interpreter] = [
            build_interpreter(m, classifier, **member_kwargs.get(m, {})) if isinstance(m, str) else m
            for m in members
        ]
        w = [1.0] * len(self.members) if weights is None else [float(v) for v in weights]
        if len(w) != len(self.members):
            raise ValueError(f"got {len(w)} weights for {len(self.members)} members")
        if min(w) < 0 or sum(w) <= 0:
            raise ValueError(f"weights must be non-negative and not all zero, got {w}")
        self.weights = [v / sum(w) for v in w]

    @property
    def differentiable(self) -> bool:  # type: ignore[override]
        """True when every member's map is differentiable with respect to x."""
        return all(m.differentiable for m in self.members)

    def modules(self) -> list[nn.Module]:
        """The members' extra modules (each member also freezes its own during its call)."""
        return [mod for m in self.members for mod in m.modules()]

    def _attribute(self, x: Tensor, target: Tensor, create_graph: bool) -> Tensor:
        maps = [m.attribute(x, target, create_graph=create_graph) for m in self.members]
        mixed = torch.stack([w * m.to(x.dtype) for w, m in zip(self.weights, maps, strict=True)]).sum(0)
        return minmax_normalize(mixed)

    def to(self, device: torch.device | str) -> Ensemble:
        """Move every member (trainable members own modules)."""
        self.members = [m.to(device) for m in self.members]
        return self
