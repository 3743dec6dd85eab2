"""Feature-squeezing squeezers ψ (Xu et al., NDSS 2018; paper §4 Q3, Table 4) on [0, 1] image batches.

Three squeezers, as in Table 4: bit-depth reduction, local (median) smoothing and non-local-means
smoothing. Each is a small callable ``squeezer(x) -> x`` on (B, C, H, W) batches in [0, 1] with

* ``name``: the key used in metric names (``squeeze/<name>/<attack>/detection_rate``), e.g.
  ``bit_depth_5``, ``median_3x3``, ``nlm_11_3_4``;
* ``differentiable``: whether ``__call__`` carries an exact gradient to x;
* ``bpda(x)``: the same forward values with a gradient for adaptive attacks (Athalye et al.'s BPDA):
  exact where the squeezer is differentiable, a documented surrogate otherwise.

Example:
    >>> sq = build_squeezer("median", kernel_size=3)
    >>> x_sq = sq(torch.rand(8, 3, 32, 32))
"""

from __future__ import annotations

from typing import Literal

import cv2
import kornia.filters as KF
import numpy as np
import torch
from torch import Tensor

from aid.registry import Registry


class Squeezer:
    """Base of the squeezers: ``__call__(x) -> x`` on (B, C, H, W) batches in [0, 1]."""

    name: str = "squeezer"
    differentiable: bool = True

    def __call__(self, x: Tensor) -> Tensor:
        raise NotImplementedError  # abstractmethod: each squeezer implements its filter

    def bpda(self, x: Tensor) -> Tensor:
        """Forward equal to ``self(x)``; backward exact (differentiable squeezers) or a surrogate."""
        return self(x)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


SQUEEZERS: Registry[Squeezer] = Registry("squeezer")


@SQUEEZERS.register("bit_depth")
class BitDepth(Squeezer):
    """Bit-depth reduction to ``bits`` bits per channel: x -> round(x·(2^bits − 1)) / (2^bits − 1).

    The result takes exactly 2^bits values in [0, 1]. Rounding has a zero gradient almost everywhere,
    so ``differentiable`` is False; :meth:`bpda` is the straight-through estimator (identity backward).

    Args:
        bits: bits per channel, 1–8 (default 5, the feature-squeezing paper's choice for colour
            ImageNet images; Table 4 of the ADV² paper reports 2 and 3 bits, the authors tried 1–5).
    """

    differentiable = False

    def __init__(self, bits: int = 5) -> None:
        if not 1 <= int(bits) <= 8:
            raise ValueError(f"bits must lie in [1, 8], got {bits}")
        self.bits = int(bits)
        self.name = f"bit_depth_{self.bits}"

    def __call__(self, x: Tensor) -> Tensor:
        levels = 2**self.bits - 1
        return torch.round(x.detach() * levels) / levels

    def bpda(self, x: Tensor) -> Tensor:
        return x + (self(x) - x).detach()


def symmetric_pad(x: Tensor, top: int, bottom: int, left: int, right: int) -> Tensor:
    """Pad the last two dims of x by mirroring with the edge repeated (scipy's ``mode="reflect"``,
    numpy's ``"symmetric"``: d c b a | a b c d | d c b a); each pad at most the image's side."""
    h, w = x.shape[-2:]
    if max(top, bottom) > h or max(left, right) > w:
        raise ValueError(f"padding ({top}, {bottom}, {left}, {right}) exceeds the image ({h}×{w})")
    parts = [x[..., :top, :].flip(-2), x, x[..., h - bottom :, :].flip(-2)]
    x = torch.cat(parts, dim=-2)
    return torch.cat([x[..., :left].flip(-1), x, x[..., x.shape[-1] - right :].flip(-1)], dim=-1)


