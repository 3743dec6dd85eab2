"""The perturbation (blend) operator φ(x; m) = x·m + r·(1 − m) shared by MASK (Eqn 9) and RTS (Eqn 8, 15).

``m`` = 1 keeps a pixel, ``m`` = 0 replaces it by the reference ``r``. References:

- ``blur``: a Gaussian blur of x (Fong & Vedaldi 2017; σ 3.5 with a 21×21 kernel at 224 px for MASK,
  σ 11 with a 55×55 kernel for RTS in Dabkowski & Gal 2017);
- ``noise``: Gaussian noise (σ ``noise_std``) around a random constant colour per image and channel
  (Dabkowski & Gal's "random colours");
- ``color``: the random constant colour alone;
- ``grey``: the constant grey 0.5 (Fong & Vedaldi's "constant" perturbation; deterministic, so a
  sample's result does not depend on the other images of its batch);
- ``mixed``: per image, ``blur`` with probability ``blur_prob`` and ``noise`` otherwise (Dabkowski & Gal's
  training setting, ``blurred_version_prob=0.5``).

Images are in [0, 1]; the random references are centred on grey (0.5) and clamped to [0, 1], so φ(x; m)
stays a valid image. Dabkowski & Gal worked on [-1, 1] images with noise σ 0.11 and colours in ±0.33;
our defaults keep those numbers in [0, 1] pixel units (twice their relative strength), which removes
more of the evidence of small 32 px images; set ``noise_std=0.055, color_range=0.33`` for theirs.
"""

from __future__ import annotations

import math

import torch
from kornia.filters import gaussian_blur2d
from torch import Tensor

REFERENCES = ("blur", "noise", "color", "grey", "mixed")


def scaled_sigma(sigma_at_224: float, size: int, minimum: float = 1.0) -> float:
    """A blur σ given for 224 px images rescaled to images of side ``size`` (pixels), at least ``minimum``."""
    return max(float(sigma_at_224) * size / 224.0, float(minimum))


def gaussian_kernel_size(sigma: float, size: int | None = None) -> int:
    """Odd kernel side covering ±3σ, capped at 2·size − 1 so that reflect padding stays valid."""
    k = 2 * math.ceil(3.0 * sigma) + 1
    if size is not None:
        k = min(k, 2 * int(size) - 1)
    return k


def blur_reference(x: Tensor, sigma: float, kernel_size: int | None = None) -> Tensor:
    """Gaussian blur of x (B, C, H, W) with standard deviation ``sigma`` (pixels), same shape.

    ``kernel_size`` defaults to 2·⌈3σ⌉ + 1 (capped to the image); borders are reflected. Differentiable
    with respect to x.
    """
    side = min(x.shape[-2:])
    k = gaussian_kernel_size(sigma) if kernel_size is None else int(kernel_size)
    k = min(k, 2 * side - 1)
    if k % 2 == 0:
        k -= 1
    if k < 3:
        return x
    return gaussian_blur2d(x, (k, k), (float(sigma), float(sigma)), border_type="reflect")


def random_reference(
    x: Tensor,
    generator: torch.Generator | None = None,
    noise_std: float = 0.11,
    color_range: float = 0.66,
) -> Tensor:
    """Random reference (B, C, H, W): grey + colour U(±color_range/2) per image and channel + N(0, σ²).

    ``noise_std=0`` gives the ``color`` reference. Clamped to [0, 1]; no gradient. The numbers come from
    ``generator`` (on x's device) or the global generator when it is None.
    """
    b, c, h, w = x.shape
    kw = {"generator": generator, "device": x.device, "dtype": torch.float32}
    ref = 0.5 + (torch.rand(b, c, 1, 1, **kw) - 0.5) * color_range
    if noise_std > 0:
        ref = ref + torch.randn(b, c, h, w, **kw) * noise_std
    else:
        ref = ref.expand(b, c, h, w)
    return ref.clamp(0, 1).to(x.dtype)


