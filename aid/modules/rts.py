"""LightningModule that trains the RTS masking model against a frozen classifier (paper Eqn 15)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from aid.interpreters import Interpreter
from aid.interpreters.rts import RTSInterpreter, RTSMasker
from aid.interpreters.rts_loss import RTSLoss
from aid.modules.target_classifier import TargetClassifierModule


class RTSModule(TargetClassifierModule):
    """Train an RTS masker ``g(x, c)`` with the interpretation loss ℓ_int (Eqn 15).

    The classifier comes from a ``ClassifierModule`` checkpoint, a timm architecture or a module object
    (:class:`~aid.modules.target_classifier.TargetClassifierModule`) and stays frozen and in eval mode (its
    batch-norm statistics never move, and DDP never reduces its gradients).

    Args:
        classifier_ckpt, **classifier_args (arch, pretrained, num_classes, in_chans, output_stride, channels,
            classifier; by keyword): the target classifier, see
            :class:`~aid.modules.target_classifier.TargetClassifierModule` (a configs' prerequisite provides
            the checkpoint).
        freeze_encoder: keep the masker's encoder (a copy of the classifier's backbone) fixed.
        mask_scale: the mask is predicted at 1/mask_scale of the input side.
        lr, weight_decay: AdamW settings.
        area_weight (λ2), area_power, tv_weight (λ1), preserve_weight, destroy_weight (λ3),
        destroy_power (λ4), preserver, destroyer: the terms of ℓ_int (see ``RTSLoss``).
        seed: seed of the blend operator's random references (and of the fake labels).
        lr_schedule: ``"constant"`` (default) or ``"cosine"``: cosine decay from ``lr`` to 0 over the
            run's training batches (:meth:`scheduled_batches`; AID steps its optimiser twice on a batch
            with ADV² but the schedule once), so the last weights are not those of a full-size step.
        fake_label_prob: share of images whose class is replaced by a random other class that the image
            does not show, with only the area and smoothness terms for them (Dabkowski & Gal's fake
            labels): the masker learns to answer "absent" (an empty mask) when its selector asks for
            a class the encoder does not see (default 0).

    Logs ``train/loss`` (and its terms ``train/area`` ...) and ``val/loss``.
    """

    def __init__(
        self,
        classifier_ckpt: str | None = None,
        freeze_encoder: bool = True,
        mask_scale: int = 2,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        area_weight: float = 8.0,
        area_power: float = 0.3,
        tv_weight: float = 0.005,
        preserve_weight: float = 0.3,
        destroy_weight: float = 1.0,
        destroy_power: float = 1.0,
        preserver: Literal["hinge", "nll"] = "hinge",
        destroyer: Literal["hinge", "prob"] = "hinge",
        seed: int = 0,
        fake_label_prob: float = 0.0,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        **classifier_args: Any,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"model.lr must be > 0, got {lr}")
        if lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"model.lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
        if not 0 <= fake_label_prob < 1:
            raise ValueError(f"model.fake_label_prob must lie in [0, 1), got {fake_label_prob}")
        super().__init__(classifier_ckpt, **classifier_args)
        self.masker = RTSMasker.from_classifier(
            self.classifier, freeze_encoder=freeze_encoder, mask_scale=mask_scale
        )
        self.rts_loss = RTSLoss(
            area_weight=area_weight,
            area_power=area_power,
            tv_weight=tv_weight,
            preserve_weight=preserve_weight,
            destroy_weight=destroy_weight,
            destroy_power=destroy_power,
            preserver=preserver,
            destroyer=destroyer,
        )
        self._gen: torch.Generator | None = None

    def train(self, mode: bool = True) -> RTSModule:
        """Train/eval mode for the masker; the classifier always stays in eval mode."""
        super().train(mode)
        self.classifier.eval()
        return self

    def interpreters(self) -> dict[str, Interpreter]:
        """The module's own interpreters for the evaluation callbacks: ``{"rts": current masker}``."""
        return {"rts": RTSInterpreter(self.classifier, masker=self.masker)}

    def generator(self) -> torch.Generator:
        """The blend operator's generator, seeded from (seed, global step, rank): a resumed run repeats an
        uninterrupted one, and every rank draws its own references."""
        if self._gen is None or self._gen.device != self.device:
            self._gen = torch.Generator(device=self.device)
        step = self.global_step if self._trainer is not None else 0
        rank = self.global_rank if self._trainer is not None else 0
        self._gen.manual_seed(int(self.hparams.seed) * 1_000_003 + step * 1024 + rank)
        return self._gen

    def interpretation_loss(self, x: Tensor, y: Tensor, fake_labels: bool = False) -> dict[str, Tensor]:
        """ℓ_int (Eqn 15) of the masker on images x (B, C, H, W) and classes y (B,); dict of terms.

        With ``fake_labels`` (training), ``fake_label_prob`` of the classes are replaced by random other
        classes, drawn from the step-seeded generator, and treated as absent.
        """
        return self.masker_loss(x, y, fake_labels)[0]

    def masker_loss(
        self, x: Tensor, y: Tensor, fake_labels: bool = False
    ) -> tuple[dict[str, Tensor], Tensor, Tensor | None]:
        """(ℓ_int terms, masks (B, 1, h, w) at the decoder's resolution, ``real`` (B,) bool or None):
        :meth:`interpretation_loss` with the masks and which classes were kept (None: all)."""
        gen = self.generator()
        real = None
        p = float(self.hparams.get("fake_label_prob", 0.0))
        if fake_labels and p > 0:
            k = self.classifier.num_classes
            real = torch.rand(y.shape, generator=gen, device=y.device) >= p
            other = (y + torch.randint(1, k, y.shape, generator=gen, device=y.device)) % k
            y = torch.where(real, y, other)
        mask, _ = self.masker(x, y, upsample=False)
        return self.rts_loss(self.classifier, x, y, mask, generator=gen, real=real), mask, real

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x, y = batch[0], batch[1]
        terms = self.interpretation_loss(x, y, fake_labels=True)
        self.log_dict({f"train/{k}": v for k, v in terms.items() if k != "loss"})
        self.log("train/loss", terms["loss"], prog_bar=True)
        return terms["loss"]

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        terms = self.interpretation_loss(x, y)
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, sync_dist=True)

    def test_step(self, batch, batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        terms = self.interpretation_loss(x, y)
        self.log_dict({f"test/{k}": v for k, v in terms.items()}, sync_dist=True)

    def param_groups(self) -> list[dict]:
        """Optimiser parameter groups (``lr`` where a group's differs from the module's): the masker's
        trainable parameters."""
        return [{"params": [p for p in self.masker.parameters() if p.requires_grad]}]

    def scheduled_batches(self) -> int:
        """Training batches of the run, the cosine schedule's length: Lightning's estimate (one
        optimiser step per batch)."""
        return int(self.trainer.estimated_stepping_batches)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.param_groups(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.get("lr_schedule", "constant") == "constant":
            return opt
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(self.scheduled_batches(), 1))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
