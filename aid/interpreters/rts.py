"""RTS: the real-time saliency masking model (Dabkowski & Gal 2017; paper §3.4, Eqn 8) and its interpreter.

The masker is an encoder (a timm CNN, or any CNN read by forward hooks, that returns feature maps at
several scales and its own class logits) and a U-Net decoder:

- the class selector ``Embedding(num_classes, C_bottleneck)`` gates the bottleneck features: the dot
  product of each position's feature vector with the target class's embedding goes through a sigmoid
  and multiplies the features there (Dabkowski & Gal's selector with model confidence 0);
- up-sampling blocks (3×3 conv to 4× channels, PixelShuffle ×2, plus a 1×1 projection of the
  encoder's skip feature at that scale, 3×3 conv) climb back to 1/``mask_scale`` of the input;
- a 1×1 convolution gives two channels a, b and the mask is |a| / (|a| + |b| + eps), upsampled
  bilinearly to the input.

``forward(x, target)`` returns the mask (B, 1, H, W) in [0, 1] and the encoder's logits (B, K), the
ℓ_enc term of ADV² against RTS (§3.6). The encoder is by default a copy of the target classifier's
backbone (:meth:`RTSMasker.from_classifier`; the authors used the classifier's ResNet-50), frozen.
Train the masker with :class:`aid.interpreters.rts_loss.RTSLoss` (Eqn 15).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aid.checkpoints import load_checkpoint
from aid.interpreters.base import INTERPRETERS, Interpreter
from aid.interpreters.presence import EncoderPresence, default_gate_sharpness
from aid.model_state import frozen_eval
from aid.models import IMAGENET_MEAN, IMAGENET_STD, Classifier


class UpBlock(nn.Module):
    """×2 up-sampling (conv 3×3 -> BN -> ReLU -> PixelShuffle), plus a 1×1 projection of the skip, conv 3×3.

    The skip feature is added (FPN-style) rather than concatenated: on CPU the backward pass of a 3×3
    convolution over the concatenation at the finest scale cost more than the whole encoder.

    Shapes: x (B, C_in, h, w), skip (B, C_skip, h', w') or None -> (B, C_out, h', w') (or (2h, 2w)).
    """

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.up = nn.Sequential(
            nn.Conv2d(in_ch, 4 * out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(4 * out_ch),
            nn.ReLU(inplace=True),
            nn.PixelShuffle(2),
        )
        self.skip = nn.Conv2d(skip_ch, out_ch, 1, bias=False) if skip_ch else None
        self.fuse = nn.Sequential(
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        """Up-sample x and add the projected skip feature (resized when the strides differ)."""
        h = self.up(x)
        if self.skip is not None and skip is not None:
            if h.shape[-2:] != skip.shape[-2:]:
                h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = h + self.skip(skip.to(h.dtype))
        return self.fuse(h)


def _select_levels(reductions: Sequence[int], mask_scale: int) -> tuple[int, list[int]]:
    """(bottleneck index, skip indices from coarse to fine) of an encoder's feature levels.

    The bottleneck is the deepest level; every stride finer than the bottleneck's and at least
    ``mask_scale`` contributes its deepest level as a skip (dilated networks repeat a stride).
    """
    bottleneck = len(reductions) - 1
    deepest: dict[int, int] = {}
    for i, r in enumerate(reductions):
        deepest[int(r)] = i
    top = int(reductions[bottleneck])
    skips = [deepest[r] for r in sorted(deepest, reverse=True) if mask_scale <= r < top]
    return bottleneck, skips


class RTSMasker(nn.Module):
    """Dabkowski & Gal's masking model: encoder + class selector + U-Net decoder -> mask, encoder logits.

    Args:
        encoder: a timm model name (created with ``num_classes`` and ``encoder_kwargs``), a timm model
            (anything with ``forward_intermediates``, ``forward_head`` and ``feature_info``; used as
            is), or a :class:`~aid.models.Classifier` (its :meth:`~aid.models.Classifier.copy_encoder` and
            its normalisation: a copy of a timm backbone, or of a wrapped module read by forward hooks
            at every stride up to its ``layer``, :class:`~aid.hooked.HookedEncoder`).
        num_classes: number of classes K (selector rows, encoder logits); taken from a module encoder
            when None.
        encoder_kwargs: passed to :func:`timm.create_model` when ``encoder`` is a name (e.g.
            ``pretrained``, ``output_stride``, ``channels``, ``in_chans``).
        freeze_encoder: keep the encoder's weights fixed and the encoder in eval mode (default True, as
            the authors with a pretrained encoder; gradients still flow to the input).
        mask_scale: the mask is predicted at 1/``mask_scale`` of the input side, then upsampled
            bilinearly (default 2: 16×16 for 32 px; the authors use 4, 56×56 at 224 px).
        decoder_channels: widths of the up-sampling blocks; default: half of each skip's width (or of
            the previous block's without a skip), clipped to [16, 64] — light enough that the
            decoder costs less than the encoder at 32 px.
        mean, std: normalisation of [0, 1] inputs (default: from the encoder's pretrained config, else
            ImageNet).
        eps: added to |a| + |b| so that the ratio stays finite.
        presence: add a class-presence gate whose belief that the target class is present multiplies the
            mask (:mod:`aid.interpreters.presence`, a trainable copy of the encoder; default False:
            Dabkowski & Gal's masker). AID adds one with its ``presence`` option (:meth:`add_presence`).

    Shapes: ``forward(x, target)``: x (B, C, H, W) in [0, 1], target (B,) long -> mask (B, 1, H, W) in
    [0, 1] (float32), encoder logits (B, K).

    Example:
        >>> masker = RTSMasker.from_classifier(classifier)
        >>> mask, enc_logits = masker(x, target)
    """

    def __init__(
        self,
        encoder: str | nn.Module = "resnet10t",
        num_classes: int | None = None,
        encoder_kwargs: dict | None = None,
        freeze_encoder: bool = True,
        mask_scale: int = 2,
        decoder_channels: Sequence[int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        eps: float = 1e-6,
        presence: bool = False,
    ) -> None:
        super().__init__()
        if int(mask_scale) < 1:
            raise ValueError(f"mask_scale must be >= 1, got {mask_scale}")
        if isinstance(encoder, Classifier):
            mean = encoder.mean.flatten().tolist() if mean is None else mean
            std = encoder.std.flatten().tolist() if std is None else std
            encoder = encoder.copy_encoder()  # never share (and freeze) the classifier's weights
        if isinstance(encoder, str):
            if num_classes is None:
                raise ValueError("num_classes is required when the encoder is given by name")
            encoder = timm.create_model(encoder, num_classes=int(num_classes), **(encoder_kwargs or {}))
        for attr in ("forward_intermediates", "forward_head", "feature_info"):
            if not hasattr(encoder, attr):
                raise TypeError(f"the encoder must be a timm model with {attr}; got {type(encoder).__name__}")
        if num_classes is not None and int(encoder.num_classes) != int(num_classes):
            raise ValueError(f"the encoder has {encoder.num_classes} classes, num_classes is {num_classes}")
        self.num_classes = int(num_classes if num_classes is not None else encoder.num_classes)
        cfg = getattr(encoder, "pretrained_cfg", {}) or {}
        mean = tuple(mean if mean is not None else cfg.get("mean", IMAGENET_MEAN))
        std = tuple(std if std is not None else cfg.get("std", IMAGENET_STD))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.encoder = encoder
        self.freeze_encoder = bool(freeze_encoder)
        self.mask_scale = int(mask_scale)
        self.eps = float(eps)

        info = list(encoder.feature_info)
        chans = [int(f["num_chs"]) for f in info]
        reds = [int(f["reduction"]) for f in info]
        self.bottleneck, self.skips = _select_levels(reds, self.mask_scale)
        c_b = chans[self.bottleneck]
        self.selector = nn.Embedding(self.num_classes, c_b)
        nn.init.normal_(self.selector.weight, 0.0, c_b**-0.5)

        n_extra = 0
        red = reds[self.skips[-1]] if self.skips else reds[self.bottleneck]
        while red > self.mask_scale:
            red //= 2
            n_extra += 1
        skip_chs = [chans[i] for i in self.skips] + [0] * n_extra
        if decoder_channels is None:
            widths, prev = [], c_b
            for s in skip_chs:
                prev = min(max((s if s else prev) // 2, 16), 64)
                widths.append(prev)
        else:
            widths = [int(c) for c in decoder_channels]
            if len(widths) != len(skip_chs):
                raise ValueError(f"decoder_channels needs {len(skip_chs)} widths, got {len(widths)}")
        blocks, in_ch = [], c_b
        for s, w in zip(skip_chs, widths, strict=True):
            blocks.append(UpBlock(in_ch, s, w))
            in_ch = w
        self.decoder = nn.ModuleList(blocks)
        self.to_saliency = nn.Conv2d(in_ch, 2, 1)
        # A copied backbone inherits its source's flags (a classifier may be frozen right now).
        self.encoder.requires_grad_(not self.freeze_encoder)
        if self.freeze_encoder:
            self.encoder.eval()
        self.presence: EncoderPresence | None = None
        if presence:
            self.add_presence()

    def add_presence(self, sharpness: float = 1.0) -> EncoderPresence:
        """Add (or replace) the class-presence gate, a trainable copy of the encoder
        (:class:`~aid.interpreters.presence.EncoderPresence`) with that ``sharpness``, and return it."""
        self.presence = EncoderPresence(self.encoder, sharpness).to(self.mean.device)
        return self.presence

    @classmethod
    def from_classifier(
        cls, classifier: Classifier, copy_weights: bool = True, **kwargs
    ) -> RTSMasker:
        """A masker whose encoder is a deep copy of ``classifier``'s backbone (weights and normalisation).

        A timm classifier (:class:`~aid.models.NormalizedClassifier`) gives a copy of its timm backbone; a
        wrapped module (:class:`~aid.models.WrappedClassifier`, with a ``layer``) a copy whose features at
        every stride up to ``layer`` are read by forward hooks (:class:`~aid.hooked.HookedEncoder`) and
        whose logits are the module's own. With ``copy_weights=False`` the encoder has the same
        architecture with freshly initialised weights (for training the encoder with
        ``freeze_encoder=False``).
        """
        backbone = classifier.copy_encoder()
        if not copy_weights:
            for m in backbone.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
        kwargs.setdefault("mean", classifier.mean.flatten().tolist())
        kwargs.setdefault("std", classifier.std.flatten().tolist())
        kwargs.setdefault("num_classes", classifier.num_classes)
        return cls(backbone, **kwargs)

    def train(self, mode: bool = True) -> RTSMasker:
        """Train/eval mode; a frozen encoder stays in eval mode (its batch-norm statistics are fixed)."""
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def normalize(self, x: Tensor) -> Tensor:
        """[0, 1] images x (B, C, H, W) normalised with the encoder's mean and std."""
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def encode(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Encoder logits (B, K) and feature maps (one per encoder level) of [0, 1] images x."""
        z = self.normalize(x)
        final, feats = self.encoder.forward_intermediates(z)
        return self.encoder.forward_head(final), feats

    def encoder_logits(self, x: Tensor) -> Tensor:
        """The encoder's own class logits (B, K) of [0, 1] images x (ℓ_enc of ADV² against RTS)."""
        return self.encode(x)[0]

    def forward(self, x: Tensor, target: Tensor, upsample: bool = True) -> tuple[Tensor, Tensor]:
        """(mask (B, 1, H, W) in [0, 1], encoder logits (B, K)) for [0, 1] images x and classes target (B,).

        With ``upsample=False`` the mask stays at the decoder's resolution (about H / ``mask_scale``).
        """
        mask, logits, _ = self.forward_all(x, target, upsample)
        return mask, logits

    def forward_all(
        self, x: Tensor, target: Tensor, upsample: bool = True
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """:meth:`forward` plus the presence gate's logits (B, K) (None without a gate)."""
        z = self.normalize(x)
        final, feats = self.encoder.forward_intermediates(z)
        logits = self.encoder.forward_head(final)
        h = feats[self.bottleneck]
        emb = self.selector(target.long()).to(h.dtype)[:, :, None, None]
        h = h * torch.sigmoid((h * emb).sum(dim=1, keepdim=True))
        n_skip = len(self.skips)
        for i, block in enumerate(self.decoder):
            h = block(h, feats[self.skips[i]] if i < n_skip else None)
        ab = self.to_saliency(h).float().abs()
        mask = ab[:, :1] / (ab[:, :1] + ab[:, 1:] + self.eps)
        presence = None
        if self.presence is not None:
            presence = self.presence(z)
            mask = mask * self.presence.gate(presence, target)
        if upsample and mask.shape[-2:] != x.shape[-2:]:
            mask = F.interpolate(mask, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return mask.clamp(0, 1), logits, presence


def load_masker_state(masker: RTSMasker, checkpoint: str | Path, key: str = "masker.") -> None:
    """Load weights into ``masker`` from a plain masker state_dict or a Lightning checkpoint.

    In a Lightning checkpoint (``state_dict`` entry) the masker's keys are those containing ``key``
    (``masker.`` for a module attribute named ``masker``, also nested as ``rts.masker.``); the prefix up
    to and including ``key`` is stripped. Loads with ``weights_only=True`` onto the CPU, strictly;
    the weights of a presence gate (an AID checkpoint with ``presence``) give a masker without one a gate
    first, and the gate's sharpness is the checkpoint's (1 where it has none).
    """
    state = load_checkpoint(checkpoint)  # weights only; clear errors for missing or unsafe files
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{checkpoint}: expected a state_dict, got {type(state).__name__}")
    picked = {}
    for k, v in state.items():
        if k.startswith(key):
            picked[k[len(key) :]] = v
        elif f".{key}" in k:
            picked[k.split(f".{key}", 1)[1]] = v
    if picked:
        state = picked
    if any(k.startswith("presence.model.") for k in state) and masker.presence is None:
        masker.add_presence()
    default_gate_sharpness(state)
    try:
        masker.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise RuntimeError(f"{checkpoint} does not hold weights of this RTS masker: {err}") from err


@INTERPRETERS.register("rts")
class RTSInterpreter(Interpreter):
    """RTS (Dabkowski & Gal 2017; paper §3.4): the trained masker's mask is the attribution map.

    Args:
        classifier: target classifier ``f`` (builds the default masker; the map itself does not query f).
        masker: a trained :class:`RTSMasker`; default ``RTSMasker.from_classifier(classifier,
            **masker_kwargs)``.
        checkpoint: optional path of masker weights (plain state_dict or Lightning checkpoint).
        masker_kwargs: passed to :meth:`RTSMasker.from_classifier` when no masker is given.

    Shapes: x (B, C, H, W) in [0, 1], target (B,) -> maps (B, 1, H, W) in [0, 1]. Differentiable with
    respect to x. The masker is held in eval mode with frozen weights during :meth:`attribute`; to
    train it, call the masker itself.

    Example:
        >>> rts = RTSInterpreter(classifier, checkpoint="runs/rts/last.ckpt")
        >>> maps = rts.attribute(x, target)
    """

    name = "rts"
    differentiable = True

    def __init__(
        self,
        classifier: Classifier,
        masker: RTSMasker | None = None,
        checkpoint: str | Path | None = None,
        **masker_kwargs,
    ) -> None:
        super().__init__(classifier)
        if masker is not None and masker_kwargs:
            raise ValueError(f"give a masker or masker settings, not both: {sorted(masker_kwargs)}")
        self.masker = masker if masker is not None else RTSMasker.from_classifier(classifier, **masker_kwargs)
        if self.masker.num_classes != classifier.num_classes:
            raise ValueError(
                f"the masker knows {self.masker.num_classes} classes, the classifier {classifier.num_classes}"
            )
        if checkpoint is not None:
            load_masker_state(self.masker, checkpoint)

    def modules(self) -> list[nn.Module]:
        """Modules an attack must keep frozen in eval mode (the masker)."""
        return [self.masker]

    def to(self, device: torch.device | str) -> RTSInterpreter:
        """Move the masker to ``device``."""
        self.masker.to(device)
        return self

    def encoder_logits(self, x: Tensor) -> Tensor:
        """The masker's encoder logits (B, K) for [0, 1] images x (ℓ_enc, §3.6); masker frozen."""
        with frozen_eval(self.masker):
            return self.masker.encoder_logits(x)

    def _attribute(self, x: Tensor, target: Tensor, create_graph: bool) -> Tensor:
        # Interpreter.attribute holds the masker (modules()) frozen in eval mode around this call.
        with torch.set_grad_enabled(create_graph or torch.is_grad_enabled()):
            return self.masker(x, target)[0]