def blend(x: Tensor, mask: Tensor, reference: Tensor) -> Tensor:
    """φ(x; m) = x·m + r·(1 − m) for x, r (B, C, H, W) and a mask (B, 1, H, W) in [0, 1] (1 keeps x)."""
    if mask.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"mask {tuple(mask.shape)} and images {tuple(x.shape)} differ in size")
    return x * mask + reference * (1 - mask)


class Blend:
    """The perturbation operator φ with one kind of reference (see the module docstring).

    Args:
        reference: ``blur`` (default), ``noise``, ``color``, ``grey`` or ``mixed``.
        blur_sigma: blur σ in pixels; ``None`` scales ``blur_sigma_224`` to the image side.
        blur_sigma_224: σ at 224 px used when ``blur_sigma`` is None (MASK: 3.5; RTS: 11).
        min_sigma: lower bound of the scaled σ (pixels).
        kernel_size: blur kernel side; ``None`` covers ±3σ.
        noise_std: σ of the Gaussian noise of the ``noise`` reference (pixel units).
        color_range: width of the uniform random colour around grey (pixel units).
        blur_prob: probability that an image uses the blur reference under ``mixed``.

    Example:
        >>> phi = Blend("blur", blur_sigma=2.0)
        >>> x_perturbed = phi(x, mask)  # x (B, C, H, W), mask (B, 1, H, W)
    """

    def __init__(
        self,
        reference: str = "blur",
        blur_sigma: float | None = None,
        blur_sigma_224: float = 3.5,
        min_sigma: float = 1.0,
        kernel_size: int | None = None,
        noise_std: float = 0.11,
        color_range: float = 0.66,
        blur_prob: float = 0.5,
    ) -> None:
        if reference not in REFERENCES:
            raise ValueError(f"reference must be one of {', '.join(REFERENCES)}, got {reference!r}")
        if blur_sigma is not None and not blur_sigma > 0:
            raise ValueError(f"blur_sigma must be > 0, got {blur_sigma}")
        if not 0 <= blur_prob <= 1:
            raise ValueError(f"blur_prob must lie in [0, 1], got {blur_prob}")
        self.kind = reference
        self.blur_sigma = blur_sigma
        self.blur_sigma_224 = blur_sigma_224
        self.min_sigma = min_sigma
        self.kernel_size = kernel_size
        self.noise_std = noise_std
        self.color_range = color_range
        self.blur_prob = blur_prob

    @property
    def random(self) -> bool:
        """Whether the reference draws random numbers."""
        return self.kind not in ("blur", "grey")

    def sigma_for(self, x: Tensor) -> float:
        """The blur σ (pixels) used for images x."""
        if self.blur_sigma is not None:
            return float(self.blur_sigma)
        return scaled_sigma(self.blur_sigma_224, min(x.shape[-2:]), self.min_sigma)

    def reference(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The reference r (B, C, H, W) for images x (B, C, H, W)."""
        if self.kind == "blur":
            return blur_reference(x, self.sigma_for(x), self.kernel_size)
        if self.kind == "grey":
            return torch.full_like(x, 0.5)
        noise_std = 0.0 if self.kind == "color" else self.noise_std
        ref = random_reference(x, generator, noise_std, self.color_range)
        if self.kind == "mixed":
            pick = torch.rand(x.shape[0], 1, 1, 1, generator=generator, device=x.device) < self.blur_prob
            ref = torch.where(pick, blur_reference(x, self.sigma_for(x), self.kernel_size), ref)
        return ref

    def __call__(
        self,
        x: Tensor,
        mask: Tensor,
        generator: torch.Generator | None = None,
        reference: Tensor | None = None,
    ) -> Tensor:
        """φ(x; m) (B, C, H, W); draws a reference unless one is given."""
        ref = self.reference(x, generator) if reference is None else reference
        return blend(x, mask, ref)
