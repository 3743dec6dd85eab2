"""AID: adversarial interpretation distillation (paper §5 Defence 2, Appendix A2, Eqn 15–16).

Trains an RTS masker ("RTSA") by alternating two losses on every batch:

1. ℓ_int (Eqn 15) on the benign images, as in RTS training, with Dabkowski & Gal's fake labels
   (``fake_label_prob``: a share of the images is asked for a class it does not show, and only the area
   and smoothness terms apply, so the mask for an absent class is empty);
2. ℓ_aid (Eqn 16) = −‖g(x) − g(A(x))‖₁ / (H·W): ADV² examples A(x) made against the *current*
   masker must get maps that differ from the benign maps. The benign map is detached (ℓ_int anchors
   it), so ℓ_aid moves only the maps of adversarial inputs; ℓ_keep (``keep_weight``) holds the benign
   maps at those of the starting RTS.

Why the fake labels: ADV² asks the masker for the *target* class t on an image that still shows the
original object. A masker that learned to answer "absent" for a class it cannot see forces the attack
to draw the class-t evidence in the shape of the benign map, which is what ℓ_aid then trains the
masker to refuse.

With ``presence=True`` and ``train_masker=False`` (the main job) RTSA is RTS's frozen masker times a
class-presence gate, a trainable copy of the classifier whose belief in the asked class multiplies the
mask (:mod:`aid.interpreters.presence`); the same two steps train only the gate, and
``presence_ce_weight`` adds Madry-style adversarial training of it (A(x) must still show x's class).
RTS's selector decides "is class t here?" with a copy of the fooled classifier; the gate is a second
judge that ADV² in the loop teaches not to be fooled, and benign maps move only where it doubts the class.
The gate trains as sigmoid(margin) (``presence_train_sharpness`` 1), whose gradient reaches every image it
is unsure of, and RTSA uses it as sigmoid(k · margin) (``presence_sharpness``): with a larger k a gate that
calls the class passes nearly all of RTS's map, and one that calls another class nearly none of it.
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Any

import torch
from torch import Tensor

from aid.attacks.adv2 import ADV2
from aid.interpreters import Interpreter
from aid.interpreters.presence import default_gate_sharpness
from aid.interpreters.rts import RTSInterpreter, load_masker_state
from aid.modules.rts import RTSModule


class AIDModule(RTSModule):
    """Train RTSA: an RTS masker with ADV² in the training loop.

    Args:
        classifier_ckpt: checkpoint of the frozen target classifier (or ``arch`` ..., as :class:`RTSModule`).
        rts_ckpt: start from this trained RTS checkpoint (``None``: from scratch). Its masker is also
            kept, frozen, as the ``rts`` interpreter so evaluations compare RTS with RTSA.
        aid_weight: weight of ℓ_aid in its optimiser step (default 1).
        attack_every_n_steps: make adversarial examples on every n-th batch (others only do ℓ_int; default 1).
        attack_fraction: share of each batch that is attacked, in (0, 1] (default 0.5).
        attack_kwargs: ADV² settings against the current masker (eps, alpha, steps, warm_steps, lam, ...).
        keep_weight: weight of ℓ_keep = L1 between the benign maps of the masker and of the starting RTS
            (needs ``rts_ckpt``), added to both alternating steps (in the ℓ_int step on the images asked
            for their own class) so that benign maps stay those of RTS (default 0).
        freeze_bn: keep every batch-norm layer of the masker in eval mode (running statistics fixed) while
            training. Benign and adversarial batches go through the masker separately; with batch
            statistics each would be normalised by its own mean and variance, and the masker could learn
            to tell them apart by a difference that does not exist at inference (default True).
        presence: add a class-presence gate to the masker, a trainable copy of its encoder
            (:class:`~aid.interpreters.presence.EncoderPresence`) whose belief in the asked class
            multiplies the mask (default False).
        presence_sharpness: the deployed gate's factor k on its logit margin, belief = sigmoid(k · margin)
            (default 1; :class:`~aid.interpreters.presence.EncoderPresence`): RTSA's maps and every evaluation
            use it.
        presence_train_sharpness: the gate's k in the training steps, the in-loop attack included (default 1:
            a sigmoid that is not sharp has a gradient on every image the gate is unsure of).
        presence_ce_weight: weight of the gate's adversarial training term in the ℓ_aid step: on A(x) and on x
            the gate must call x's own class present (the mean of its two cross-entropies towards y; default 0).
        train_masker: train the masker's decoder and selector (default True). With ``presence`` and
            False, only the gate trains: RTSA's maps are RTS's maps times the gate's belief.
        other args: as :class:`RTSModule`.

    Logs ``train/loss`` (ℓ_int), ``train/aid`` (ℓ_aid), ``train/keep`` (ℓ_keep), ``train/attack_asr`` and,
    with ``presence_ce_weight``, ``train/presence_ce``.

    Example:
        >>> module = AIDModule(classifier_ckpt="classifier.ckpt", rts_ckpt="rts.ckpt", presence=True,
        ...                    train_masker=False, presence_ce_weight=0.3, keep_weight=2.0, aid_weight=3.0)
        >>> pl.Trainer(max_epochs=2, inference_mode=False).fit(module, datamodule=data)
    """

    def __init__(
        self,
        classifier_ckpt: str | None = None,
        rts_ckpt: str | None = None,
        aid_weight: float = 1.0,
        attack_every_n_steps: int = 1,
        attack_fraction: float = 0.5,
        attack_kwargs: dict[str, Any] | None = None,
        keep_weight: float = 0.0,
        freeze_bn: bool = True,
        presence: bool = False,
        presence_sharpness: float = 1.0,
        presence_train_sharpness: float = 1.0,
        presence_ce_weight: float = 0.0,
        train_masker: bool = True,
        **rts_kwargs: Any,
    ) -> None:
        super().__init__(classifier_ckpt, **rts_kwargs)
        if not 0 < attack_fraction <= 1:
            raise ValueError(f"model.attack_fraction must lie in (0, 1], got {attack_fraction}")
        if attack_every_n_steps < 1:
            raise ValueError(f"model.attack_every_n_steps must be >= 1, got {attack_every_n_steps}")
        if aid_weight < 0:
            raise ValueError(f"model.aid_weight must be >= 0, got {aid_weight}")
        sharpness = {"presence_sharpness": presence_sharpness, "presence_train_sharpness": presence_train_sharpness}
        for name, k in sharpness.items():
            if not k > 0:
                raise ValueError(f"model.{name} must be > 0, got {k}")
        if presence_ce_weight < 0:
            raise ValueError(f"model.presence_ce_weight must be >= 0, got {presence_ce_weight}")
        if not isinstance(presence, bool):
            raise ValueError(f"model.presence must be true or false, got {presence!r}")
        if not train_masker and not presence:
            raise ValueError("model.train_masker false leaves nothing to train: set model.presence true")
        self.save_hyperparameters(ignore=["classifier"])
        self._record_class_count()  # save_hyperparameters took num_classes from the arguments again
        self.automatic_optimization = False
        self.reference = None
        if rts_ckpt is not None:
            load_masker_state(self.masker, rts_ckpt)
            self.reference = copy.deepcopy(self.masker).eval().requires_grad_(False)
        if not train_masker:
            for name, module in self.masker.named_children():
                if name not in ("encoder", "presence"):
                    module.requires_grad_(False)
        if presence:
            # After the reference copy: RTS stays without one.
            self.masker.add_presence(presence_sharpness)
        self.attack_kwargs = dict(attack_kwargs or {})
        self.train()  # apply the mode rules (reference and frozen batch norm in eval mode) from the start

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A run saved before the gate had a sharpness resumes with the plain margin it was trained with.
        default_gate_sharpness(checkpoint.get("state_dict", {}), prefix="masker.")

    def on_train_start(self) -> None:
        # Lightning does not call ``train()`` when fit starts; it keeps each module's mode as it finds it.
        self.train()

    def train(self, mode: bool = True) -> AIDModule:
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()
        if self.hparams.freeze_bn:
            for m in self.masker.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def interpreters(self) -> dict[str, Interpreter]:
        """``{"rtsa": the masker being trained, "rts": the starting RTS (when rts_ckpt was given)}``."""
        out = {"rtsa": RTSInterpreter(self.classifier, masker=self.masker)}
        if self.reference is not None:
            out["rts"] = RTSInterpreter(self.classifier, masker=self.reference)
        return out

    def scheduled_batches(self) -> int:
        """Training batches of the run (one scheduler step each). Lightning's ``global_step`` and
        ``max_steps`` count optimiser steps, two on a batch with ADV² (every ``attack_every_n_steps``-th)
        and one on the others, so ``max_steps`` allows about max_steps / (1 + 1/n) batches."""
        trainer = self.trainer
        estimate = int(trainer.estimated_stepping_batches)  # also sets up the train dataloader
        if trainer.max_steps is None or trainer.max_steps < 0:
            return estimate
        by_steps = math.ceil(trainer.max_steps / (1 + 1 / self.hparams.attack_every_n_steps))
        batches, epochs = trainer.num_training_batches, trainer.max_epochs
        by_epochs = epochs * batches if epochs is not None and epochs > 0 and math.isfinite(batches) else math.inf
        return int(min(by_steps, by_epochs))

    def adversarial(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """ADV² examples against the current masker: (x_adv, target classes, success mask)."""
        k = self.classifier.num_classes
        gen = torch.Generator(device=x.device).manual_seed(int(self.hparams.seed) + self.global_step)
        target = (y + torch.randint(1, k, y.shape, generator=gen, device=x.device)) % k
        attack = ADV2(self.classifier, RTSInterpreter(self.classifier, masker=self.masker), **self.attack_kwargs)
        result = attack(x, target)
        return result.x_adv.detach(), target, result.success

    def aid_loss(self, x: Tensor, y: Tensor, x_adv: Tensor, target: Tensor) -> dict[str, Tensor]:
        """ℓ_aid (Eqn 16: minus the mean per-pixel L1 between the benign maps, detached, and the adversarial
        maps) and ℓ_keep (per-pixel L1 of the benign maps to the starting RTS; 0 without one). With a
        presence gate and ``presence_ce_weight``, ``presence`` is the gate's loss for calling x's own class
        present on A(x) and on x (the mean of its cross-entropies towards y), added with that weight."""
        benign, _, presence_benign = self.masker.forward_all(x, y)
        adv, _, presence = self.masker.forward_all(x_adv, target)
        aid = -(adv - benign.detach()).abs().flatten(1).mean(1).mean()
        out = {"aid": aid, "keep": self.keep_loss(benign, x, y)}
        if presence is not None and self.hparams.presence_ce_weight > 0:
            # On A(x) and on x alike (adversarial training on both halves): a gate trained on adversarial
            # inputs alone loses its benign accuracy, and then doubts the right class of benign images.
            ce = self.masker.presence.attack_loss
            out["presence"] = 0.5 * (ce(presence, y).mean() + ce(presence_benign, y).mean())
        return out

    def keep_loss(self, mask: Tensor, x: Tensor, y: Tensor, real: Tensor | None = None) -> Tensor:
        """ℓ_keep: mean per-pixel L1 between the masker's masks (B, 1, h, w) of x for classes y and the
        starting RTS's at the same resolution, over the images whose class is ``real`` (B,) bool (all
        when None); 0 without a reference or with ``keep_weight`` 0."""
        if self.reference is None or self.hparams.keep_weight <= 0:
            return torch.zeros((), device=x.device)
        with torch.no_grad():
            ref = self.reference(x, y, upsample=mask.shape[-2:] == x.shape[-2:])[0]
        keep = (mask - ref).abs().flatten(1).mean(1)
        if real is None:
            return keep.mean()
        return (keep * real).sum() / real.sum().clamp_min(1)  # masked mean: no host sync

    def training_step(self, batch, batch_idx: int) -> None:
        gate = self.masker.presence
        train_k = self.hparams.presence_train_sharpness
        with gate.sharpness_as(train_k) if gate is not None else contextlib.nullcontext():
            self._training_step(batch, batch_idx)

    def _training_step(self, batch, batch_idx: int) -> None:
        opt = self.optimizers()
        x, y = batch[0], batch[1]
        terms, mask, real = self.masker_loss(x, y, fake_labels=True)
        # ℓ_keep on the images asked for their own class, in this step too: benign maps are held at
        # RTS's in both alternating steps, not only where ℓ_aid pushes.
        loss = terms["loss"] + self.hparams.keep_weight * self.keep_loss(mask, x, y, real)
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        self.log("train/loss", terms["loss"], prog_bar=True)
        self.log_dict({f"train/{k}": v for k, v in terms.items() if k != "loss"})

        sched = self.lr_schedulers()
        if sched is not None:  # manual optimisation: one scheduler step per batch
            sched.step()
        if batch_idx % self.hparams.attack_every_n_steps:
            return
        n = max(1, int(round(self.hparams.attack_fraction * x.shape[0])))
        xs, ys = x[:n], y[:n]
        x_adv, target, success = self.adversarial(xs, ys)
        terms = self.aid_loss(xs, ys, x_adv, target)
        loss = self.hparams.aid_weight * terms["aid"] + self.hparams.keep_weight * terms["keep"]
        if "presence" in terms:
            loss = loss + self.hparams.presence_ce_weight * terms["presence"]
            self.log("train/presence_ce", terms["presence"])
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        self.log("train/aid", terms["aid"], prog_bar=True)
        self.log("train/keep", terms["keep"])
        self.log("train/attack_asr", success.float().mean())
