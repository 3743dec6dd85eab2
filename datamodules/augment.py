"""Training augmentation of image batches on their device: random crops and horizontal flips, seeded.

The random numbers of a batch come from a CPU generator seeded with (seed, global step, rank), so a run
resumed from a checkpoint draws what an uninterrupted one would, whatever the number of DataLoader workers
or the device; every operation is batched (per-image crops as tensors, no loop over the images).

Two standard recipes (``mode``):

- ``"crop"``: zero-pad by ``pad`` pixels (default 1/8 of the side, 4 at 32 px) and crop back at a random
  offset, then flip (the CIFAR recipe);
- ``"resized_crop"``: a random crop of 35–100 % of the area with aspect ratio 3/4–4/3, resized back to the
  side (bilinear; masks nearest), then flip (the ImageNet recipe, on the centre-cropped image).

Masks (B, 1, H, W) follow their images.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

MODES = ("auto", "crop", "resized_crop", "none")


def batch_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The CPU generator of one training batch: seeded by (seed, global step, rank)."""
    return torch.Generator().manual_seed((int(seed) + 7919) * 1_000_003 + int(step) * 64 + int(rank))


def resolve_mode(mode: str, image_size: int) -> str:
    """``auto``: ``crop`` below 64 px (small images, CIFAR-style), ``resized_crop`` from 64 px on."""
    if mode not in MODES:
        raise ValueError(f"data.augment must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "auto":
        return "crop" if image_size < 64 else "resized_crop"
    return mode


def random_crop_flip(x: Tensor, mask: Tensor, gen: torch.Generator, pad: int | None = None) -> tuple[Tensor, Tensor]:
    """Zero-pad by ``pad`` (default side // 8), crop back at a random offset per image, flip half of them.

    Shapes: x (B, C, H, W), mask (B, 1, H, W) -> the same."""
    b, _, h, w = x.shape
    pad = max(1, min(h, w) // 8) if pad is None else int(pad)
    offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=gen).to(x.device)
    flip = (torch.rand(b, generator=gen) < 0.5).to(x.device)
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # (B, H) rows of the padded image
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=x.device)[:, None, None]

    def take(t: Tensor) -> Tensor:
        padded = F.pad(t, (pad, pad, pad, pad)).permute(0, 2, 3, 1)  # (B, H + 2p, W + 2p, C)
        return padded[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()

    return take(x), take(mask)


def random_resized_crop_flip(
    x: Tensor, mask: Tensor, gen: torch.Generator, scale: tuple[float, float] = (0.35, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[Tensor, Tensor]:
    """A random crop of ``scale`` of the area and aspect ``ratio`` per image, resized back to (H, W) (bilinear
    for images, nearest for masks), flipped for half of the images.

    Shapes: x (B, C, H, W), mask (B, 1, H, W) -> the same."""
    b = x.shape[0]
    area = torch.empty(b).uniform_(scale[0], scale[1], generator=gen)
    log_r = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    # Width and height of the crop as fractions of the side (at most the whole image).
    cw = (area * log_r.exp()).sqrt().clamp(max=1.0)
    ch = (area / log_r.exp()).sqrt().clamp(max=1.0)
    cx = (torch.rand(b, generator=gen) * 2 - 1) * (1 - cw)
    cy = (torch.rand(b, generator=gen) * 2 - 1) * (1 - ch)
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = cw * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = ch, cy
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out_mask = F.grid_sample(mask.to(x.dtype), grid, mode="nearest", padding_mode="border", align_corners=False)
    return out, out_mask.to(mask.dtype)


def augment_batch(x: Tensor, mask: Tensor, mode: str, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Apply ``mode`` (``crop``, ``resized_crop`` or ``none``; see the module doc) to a batch."""
    if mode == "crop":
        return random_crop_flip(x, mask, gen)
    if mode == "resized_crop":
        return random_resized_crop_flip(x, mask, gen)
    return x, mask