@SQUEEZERS.register("median")
class Median(Squeezer):
    """Local smoothing: a ``kernel_size`` × ``kernel_size`` median filter, as scipy's ``median_filter``
    with its default ``mode="reflect"`` that the feature-squeezing code uses.

    Same values as scipy, borders included: the image is mirrored with the edge pixel repeated, the
    window of output pixel i covers i − k//2 … i + (k − 1)//2 (for the authors' 2×2 that is the pixel
    and its upper-left neighbours), and the output is the sorted window's element k²//2 (the upper
    middle for even k). The median selects one input value per window, so its gradient is exact (a
    one-hot routing per output pixel): ``differentiable`` is True.

    Args:
        kernel_size: window size in pixels (default 3, Table 4's 3×3).
    """

    differentiable = True

    def __init__(self, kernel_size: int = 3) -> None:
        if int(kernel_size) < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
        self.kernel_size = int(kernel_size)
        self.name = f"median_{self.kernel_size}x{self.kernel_size}"

    def __call__(self, x: Tensor) -> Tensor:
        k = self.kernel_size
        before, after = k // 2, (k - 1) // 2
        padded = symmetric_pad(x, before, after, before, after)
        windows = padded.unfold(2, k, 1).unfold(3, k, 1).flatten(-2)  # (B, C, H, W, k²)
        return windows.sort(dim=-1).values[..., (k * k) // 2]


@SQUEEZERS.register("nlm")
class NonLocalMeans(Squeezer):
    """Non-local-means smoothing "search-patch-strength" (Table 4's 11-3-4) with OpenCV.

    The feature-squeezing naming ``a-b-c`` is (search window a, patch size b, filter strength c); it
    maps to ``cv2.fastNlMeansDenoisingColored(img, None, h=c, hColor=c, templateWindowSize=b,
    searchWindowSize=a)`` on uint8 images (strength in 0–255 units), and to ``fastNlMeansDenoising``
    for one-channel images. OpenCV works on one image at a time, so this squeezer loops over the
    batch: the one deliberate exception to the batching rule in the framework. It runs on the CPU
    (results return to x's device) and is not differentiable.

    :meth:`bpda` gives adaptive attacks a gradient: forward NLM, backward through ``surrogate``:
    ``"identity"`` (straight-through) or ``"blur"`` (a Gaussian blur of kernel ``patch`` and
    σ = patch / 3, a smooth stand-in for a local weighted average).

    Args:
        search_window: search window size a in pixels, odd (default 11).
        patch_size: template patch size b in pixels, odd (default 3).
        strength: filter strength h in 0–255 units (default 4).
        surrogate: backward pass of :meth:`bpda`, ``"identity"`` (default) or ``"blur"``.
    """

    differentiable = False

    def __init__(
        self,
        search_window: int = 11,
        patch_size: int = 3,
        strength: float = 4,
        surrogate: Literal["identity", "blur"] = "identity",
    ) -> None:
        if int(search_window) % 2 == 0 or int(patch_size) % 2 == 0:
            raise ValueError(f"search_window and patch_size must be odd, got {search_window}, {patch_size}")
        if surrogate not in ("identity", "blur"):
            raise ValueError(f"surrogate must be 'identity' or 'blur', got {surrogate!r}")
        self.search_window = int(search_window)
        self.patch_size = int(patch_size)
        self.strength = float(strength)
        self.surrogate = surrogate
        self.name = f"nlm_{self.search_window}_{self.patch_size}_{self.strength:g}"

    def __call__(self, x: Tensor) -> Tensor:
        if x.shape[1] not in (1, 3):
            raise ValueError(f"non-local means needs 1 or 3 channels, got {x.shape[1]}")
        imgs = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        imgs = imgs.permute(0, 2, 3, 1).cpu().numpy()
        out = np.empty_like(imgs)
        h, t, s = self.strength, self.patch_size, self.search_window
        for i, img in enumerate(imgs):  # OpenCV filters one image at a time
            img = np.ascontiguousarray(img)
            if img.shape[-1] == 3:
                out[i] = cv2.fastNlMeansDenoisingColored(img, None, h, h, t, s)
            else:
                out[i] = cv2.fastNlMeansDenoising(img[..., 0], None, h, t, s)[..., None]
        res = torch.from_numpy(out).permute(0, 3, 1, 2).to(device=x.device, dtype=x.dtype)
        return res / 255

    def bpda(self, x: Tensor) -> Tensor:
        if self.surrogate == "identity":
            smooth = x
        else:
            k = self.patch_size
            smooth = KF.gaussian_blur2d(x, (k, k), (k / 3, k / 3), border_type="reflect")
        return smooth + (self(x) - smooth).detach()


def build_squeezer(name: str | Squeezer, **kwargs) -> Squeezer:
    """A squeezer by registry name (``bit_depth``, ``median``, ``nlm``) and its arguments.

    Also accepts the metric-style names ``bit_depth_3``, ``median_2x2``, ``nlm_11_3_4`` (no kwargs
    then), and returns a :class:`Squeezer` instance unchanged.
    """
    if isinstance(name, Squeezer):
        return name
    key = str(name).lower()
    if key in SQUEEZERS:
        return SQUEEZERS.build(key, **kwargs)
    parsed = _parse_name(key)
    if parsed is None or kwargs:
        SQUEEZERS.get(key)  # raises KeyError listing the allowed names
        raise ValueError(f"pass either a registry name with kwargs or a full squeezer name, got {name!r}")
    return SQUEEZERS.build(parsed[0], **parsed[1])


def _parse_name(key: str) -> tuple[str, dict] | None:
    """``bit_depth_3`` / ``median_3x3`` / ``nlm_11_3_4`` -> (registry name, kwargs), or None."""
    try:
        if key.startswith("bit_depth_"):
            return "bit_depth", {"bits": int(key.removeprefix("bit_depth_"))}
        if key.startswith("median_"):
            a, _, b = key.removeprefix("median_").partition("x")
            if b and int(a) != int(b):
                return None
            return "median", {"kernel_size": int(a)}
        if key.startswith("nlm_"):
            a, b, c = key.removeprefix("nlm_").split("_")
            return "nlm", {"search_window": int(a), "patch_size": int(b), "strength": float(c)}
    except ValueError:
        return None
    return None
