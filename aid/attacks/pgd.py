"""Targeted L∞ PGD (Madry et al. 2018), the paper's baseline attack and ADV²'s warm start (Eqn 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from aid.attacks.base import ATTACKS, Attack, AttackResult
from aid.models import Classifier


def signed_step(x_adv: Tensor, x: Tensor, grad: Tensor, alpha: float, eps: float) -> Tensor:
    """One descent step of Eqn 1/4: ``Π_{B_ε(x) ∩ [0,1]}(x_adv − α·sign(grad))``, detached.

    Shapes: all (B, C, H, W); ``alpha`` and ``eps`` in pixel units of [0, 1].
    """
    x_new = x_adv.detach() - alpha * grad.sign()
    return torch.min(torch.max(x_new, x - eps), x + eps).clamp(0, 1)


@ATTACKS.register("pgd")
class PGD(Attack):
    r"""Targeted PGD under the L∞ distance (Eqn 1): ``x ← Π(x − α·sign(∇_x CE(f(x), c_t)))``.

    Distance measure: L∞, on [0, 1] images (normalisation inside the classifier). All ``steps``
    iterations run for every sample (deterministic, no early stop); the result records per sample the
    first iteration at which the classifier predicted the target class.

    Args:
        classifier: target classifier ``f`` (logits from [0, 1] images).
        eps: L∞ budget ε (default 0.031, the paper's).
        alpha: step size α (default 1/255, the paper's).
        steps: iterations (default 100; the paper compares with 1000).
        random_start: start from a uniform point of the ε-ball (default False, as the paper and the
            authors' scripts). The noise comes from the attack's seeded generator, so a call repeats,
            but it is drawn for the whole batch: with a random start, a sample's result depends on its
            position in the batch. Without it (the default) results are per-sample, so a batch of 16
            gives what two batches of 8 give.
        seed: seed of the random start.
        progress: show a tqdm progress bar.

    Shapes: x (B, C, H, W) in [0, 1]; target (B,) long or an int. Returns an
    :class:`~aid.attacks.base.AttackResult` (``maps`` is None).

    Example:
        >>> attack = PGD(classifier, eps=0.031, alpha=1 / 255, steps=100)
        >>> result = attack(images, target_classes)  # result.x_adv, result.success
    """

    name = "pgd"

    def __init__(
        self,
        classifier: Classifier,
        eps: float = 0.031,
        alpha: float = 1 / 255,
        steps: int = 100,
        random_start: bool = False,
        seed: int | None = 0,
        progress: bool = False,
    ) -> None:
        super().__init__(classifier, eps=eps, alpha=alpha, steps=steps, seed=seed, progress=progress)
        self.random_start = bool(random_start)

    def start(self, x: Tensor) -> Tensor:
        """The first iterate: x itself, or a uniform point of the ε-ball (clamped to [0, 1])."""
        if not self.random_start:
            return x.detach().clone()
        noise = self.uniform(x, tuple(x.shape[1:]))
        return (x + (2 * noise - 1) * self.eps).clamp(0, 1).detach()

    def perturb(self, x: Tensor, target: Tensor, x_adv: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Run ``steps`` PGD iterations from ``x_adv`` (default :meth:`start`) around x.

        Returns (x_adv (B, C, H, W), first (B,) long): ``first`` is the first iteration whose iterate
        the classifier put in the target class, ``steps`` if none did. Models must already be frozen
        (``__call__`` does that); ADV² calls this for its warm start.
        """
        x_adv = self.start(x) if x_adv is None else x_adv.detach()
        first = torch.full((x.shape[0],), self.steps, dtype=torch.long, device=x.device)
        for i in tqdm(range(self.steps), desc="pgd", disable=not self.progress, leave=False):
            x_adv.requires_grad_(True)
            logits = self.classifier(x_adv)
            # A sum, not a mean: each sample's gradient is then independent of the batch size.
            loss = F.cross_entropy(logits.float(), target, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_adv)
            hit = (logits.detach().argmax(dim=1) == target) & (first == self.steps)
            first = torch.where(hit, torch.full_like(first, i), first)
            x_adv = signed_step(x_adv, x, grad, self.alpha, self.eps)
        return x_adv, first

    def _run(self, x: Tensor, target: Tensor, target_map: Tensor | None) -> AttackResult:
        x_adv, first = self.perturb(x, target)
        success, confidence = self.evaluate(x_adv, target)
        return AttackResult(x_adv=x_adv, success=success, confidence=confidence, iterations=first)
