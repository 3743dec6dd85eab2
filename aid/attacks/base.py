"""Attack interface (torchattacks-style, targeted) and its result type."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from aid.models import Classifier, check_images
from aid.registry import Registry, accepted_arguments, check_arguments


def check_pixel_value(name: str, value: float) -> float:
    """``value`` as a float if it lies in (0, 1] (a budget or step in pixel units of [0, 1] images), else a
    ValueError naming ``name``, with the /255 reading of a value above 1 (``8`` -> ``8/255 = 0.031``)."""
    try:
        v = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}") from err
    if not 0 < v <= 1:
        hint = f" (pixel values are in [0, 1]: {v:g}/255 = {v / 255:.3f})" if v > 1 else ""
        raise ValueError(f"{name} must lie in (0, 1], got {value!r}{hint}")
    return v


@dataclass
class AttackResult:
    """What every attack returns (all batched, on the input's device).

    Attributes:
        x_adv: adversarial images (B, C, H, W) in [0, 1].
        success: (B,) bool, the classifier predicts the target class on ``x_adv``.
        confidence: (B,) float, the classifier's softmax probability of the target class.
        iterations: (B,) long, iterations used per sample.
        maps: optional (B, 1, H, W) interpretation of ``x_adv`` by the attacked interpreter.
    """

    x_adv: Tensor
    success: Tensor
    confidence: Tensor
    iterations: Tensor
    maps: Tensor | None = None


class Attack:
    """Base of the targeted attacks on [0, 1] inputs (normalisation inside the model).

    Subclasses implement :meth:`_run`; :meth:`__call__` validates the inputs, freezes the models for
    the duration of the attack (eval mode, ``requires_grad=False``) and restores them afterwards.

    Args:
        classifier: target classifier ``f``.
        eps: L∞ budget ε in pixel units of [0, 1] (paper: 0.031); must lie in (0, 1] (8/255, not 8).
        alpha: step size (paper: 1/255); must lie in (0, 1].
        steps: number of iterations.
        seed: seed of the attack's random numbers (random start, random choices); the same seed
            gives the same adversarial examples. A call with ``seeds`` (one per sample) draws each
            sample's random numbers from ``seed`` and its own seed, so that a sample's result does not
            depend on the rest of its batch; without, one draw serves the whole batch.
        progress: show a progress bar (off in tests and on non-zero ranks).
    """

    name: str = "attack"

    def __init__(
        self,
        classifier: Classifier,
        eps: float = 0.031,
        alpha: float = 1 / 255,
        steps: int = 100,
        seed: int | None = 0,
        progress: bool = False,
    ) -> None:
        eps, alpha = check_pixel_value("eps", eps), check_pixel_value("alpha", alpha)
        if int(steps) <= 0:
            raise ValueError(f"steps must be > 0, got {steps}")
        self.classifier = classifier
        self.eps = float(eps)
        self.alpha = float(alpha)
        self.steps = int(steps)
        self.seed = seed
        self.progress = progress
        self.sample_seeds: Tensor | None = None  # the current call's per-sample seeds, if any

    def generator(self, device: torch.device) -> torch.Generator:
        """A generator on ``device`` seeded with the attack's seed (fresh per call, so calls repeat)."""
        g = torch.Generator(device=device)
        g.manual_seed(0 if self.seed is None else int(self.seed))
        return g

    def uniform(self, x: Tensor, shape: tuple[int, ...], dtype: torch.dtype | None = None) -> Tensor:
        """Uniform noise in [0, 1) of shape (B, *shape) on x's device, in ``dtype`` (default x's).

        With the call's per-sample ``seeds``, sample i's noise comes from a CPU generator seeded with
        (``seed``, seeds[i]): the same on every device and whatever the batch. Without, one draw of
        the attack's generator for the whole batch.
        """
        dtype = x.dtype if dtype is None else dtype
        if self.sample_seeds is None:
            return torch.rand((x.shape[0], *shape), generator=self.generator(x.device), device=x.device, dtype=dtype)
        base = 0 if self.seed is None else int(self.seed)
        g = torch.Generator()
        out = []
        for s in self.sample_seeds.tolist():
            g.manual_seed((base * 2**32 + int(s)) % 2**63)
            out.append(torch.rand(shape, generator=g, dtype=dtype))
        return torch.stack(out).to(x.device) if out else x.new_empty((0, *shape), dtype=dtype)

    def check(self, x: Tensor, target: Tensor, target_map: Tensor | None = None) -> Tensor:
        """Validate inputs; return target as LongTensor (B,)."""
        check_images(x, self.classifier)
        k = self.classifier.num_classes
        try:
            t = torch.as_tensor(target, device=x.device).long()
        except (RuntimeError, OverflowError, TypeError, ValueError) as err:
            raise ValueError(f"target classes must be integers in [0, {k - 1}], got {target!r}") from err
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"target must hold one class per image ({x.shape[0]}), got {tuple(t.shape)}")
        if t.numel() and (t.min() < 0 or t.max() >= k):
            raise ValueError(f"target classes must lie in [0, {k - 1}], got {t.tolist()}")
        if target_map is not None:
            want = (x.shape[0], 1, x.shape[2], x.shape[3])
            if tuple(target_map.shape) != want:
                raise ValueError(f"target_map must have shape {want}, got {tuple(target_map.shape)}")
        return t

    def project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Project onto the ε-ball around x and the [0, 1] box."""
        return torch.min(torch.max(x_adv, x - self.eps), x + self.eps).clamp(0, 1)

    def __call__(
        self, x: Tensor, target: Tensor | int, target_map: Tensor | None = None, seeds: Tensor | None = None
    ) -> AttackResult:
        """Attack images x (B, C, H, W) towards target classes (B,) (and, for ADV², target maps).

        ``seeds`` (B,) integers, optional: per-sample seeds of the attack's random numbers (see
        ``seed``); the evaluation callbacks pass the images' dataset indices.
        """
        from aid.model_state import frozen_eval

        t = self.check(x, target, target_map)
        if seeds is not None:
            seeds = torch.as_tensor(seeds).long().flatten().cpu()
            if seeds.numel() != x.shape[0]:
                raise ValueError(f"seeds must hold one integer per image ({x.shape[0]}), got {seeds.numel()}")
        parts = [self, *(a for a in vars(self).values() if isinstance(a, Attack))]  # e.g. the warm start
        for part in parts:
            part.sample_seeds = seeds
        try:
            with frozen_eval(*self.models()), torch.enable_grad():
                return self._run(x.detach(), t, target_map)
        finally:
            for part in parts:
                part.sample_seeds = None

    def models(self) -> list[torch.nn.Module]:
        """Modules to keep frozen in eval mode during the attack (classifier, interpreter models)."""
        return [self.classifier]

    def _run(self, x: Tensor, target: Tensor, target_map: Tensor | None) -> AttackResult:
        raise NotImplementedError  # abstractmethod: each attack implements its equation

    def warm_start(self, x: Tensor, target: Tensor) -> Tensor:
        """The first iterate (B, C, H, W): the PGD warm start ``self.warm`` run from x when the attack has
        one, else a copy of x."""
        warm = getattr(self, "warm", None)
        return warm.perturb(x, target)[0] if warm is not None else x.detach().clone()

    @torch.no_grad()
    def evaluate(self, x_adv: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """(success (B,) bool, target-class confidence (B,)) of the classifier on x_adv."""
        probs = self.classifier(x_adv).float().softmax(dim=1)
        conf = probs.gather(1, target[:, None]).squeeze(1)
        return probs.argmax(dim=1) == target, conf


ATTACKS: Registry[Attack] = Registry("attack")


def attack_class(name: str, interpreter: object = None, estimate: str | None = None) -> type[Attack]:
    """The class that ``build_attack(name, classifier, interpreter=interpreter, estimate=estimate)`` instantiates.

    ``interpreter``: an interpreter, its family name (``"mask"``; a module's ``rts`` / ``rtsa`` are ``"rts"``)
    or None. ``adv2`` and ``adv2_adaptive`` dispatch on the interpreter's family and, for MASK, on
    ``estimate`` (their classmethod ``class_for``, also used by their ``__new__``: MASK ->
    :class:`~aid.attacks.adv2_mask.ADV2Mask` for ``"algorithm1"``, the default,
    :class:`~aid.attacks.adv2_mask_unrolled.ADV2MaskUnrolled` for ``"unrolled"``,
    :class:`~aid.attacks.adv2_mask_minmax.ADV2MaskMinMax` for ``"minmax"``, and their adaptive variants);
    this says which class that is without building one, so that arguments can be checked before anything
    runs. Unknown names raise the registry's ``KeyError``, an unknown estimate a ``ValueError``.
    """
    import aid.attacks  # noqa: F401  (fills the registry)

    cls = ATTACKS.get(name)
    class_for = getattr(cls, "class_for", None)
    return cls if class_for is None else class_for(interpreter, estimate)


def selects_estimate(name: str, cls: type) -> bool:
    """Whether ``build_attack(name, ...)`` takes ``estimate`` as the selector of ``cls`` (the class it dispatched
    to has several estimates), rather than as a constructor argument."""
    return cls is not ATTACKS.get(name) and getattr(cls, "estimates", None) is not None


def attack_arguments(name: str, interpreter: object = None, estimate: str | None = None) -> frozenset[str] | None:
    """Keyword arguments ``build_attack(name, ...)`` accepts against ``interpreter`` with ``estimate``: those of
    :func:`attack_class`'s constructor, plus ``estimate`` where it selects the class; None when unknown."""
    cls = attack_class(name, interpreter, estimate)
    names = accepted_arguments(cls)
    if names is not None and selects_estimate(name, cls):
        names = names | {"estimate"}
    return names


def build_attack(name: str, *args, **kwargs) -> Attack:
    """Instantiate the attack registered under ``name`` (pgd, adv2, stadv, adv2_stadv, adv2_adaptive, ...).

    ``args`` / ``kwargs``: the attack's constructor arguments (classifier first; ``interpreter`` second or by
    name); for ``adv2`` / ``adv2_adaptive`` against MASK, ``estimate`` selects the attack (see
    :func:`attack_class`). An unknown name raises a ``KeyError`` listing the allowed ones; a keyword argument
    that the attack which will run does not accept raises a ``ValueError`` naming it and listing the accepted
    ones; a budget outside (0, 1] (``eps=8``) a ``ValueError`` naming it.

    Example:
        >>> attack = build_attack("pgd", classifier, eps=8 / 255, steps=10)
        >>> attack = build_attack("adv2", classifier, interpreter=build_interpreter("cam", classifier))
        >>> attack = build_attack("adv2", classifier, interpreter=mask, estimate="minmax", steps=300)
    """
    interpreter = kwargs.get("interpreter", args[1] if len(args) > 1 else None)
    cls = attack_class(name, interpreter, kwargs.get("estimate"))
    given = {k: v for k, v in kwargs.items() if k != "estimate"} if selects_estimate(name, cls) else kwargs
    check_arguments(f"attack {name!r} ({cls.__name__})", cls, given)
    return ATTACKS.build(name, *args, **kwargs)
