"""Per-family interpretation losses ℓ_int of ADV² (§3.2–3.4), chosen by the interpreter's registry name.

Every strategy compares a differentiable map of x_adv for the target class with the target map by
the per-pixel mean squared error (the paper's ‖g(x; f) − m_t‖²₂ divided by the number of pixels, so
that λ does not depend on the image size; the paper's λ of Table 10 multiplies the plain sum, and the
authors' scripts use the mean, as we do). Strategies are looked up in ``STRATEGIES`` by the
interpreter's ``name``; a differentiable interpreter without an entry (``ig``, ``gradcam``,
``ensemble``, ...) gets the generic :class:`InterpretationLoss`. Every class here is named
``<Family>InterpretationLoss``: the attack's term, not a training loss (RTS's training loss ℓ_int of Eqn 15
is :class:`~aid.interpreters.rts_loss.RTSLoss`).
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aid.hooked import HookedEncoder
from aid.interpreters.base import Interpreter, build_interpreter
from aid.model_state import frozen_eval
from aid.models import Classifier
from aid.registry import Registry


def map_mse(maps: Tensor, target_map: Tensor, pool: int = 1) -> Tensor:
    """Per-sample mean squared error (B,) between maps (B, 1, H, W) after average pooling by ``pool``."""
    if pool > 1:
        maps = F.avg_pool2d(maps, pool, ceil_mode=True)
        target_map = F.avg_pool2d(target_map, pool, ceil_mode=True)
    return (maps.float() - target_map.float()).pow(2).flatten(1).mean(dim=1)


def unique_modules(modules: list[nn.Module | None]) -> list[nn.Module]:
    """Modules without repeats and without those inside another listed module.

    ``frozen_eval`` saves the state of each module it is given, in order, then freezes it: a module
    given twice (or inside one given earlier) would have its frozen state saved and "restored".
    """
    seen: list[nn.Module] = []
    for m in modules:
        if m is not None and all(m is not s for s in seen):
            seen.append(m)
    inner = {id(sub) for m in seen for sub in m.modules() if sub is not m}
    return [m for m in seen if id(m) not in inner]


class InterpretationLoss:
    """ℓ_int(g(x_adv; f), m_t) for any interpreter whose map is differentiable (the generic strategy).

    The map is ``interpreter.attribute(x_adv, target, create_graph=True)`` at input resolution, the
    same map that is evaluated, compared with the target map by :func:`map_mse` (optionally both
    average-pooled by ``pool``). It serves Integrated Gradients, Grad-CAM and the ensemble, and CAM
    (registered as ``"cam"``): the authors take the CAM loss at the 7×7 feature resolution; ours is
    on the bilinearly upsampled CAM, which the interpreter min-max normalises per image after the
    upsampling. Upsampling is linear, so both losses weigh the same feature cells; ``pool`` equal to
    the network's output stride brings the loss back to (about) the feature resolution.

    Args:
        interpreter: the attacked interpreter g (its ``differentiable`` must be True).
        pool: average-pool factor applied to both maps before the MSE (default 1).

    Shapes: ``__call__(x_adv (B, C, H, W), target (B,), target_map (B, 1, H, W)) -> (B,)``.

    Example:
        >>> loss = build_interpretation_loss(interpreter)
        >>> l_int = loss(x_adv, target, target_map)  # differentiable w.r.t. x_adv
    """

    name = "generic"
    #: ADV2's default λ for this family, chosen in the embedded setting (shapes, 32 px, the resnet10t of
    #: configs/classifier.yaml, ε 0.031, α 1/255, 50 warm + 150 steps) among 3 / 10 / 30 / 100: the lowest map
    #: distance to the benign map at an unchanged success rate.
    default_lam: float = 10.0

    def __init__(self, interpreter: Interpreter, pool: int = 1) -> None:
        if not getattr(interpreter, "differentiable", False):
            raise ValueError(
                f"interpreter {interpreter.name!r} is not differentiable with respect to its input;"
                " ADV² needs a dedicated attack for it (MASK: Algorithm 1, ADV2Mask)"
            )
        if int(pool) < 1:
            raise ValueError(f"pool must be an integer >= 1, got {pool}")
        self.interpreter = interpreter
        self.pool = int(pool)

    def maps(self, x_adv: Tensor, target: Tensor) -> Tensor:
        """The attacked maps (B, 1, H, W) of x_adv for the target classes, with their graph to x_adv."""
        return self.interpreter.attribute(x_adv, target, create_graph=True)

    def __call__(self, x_adv: Tensor, target: Tensor, target_map: Tensor) -> Tensor:
        """ℓ_int per sample (B,), differentiable with respect to x_adv."""
        return map_mse(self.maps(x_adv, target), target_map, self.pool)

    def extra_loss(self, x_adv: Tensor, target: Tensor) -> Tensor:
        """A family's additional loss term per sample (B,) (RTS: ℓ_enc); zero by default."""
        return x_adv.new_zeros(x_adv.shape[0], dtype=torch.float32)

    def losses(self, x_adv: Tensor, target: Tensor, target_map: Tensor) -> tuple[Tensor, Tensor]:
        """(ℓ_int (B,), extra loss (B,)); a family overrides it when one pass yields both."""
        return self(x_adv, target, target_map), self.extra_loss(x_adv, target)

    def logits_and_losses(
        self, x_adv: Tensor, target: Tensor, target_map: Tensor, classifier: Classifier | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(logits (B, K) of ``classifier``, ℓ_int (B,), extra loss (B,)) of x_adv, all differentiable.

        ``classifier`` is the attacked model (default: the interpreter's). By default it runs once more
        for the logits; a family whose map comes from a forward pass of that same model (CAM, GRAD,
        RTS with a copied encoder) overrides this and takes the logits from that pass.
        """
        classifier = self.interpreter.classifier if classifier is None else classifier
        return classifier(x_adv), *self.losses(x_adv, target, target_map)

    def shares_classifier(self, classifier: Classifier | None) -> bool:
        """Whether the attacked model is the interpreter's own classifier (a shared pass is then exact)."""
        return classifier is None or classifier is self.interpreter.classifier

    def modules(self) -> list[nn.Module]:
        """Modules the attack keeps frozen: the interpreter's classifier and extra modules."""
        return unique_modules([self.interpreter.classifier, *self.interpreter.modules()])


STRATEGIES: Registry[InterpretationLoss] = Registry("interpretation loss")


@STRATEGIES.register("cam")
class CAMInterpretationLoss(InterpretationLoss):
    """ℓ_int against CAM (§3.3): the generic loss on the CAM, with the logits from the same pass.

    CAM is computed from the last feature map, and the classifier's logits are the pooled linear head
    on that same map, so one backbone pass (``classifier.features_and_logits``) serves ℓ_prd and ℓ_int
    (a separate classifier pass would double the cost of an ADV² step). Falls back to the generic two
    passes for an interpreter that is not :class:`~aid.interpreters.cam.CAM` (e.g. a subclass that reads
    another layer).
    """

    name = "cam"

    def logits_and_losses(
        self, x_adv: Tensor, target: Tensor, target_map: Tensor, classifier: Classifier | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        from aid.interpreters.cam import CAM

        if type(self.interpreter) is not CAM or not self.shares_classifier(classifier):
            return super().logits_and_losses(x_adv, target, target_map, classifier)
        feats, logits = self.interpreter.classifier.features_and_logits(x_adv)
        maps = self.interpreter.from_features(feats, target, x_adv.shape[-2:])
        return logits, map_mse(maps, target_map, self.pool), self.extra_loss(x_adv, target)


@STRATEGIES.register("grad")
class GradInterpretationLoss(InterpretationLoss):
    """ℓ_int against GRAD (§3.2): the map of x_adv is taken with the smooth ReLU backward h(z).

    With ReLU the gradient map is piecewise constant in x, so its loss has zero gradient; a second GRAD
    interpreter with ``smooth=True`` (same class score, τ of h(z)) gives the map whose loss is
    differentiated. One pass gives both terms: the smooth pass's forward is the ReLU network's, so its
    logits are the classifier's, and ℓ_prd's backward then also goes through h(z) (the authors' scripts
    run a separate ordinary pass for ℓ_prd; h(z) equals ReLU's step except within ~sqrt(τ) of 0, and
    the shared pass saves a forward and a backward per step). The target map comes from the ordinary
    (evaluation) interpreter, and the smooth copy takes its settings, its map pooling
    (:class:`~aid.interpreters.grad.Grad` ``pool``, the authors' 4) and ``fused`` included. ``pool``
    here pools both maps once more, for the loss only (default 1).

    Args:
        interpreter: the (evaluation) GRAD interpreter.
        pool: average-pool factor of both maps before the MSE (default 1; the interpreter's own
            ``pool`` already gives the authors' 56×56 GRAD map at 224 px).
        tau: τ of h(z) (default: the interpreter's, 1e-4).
        surrogate: ``"h"`` (the paper's, default) or ``"softplus"`` (Dombrowski et al.).
        beta: β of the softplus surrogate (default: the interpreter's).
    """

    name = "grad"
    #: Chosen as :attr:`InterpretationLoss.default_lam`, on GRAD's per-pixel map.
    default_lam = 30.0

    def __init__(
        self,
        interpreter: Interpreter,
        pool: int = 1,
        tau: float | None = None,
        surrogate: str = "h",
        beta: float | None = None,
    ) -> None:
        super().__init__(interpreter, pool)
        self.smooth = build_interpreter(
            "grad",
            interpreter.classifier,
            score=getattr(interpreter, "score", "logit"),
            smooth=True,
            surrogate=surrogate,
            tau=getattr(interpreter, "tau", 1e-4) if tau is None else tau,
            beta=getattr(interpreter, "beta", 10.0) if beta is None else beta,
            pool=getattr(interpreter, "pool", 1),
            fused=getattr(interpreter, "fused", False),
        )

    def maps(self, x_adv: Tensor, target: Tensor) -> Tensor:
        return self.smooth.attribute(x_adv, target, create_graph=True)

    def logits_and_losses(
        self, x_adv: Tensor, target: Tensor, target_map: Tensor, classifier: Classifier | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        # The smooth pass's forward is the ReLU network's own, so its logits are exactly the
        # classifier's: ℓ_prd reuses them instead of a second forward and backward. Only the backward
        # of ℓ_prd changes (h(z) for the step r(z), which differ for pre-activations within ~sqrt(τ)
        # of 0). With the softplus surrogate the forward differs, so the classifier runs separately.
        if self.smooth.surrogate != "h" or not self.shares_classifier(classifier):
            return super().logits_and_losses(x_adv, target, target_map, classifier)
        logits, maps = self.smooth.logits_and_map(x_adv, target, create_graph=True)
        return logits, map_mse(maps, target_map, self.pool), self.extra_loss(x_adv, target)


@STRATEGIES.register("rts")
class RTSInterpretationLoss(InterpretationLoss):
    """ℓ_int against RTS (§3.4): MSE(mask, m_t), plus ℓ_enc = CE(encoder logits, c_t) as the extra term.

    The attack-side term (registered as ``"rts"``); the masker's training loss is
    :class:`~aid.interpreters.rts_loss.RTSLoss`.

    The masking model's encoder decides much of the mask, so the attack also pushes the encoder's own
    classification head towards the target class (§3.6; weight λ_enc = 0.1 in the authors' scripts,
    applied by :class:`~aid.attacks.adv2.ADV2`). One pass of the masker gives both the mask and the
    encoder logits.

    A masker with a class-presence gate (RTSA trained with AID's ``presence``) has a second judge of the
    class: the attack then also pushes the gate's own classification towards the target class
    (``presence_weight`` × its :meth:`attack_loss`, inside the extra term), the same white-box move
    as ℓ_enc; without it the gate would only be reached through the mask's MSE.

    Args:
        interpreter: an RTS interpreter (``.masker(x, target) -> (mask, encoder_logits)``).
        pool: average-pool factor of both maps before the MSE (default 1).
        presence_weight: weight of the presence gate's attack loss relative to ℓ_enc (default 1).
    """

    name = "rts"
    #: Chosen as :attr:`InterpretationLoss.default_lam`, against a masker with an untrained decoder (the
    #: classifier's backbone as encoder); a trained masker may want another λ.
    default_lam = 30.0

    def __init__(self, interpreter: Interpreter, pool: int = 1, presence_weight: float = 1.0) -> None:
        super().__init__(interpreter, pool)
        if not presence_weight >= 0:
            raise ValueError(f"presence_weight must be >= 0, got {presence_weight}")
        self.presence_weight = float(presence_weight)

    def extra_loss(self, x_adv: Tensor, target: Tensor) -> Tensor:
        # The encoder and the gate alone: the decoder's mask is not needed for this term.
        masker = self.interpreter.masker
        with frozen_eval(*self.interpreter.modules()):
            logits = masker.encoder_logits(x_adv)
            presence = None if masker.presence is None else masker.presence(masker.normalize(x_adv))
        return self._extra(logits, presence, target)

    def _extra(self, logits: Tensor, presence: Tensor | None, target: Tensor) -> Tensor:
        extra = F.cross_entropy(logits.float(), target, reduction="none")
        if presence is not None and self.presence_weight > 0:
            extra = extra + self.presence_weight * self.interpreter.masker.presence.attack_loss(presence, target)
        return extra

    def _mask_logits_extra(self, x_adv: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # Eval mode and frozen weights as in ``attribute`` (an attack has frozen them already).
        with frozen_eval(*self.interpreter.modules()):
            mask, logits, presence = self.interpreter.masker.forward_all(x_adv, target)
        if mask.shape[-2:] != x_adv.shape[-2:]:
            mask = F.interpolate(mask, size=x_adv.shape[-2:], mode="bilinear", align_corners=False)
        return mask, logits, self._extra(logits, presence, target)

    def losses(self, x_adv: Tensor, target: Tensor, target_map: Tensor) -> tuple[Tensor, Tensor]:
        mask, _, extra = self._mask_logits_extra(x_adv, target)
        return map_mse(mask, target_map, self.pool), extra

    def logits_and_losses(
        self, x_adv: Tensor, target: Tensor, target_map: Tensor, classifier: Classifier | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        # RTS's encoder is by default an exact (frozen) copy of the classifier's backbone: its logits are
        # then the classifier's, and one masker pass serves ℓ_prd, ℓ_int and ℓ_enc. A trained or
        # different encoder (one that was trained, a timm encoder) gets the separate classifier pass.
        if not self.shares_classifier(classifier) or not encoder_is_classifier(
            self.interpreter.masker, self.interpreter.classifier
        ):
            return super().logits_and_losses(x_adv, target, target_map, classifier)
        mask, logits, extra = self._mask_logits_extra(x_adv, target)
        return logits, map_mse(mask, target_map, self.pool), extra


_SAME_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def encoder_is_classifier(masker: nn.Module, classifier: Classifier) -> bool:
    """Whether an RTS masker's encoder computes exactly the classifier (same class, weights, buffers and
    input normalisation), so that its logits are the classifier's.

    A :class:`~aid.hooked.HookedEncoder` (the encoder copied from a :class:`~aid.models.WrappedClassifier`)
    is compared through the network it wraps, whose output is the encoder's logits. The answer is cached
    per masker with weak references to both models' tensors, their in-place versions, storages, dtypes
    and devices: an optimiser step, a replaced tensor or a cast invalidates it, and a repeated call walks
    the tensors instead of comparing their values.
    """
    enc, backbone = getattr(masker, "encoder", None), getattr(classifier, "backbone", None)
    if isinstance(enc, HookedEncoder):  # a wrapped classifier's copy, seen through hooks: compare the network
        enc = enc.model
    if enc is None or backbone is None or type(enc) is not type(backbone):
        return False
    a = [*enc.state_dict(keep_vars=True).items(), ("mean", masker.mean), ("std", masker.std)]
    b = [*backbone.state_dict(keep_vars=True).items(), ("mean", classifier.mean), ("std", classifier.std)]
    if len(a) != len(b):
        return False
    tensors = [t for _, t in a + b]
    # ``.data =`` (device / dtype casts) swaps the storage without a version bump: key on it too.
    versions = [(t._version, t.data_ptr(), t.dtype, t.device) for t in tensors]
    cached = _SAME_CACHE.get(masker)
    if cached is not None:
        refs, old_versions, answer = cached
        if old_versions == versions and all(r() is t for r, t in zip(refs, tensors, strict=True)):
            return answer
    answer = all(
        ka == kb and ta.shape == tb.shape and torch.equal(ta.detach(), tb.detach().to(ta.device))
        for (ka, ta), (kb, tb) in zip(a, b, strict=True)
    )
    _SAME_CACHE[masker] = ([weakref.ref(t) for t in tensors], versions, answer)
    return answer


def build_interpretation_loss(interpreter: Interpreter, **kwargs) -> InterpretationLoss:
    """The ℓ_int strategy registered under ``interpreter.name``, the generic one otherwise.

    ``kwargs`` go to the strategy's constructor (e.g. ``tau=1e-4`` for GRAD, ``presence_weight=10`` for
    RTS; GRAD's map pooling belongs to the interpreter, :class:`~aid.interpreters.grad.Grad` ``pool``).
    """
    name = getattr(interpreter, "name", "")
    cls = STRATEGIES.get(name) if name in STRATEGIES else InterpretationLoss
    return cls(interpreter, **kwargs)
