"""A class-presence gate for the RTS masker (AID with ``presence``): is class t really shown in x?

RTS's selector asks the masker's encoder whether class t is present, and that encoder is a copy of the
target classifier, so an input that fools the classifier fools the selector in exactly the same way:
ADV² against RTS is nearly free. Dabkowski & Gal's masker must answer "absent" (an empty mask) for a
class the image does not show; the gate is a second, separately trained judge of that question on the
raw image. The masker multiplies its mask by the gate's belief that the class is present, so a map can
only be as strong as that belief. AID trains the gate (and only it, with ``train_masker=False``) with
the attack in the loop: ADV² inputs must get the answer "absent" for their target class. The attack
differentiates through the gate like through the rest of the masker, and ADV² against RTS also pushes
the gate's own logits to the target class (the RTS strategy's ``presence_weight``, with
:meth:`EncoderPresence.attack_loss`): the defence is evaluated white-box.

The gate (:class:`EncoderPresence`) is a trainable copy of the masker's encoder (the target classifier):
Dabkowski & Gal's "model confidence" input of the selector turned into a multiplier. It starts as the
classifier (fooled by ADV² exactly like it) and AID fine-tunes it adversarially, which is much faster
than learning presence from scratch.
"""


from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class EncoderPresence(nn.Module):
    """Presence from a trainable copy of a timm encoder: gate = sigmoid(k · (logit_target − max_{k'≠target} logit_k')).

    The gate is the two-way softmax between the asked class and its strongest rival, its margin scaled by
    ``sharpness`` k: near 1 when the gate model calls the class by a clear margin, 1/2 at a tie, near 0
    when another class wins. Unlike the softmax probability it does not shrink with the number of classes
    or with how the rest of the probability is spread, so on real images, where a correct classifier is
    often unsure among the other classes, RTS's benign maps pass nearly unchanged wherever the gate's
    decision is the classifier's. The sharpness makes the gate a decision more than a confidence: an
    adversarially trained gate has small logit margins on real images (one or two logits), so at k = 1 a
    gate that calls the class still passes only 70–90 % of the map, and every noisy or benign image loses
    that much; at k = 4 a margin of 0.75 logits passes 95 %. The gradient stays finite (no hard step).
    AID trains the gate at k = 1 by default (:meth:`sharpness_as`), where the sigmoid's gradient reaches
    every image the gate is unsure of, and deploys it sharper.

    Args:
        encoder: a timm classifier of normalised images (copied, never shared; made trainable).
        sharpness: k > 0, the factor of the logit margin of the deployed gate (default 1). Kept in the
            state_dict (a buffer), so a checkpoint carries the gate it is used with.

    Shapes: ``forward(z (B, C, H, W) normalised) -> logits (B, K)``; :meth:`gate` (B, 1, 1, 1).
    """

    def __init__(self, encoder: nn.Module, sharpness: float = 1.0) -> None:
        super().__init__()
        if not sharpness > 0:
            raise ValueError(f"the gate's sharpness must be > 0, got {sharpness}")
        self.model = copy.deepcopy(encoder).requires_grad_(True)
        self.register_buffer("sharpness", torch.tensor(float(sharpness)))
        self._override: float | None = None

    @contextlib.contextmanager
    def sharpness_as(self, sharpness: float) -> Iterator[None]:
        """Within the block the gate uses ``sharpness`` instead of its own (the buffer is untouched)."""
        previous, self._override = self._override, float(sharpness)
        try:
            yield
        finally:
            self._override = previous

    def forward(self, z: Tensor) -> Tensor:
        """Class logits (B, K) of normalised images z."""
        return self.model(z)

    def gate(self, logits: Tensor, target: Tensor) -> Tensor:
        """Belief (B, 1, 1, 1) in class ``target`` (B,) against its strongest rival, from the logits (B, K):
        sigmoid(sharpness · (logit_target − max_{k≠target} logit_k))."""
        k = self.sharpness.float() if self._override is None else self._override
        z = logits.float()
        index = target.long()[:, None]
        asked = z.gather(1, index)
        rival = z.scatter(1, index, float("-inf")).amax(dim=1, keepdim=True)
        return torch.sigmoid(k * (asked - rival))[:, :, None, None]

    def attack_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """What an attacker minimises to make the copy call ``target`` present: CE, (B,)."""
        return F.cross_entropy(logits.float(), target.long(), reduction="none")


def default_gate_sharpness(state: dict[str, Tensor], prefix: str = "") -> None:
    """Give a state_dict whose gate weights (``<prefix>presence.model.*``) lack a sharpness k = 1, in place.

    Checkpoints saved before the gate had a sharpness were trained and used with the plain margin (k = 1);
    ``prefix`` is where the masker's keys start (``""`` for a masker's own state_dict, ``"masker."`` for a
    module that holds it as ``masker``).
    """
    if any(k.startswith(f"{prefix}presence.model.") for k in state):
        state.setdefault(f"{prefix}presence.sharpness", torch.tensor(1.0))
