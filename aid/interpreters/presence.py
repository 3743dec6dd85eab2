"""A class-presence gate for the RTS masker (AID with ``presence``): is class t really shown in x?

RTS's selector asks the masker's encoder whether class t is present, and that encoder is a copy of the
target classifier, so an input that fools the classifier fools the selector in exactly the same way:
ADV² against RTS is nearly free. Dabkowski & Gal's masker must answer "absent" (an empty mask) for a
class the image does not show; the presence head is a second, small, separately trained judge of
that question on the raw image. The masker multiplies its mask by the head's probability that the
class is present, so a map can only be as strong as the head's belief in its class. AID trains the head
(and only it, with ``train_masker=False``) with the attack in the loop: ADV² inputs must get the answer
"absent" for their target class. The attack differentiates through the head like through the rest of
the masker, and ADV² against RTS also pushes the head's own logits to the target class (the RTS
strategy's ``presence_weight``, with :meth:`attack_loss`): the defence is evaluated white-box.

Two heads:

- :class:`PresenceHead`, a small CNN trained from scratch. It starts out saying "present" for every
  class (zero weights, bias ``init_logit``), so a masker with a fresh head gives RTS's maps scaled by
  sigmoid(init_logit).
- :class:`EncoderPresence`, a trainable copy of the masker's encoder (by default the target
  classifier): the gate is its softmax probability of the class, Dabkowski & Gal's "model confidence"
  input of the selector turned into a multiplier. It starts as the classifier (fooled by ADV² exactly
  like it) and AID fine-tunes it adversarially, which is much faster than learning presence from
  scratch; on benign inputs it starts near 1 for the predicted class and near 0 for absent classes.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PresenceHead(nn.Module):
    """Per-class presence logits (B, K) of normalised images: a 3-layer CNN, global pooling, a linear layer.

    Args:
        in_channels: image channels C.
        num_classes: K.
        width: channels of the first convolution (the others have 2× that).
        init_logit: initial bias of every class logit (the weights of the last layer start at zero).

    Shapes: ``forward(z (B, C, H, W) normalised) -> logits (B, K)``; :meth:`gate` turns them into the
    probability (B, 1, 1, 1) of the class ``target`` (B,) to multiply the masks with.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, init_logit: float = 5.0) -> None:
        super().__init__()
        if int(width) < 1:
            raise ValueError(f"presence width must be >= 1, got {width}")
        w = int(width)
        # No batch norm: benign and adversarial batches pass separately in AID, and per-batch statistics
        # would let the head tell them apart by a difference that does not exist at inference.
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
        )
        self.classify = nn.Linear(2 * w, int(num_classes))
        nn.init.zeros_(self.classify.weight)
        nn.init.constant_(self.classify.bias, float(init_logit))

    @property
    def width(self) -> int:
        """Channels of the first convolution."""
        return int(self.features[0].out_channels)

    def forward(self, z: Tensor) -> Tensor:
        """Presence logits (B, K) of normalised images z (B, C, H, W)."""
        return self.classify(self.features(z).mean(dim=(2, 3)))

    def gate(self, logits: Tensor, target: Tensor) -> Tensor:
        """Probability (B, 1, 1, 1) that class ``target`` (B,) is present, from the logits (B, K)."""
        return torch.sigmoid(logits.float().gather(1, target.long()[:, None]))[:, :, None, None]

    def attack_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """What an attacker minimises to make the head call ``target`` present: −log gate, (B,)."""
        return F.softplus(-logits.float().gather(1, target.long()[:, None]).squeeze(1))


class EncoderPresence(nn.Module):
    """Presence from a trainable copy of a timm encoder: gate = softmax(encoder(z))[target].

    Args:
        encoder: a timm classifier of normalised images (copied, never shared; made trainable).

    Shapes: ``forward(z (B, C, H, W) normalised) -> logits (B, K)``; :meth:`gate` (B, 1, 1, 1).
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(encoder).requires_grad_(True)

    def forward(self, z: Tensor) -> Tensor:
        """Class logits (B, K) of normalised images z."""
        return self.model(z)

    def gate(self, logits: Tensor, target: Tensor) -> Tensor:
        """Softmax probability (B, 1, 1, 1) of class ``target`` (B,), from the logits (B, K)."""
        return logits.float().softmax(dim=1).gather(1, target.long()[:, None])[:, :, None, None]

    def attack_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """What an attacker minimises to make the copy call ``target`` present: CE, (B,)."""
        return F.cross_entropy(logits.float(), target.long(), reduction="none")
