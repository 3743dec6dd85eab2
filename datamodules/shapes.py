"""The embedded default dataset: procedurally drawn shapes on cluttered backgrounds, with object masks.

Nothing is downloaded. Each image holds one flat-coloured object of one of ``SHAPE_NAMES`` (the
class), at a random position, scale (radius 20–32 % of the image side), rotation and colour, drawn last
over a cluttered background: a random bilinear colour gradient, smooth low-frequency colour noise, two
triangle-wave stripe textures of random frequency, orientation and colour, thin line segments, small
dots and a small elongated blob (the distractors, none of them a class shape), and per-pixel noise.
The ground-truth mask is the exact set of object pixels (the object is drawn last, so all of it is
visible). The object colour is the one of four random candidates farthest from the background colour
under the object, and is exposed per image as ``colors``.

Generation is vectorised over images and pixels with NumPy (``np.random.default_rng``; uniform draws
only, and only IEEE basic arithmetic on the pixels: no sin/cos/exp, no BLAS), so the same arguments
give bit-identical images on every machine for a given NumPy version. The geometry does not depend on
the image size: one seed draws the same scenes at 32 and 64 px. Splits use the derived seeds
``[seed, 0]`` (train), ``[seed, 1]`` (val) and ``[seed, 2]`` (test).

Example:
    >>> dm = ShapesDataModule(image_size=32, num_classes=8, train_size=512)
    >>> dm.setup("fit"); x, y, m = next(iter(dm.train_dataloader()))  # (B,3,32,32), (B,), (B,1,32,32)
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from datamodules.common import SplitDataModule, check_positive_int

SPLITS = ("train", "val", "test")
_CHUNK = 256  # images rendered at once: bounds the float32 working set (about 25 MB per array at 64 px)


def _regular(n: int, radius: float, start_deg: float) -> list[tuple[float, float]]:
    # Rounded to 1e-6 so that last-ulp differences between platforms' libm cannot move a vertex.
    return [
        (round(radius * math.cos(math.radians(start_deg + 360.0 * k / n)), 6),
         round(radius * math.sin(math.radians(start_deg + 360.0 * k / n)), 6))
        for k in range(n)
    ]


def _star(points: int, outer: float, inner: float) -> list[tuple[float, float]]:
    outer_v = _regular(points, outer, 90.0)
    inner_v = _regular(points, inner, 90.0 + 180.0 / points)
    return [v for pair in zip(outer_v, inner_v, strict=True) for v in pair]


# Polygons in the object's unit frame (every vertex within radius 1, so the object fits in the image).
_POLYGONS: dict[str, list[tuple[float, float]]] = {
    "square": [(-0.68, -0.68), (0.68, -0.68), (0.68, 0.68), (-0.68, 0.68)],
    "triangle": _regular(3, 1.0, 90.0),
    "cross": [
        (0.3, 0.92), (-0.3, 0.92), (-0.3, 0.3), (-0.92, 0.3), (-0.92, -0.3), (-0.3, -0.3),
        (-0.3, -0.92), (0.3, -0.92), (0.3, -0.3), (0.92, -0.3), (0.92, 0.3), (0.3, 0.3),
    ],
    "star": _star(5, 1.0, 0.48),
    "arrow": [(0.0, 0.95), (-0.6, 0.2), (-0.22, 0.2), (-0.22, -0.95), (0.22, -0.95), (0.22, 0.2), (0.6, 0.2)],
    "l_shape": [(-0.6, -0.78), (0.6, -0.78), (0.6, -0.28), (-0.1, -0.28), (-0.1, 0.78), (-0.6, 0.78)],
}

#: Class names in label order; ``num_classes=K`` uses the first K. (No hexagon: at 32 px a small
#: hexagon is hard to tell from a circle, their overlap in the unit frame is above 90 %.)
SHAPE_NAMES: tuple[str, ...] = (
    "circle", "square", "triangle", "cross", "ring", "star", "crescent", "l_shape", "arrow", "half_disc",
)


def _in_polygon(u: np.ndarray, v: np.ndarray, verts: list[tuple[float, float]]) -> np.ndarray:
    """Even-odd crossing test of points (u, v) against a closed polygon; boolean array like ``u``."""
    inside = np.zeros(u.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(verts, verts[1:] + verts[:1], strict=True):
        if y0 == y1:  # a horizontal edge is never crossed by the horizontal ray
            continue
        crosses = (v < y0) != (v < y1)
        x_at = x0 + (v - y0) * ((x1 - x0) / (y1 - y0))
        inside ^= crosses & (u < x_at)
    return inside


def shape_inside(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean array: which points (u, v) of the object's unit frame lie inside shape ``name``."""
    if name in _POLYGONS:
        return _in_polygon(u, v, _POLYGONS[name])
    r2 = u * u + v * v
    if name == "circle":
        return r2 < 0.8**2
    if name == "ring":
        return (r2 < 0.92**2) & (r2 > 0.48**2)
    if name == "crescent":
        du = u - 0.42
        return (r2 < 0.92**2) & (du * du + v * v > 0.72**2)
    if name == "half_disc":
        dv = v + 0.4
        return (u * u + dv * dv < 0.9**2) & (dv > 0)
    raise KeyError(f"unknown shape {name!r}; known: {', '.join(SHAPE_NAMES)}")


@dataclass(frozen=True)
class ShapesData:
    """One generated split: ``images`` (N,3,H,W) uint8, ``labels`` (N,) long, ``masks`` (N,1,H,W) bool,
    ``colors`` (N,3) uint8 (the object's exact RGB value)."""

    images: Tensor
    labels: Tensor
    masks: Tensor
    colors: Tensor


def _rotation(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Random (cos, sin) covering all angles, by the rational parametrisation of the circle (no libm)."""
    t = rng.uniform(-1.0, 1.0, shape)
    sign = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
    return sign * (1 - t * t) / (1 + t * t), sign * 2 * t / (1 + t * t)


def _draw_params(rng: np.random.Generator, n: int, num_classes: int) -> dict[str, np.ndarray]:
    """All per-image scene parameters, in image-relative units (the image is the unit square)."""
    p: dict[str, np.ndarray] = {}
    p["label"] = rng.permutation(np.arange(n) % num_classes)  # balanced to within one image per class
    p["radius"] = rng.uniform(0.2, 0.32, n)
    p["cx"] = p["radius"] + rng.random(n) * (1 - 2 * p["radius"])
    p["cy"] = p["radius"] + rng.random(n) * (1 - 2 * p["radius"])
    p["cos"], p["sin"] = _rotation(rng, (n,))
    p["corners"] = rng.random((n, 3, 2, 2))
    p["lowfreq"] = (rng.random((n, 3, 4, 4)) - 0.5) * rng.uniform(0.15, 0.45, (n, 1, 1, 1))
    p["stripe_cos"], p["stripe_sin"] = _rotation(rng, (n, 2))
    p["stripe_freq"] = rng.uniform(2.0, 7.0, (n, 2))
    p["stripe_phase"] = rng.random((n, 2))
    p["stripe_amp"] = rng.uniform(0.0, 0.22, (n, 2))
    p["stripe_color"] = rng.uniform(-1.0, 1.0, (n, 2, 3))
    p["noise_amp"] = rng.uniform(0.01, 0.08, n)
    # Distractors: 3 thin line segments, 4 small dots, 1 small elongated blob; each slot may be empty.
    p["line_on"] = rng.random((n, 3)) < 0.75
    p["line_x"], p["line_y"] = rng.random((n, 3)), rng.random((n, 3))
    p["line_cos"], p["line_sin"] = _rotation(rng, (n, 3))
    p["line_len"] = rng.uniform(0.15, 0.6, (n, 3))
    p["line_hw"] = rng.uniform(0.016, 0.03, (n, 3))
    p["line_color"] = rng.random((n, 3, 3))
    p["dot_on"] = rng.random((n, 4)) < 0.6
    p["dot_x"], p["dot_y"] = rng.random((n, 4)), rng.random((n, 4))
    p["dot_r"] = rng.uniform(0.025, 0.05, (n, 4))
    p["dot_color"] = rng.random((n, 4, 3))
    p["blob_on"] = rng.random(n) < 0.6
    p["blob_x"], p["blob_y"] = rng.random(n), rng.random(n)
    p["blob_a"] = rng.uniform(0.04, 0.08, n)
    p["blob_b"] = p["blob_a"] * rng.uniform(0.3, 0.6, n)
    p["blob_cos"], p["blob_sin"] = _rotation(rng, (n,))
    p["blob_color"] = rng.random((n, 3))
    p["color_candidates"] = rng.random((n, 4, 3))
    return {k: (a if a.dtype == bool or k == "label" else a.astype(np.float32)) for k, a in p.items()}


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of (B,C,g,g) to (B,C,size,size) with gathers and products only (no BLAS)."""
    g = grid.shape[-1]
    pos = ((np.arange(size, dtype=np.float32) + 0.5) / size) * (g - 1)
    i0 = np.minimum(np.floor(pos).astype(np.int64), g - 2)
    w = (pos - i0).astype(np.float32)
    rows = grid[:, :, i0, :] * (1 - w)[:, None] + grid[:, :, i0 + 1, :] * w[:, None]
    return rows[..., i0] * (1 - w) + rows[..., i0 + 1] * w


def _background(p: dict[str, np.ndarray], sl: slice, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Gradient + low-frequency colour noise + two stripe textures: (B,3,S,S) float32."""
    c = p["corners"][sl]
    img = (c[..., 0, 0, None, None] * (1 - xx) * (1 - yy) + c[..., 0, 1, None, None] * xx * (1 - yy)
           + c[..., 1, 0, None, None] * (1 - xx) * yy + c[..., 1, 1, None, None] * xx * yy)
    img = img + _upsample(p["lowfreq"][sl], xx.shape[-1])
    for k in range(2):
        t = (xx * p["stripe_cos"][sl, k, None, None] + yy * p["stripe_sin"][sl, k, None, None])
        t = t * p["stripe_freq"][sl, k, None, None] + p["stripe_phase"][sl, k, None, None]
        tri = np.abs(2 * (t - np.floor(t)) - 1) - 0.5  # triangle wave in [-0.5, 0.5]
        amp = p["stripe_amp"][sl, k, None, None, None] * p["stripe_color"][sl, k, :, None, None]
        img = img + amp * tri[:, None]
    return img


def _paint(img: np.ndarray, where: np.ndarray, color: np.ndarray) -> np.ndarray:
    """Set pixels ``where`` (B,S,S) of ``img`` (B,3,S,S) to ``color`` (B,3)."""
    return np.where(where[:, None], color[:, :, None, None], img)


def _distractors(img: np.ndarray, p: dict[str, np.ndarray], sl: slice, xx, yy) -> np.ndarray:
    for k in range(p["line_on"].shape[1]):
        ax, ay = p["line_x"][sl, k, None, None], p["line_y"][sl, k, None, None]
        bx = p["line_cos"][sl, k, None, None] * p["line_len"][sl, k, None, None]
        by = p["line_sin"][sl, k, None, None] * p["line_len"][sl, k, None, None]
        dx, dy = xx - ax, yy - ay
        t = np.clip((dx * bx + dy * by) / (bx * bx + by * by), 0, 1)
        ex, ey = dx - t * bx, dy - t * by
        hw = p["line_hw"][sl, k, None, None]
        on = (ex * ex + ey * ey < hw * hw) & p["line_on"][sl, k, None, None]
        img = _paint(img, on, p["line_color"][sl, k])
    for k in range(p["dot_on"].shape[1]):
        dx, dy = xx - p["dot_x"][sl, k, None, None], yy - p["dot_y"][sl, k, None, None]
        r = p["dot_r"][sl, k, None, None]
        on = (dx * dx + dy * dy < r * r) & p["dot_on"][sl, k, None, None]
        img = _paint(img, on, p["dot_color"][sl, k])
    dx, dy = xx - p["blob_x"][sl, None, None], yy - p["blob_y"][sl, None, None]
    c, s = p["blob_cos"][sl, None, None], p["blob_sin"][sl, None, None]
    u, v = (c * dx + s * dy) / p["blob_a"][sl, None, None], (c * dy - s * dx) / p["blob_b"][sl, None, None]
    on = (u * u + v * v < 1) & p["blob_on"][sl, None, None]
    return _paint(img, on, p["blob_color"][sl])


def _object_colors(p: dict[str, np.ndarray]) -> np.ndarray:
    """Per image, the candidate colour farthest from the background gradient at the object centre."""
    x, y = p["cx"][:, None], p["cy"][:, None]
    c = p["corners"]
    bg = (c[..., 0, 0] * (1 - x) * (1 - y) + c[..., 0, 1] * x * (1 - y)
          + c[..., 1, 0] * (1 - x) * y + c[..., 1, 1] * x * y)  # (N,3)
    diff = p["color_candidates"] - bg[:, None, :]
    dist = (diff * diff)[..., 0] + (diff * diff)[..., 1] + (diff * diff)[..., 2]  # fixed order, no np.sum
    best = np.argmax(dist, axis=1)
    col = p["color_candidates"][np.arange(len(best)), best]
    return np.floor(col * 255 + 0.5).astype(np.uint8)


def generate_shapes(n: int, image_size: int = 64, num_classes: int = 8, seed: int = 0,
                    split: str = "train") -> ShapesData:
    """Draw ``n`` scenes (uncached; see ``ShapesDataset`` for the cached access).

    Args:
        n: number of images.
        image_size: side S in pixels (>= 16).
        num_classes: K, the first K of ``SHAPE_NAMES`` (2 <= K <= len(SHAPE_NAMES)).
        seed: non-negative base seed; the split picks the derived seed ``[seed, split index]``.
        split: ``train``, ``val`` or ``test``.

    Returns:
        ``ShapesData`` with images (n,3,S,S) uint8, labels (n,) long, masks (n,1,S,S) bool, colors (n,3).
    """
    check_positive_int("size", n)
    check_positive_int("image_size", image_size, minimum=16)
    if not 2 <= num_classes <= len(SHAPE_NAMES):
        raise ValueError(f"data.num_classes must lie in [2, {len(SHAPE_NAMES)}], got {num_classes}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    check_positive_int("seed", seed, minimum=0)
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    p = _draw_params(rng, n, num_classes)
    colors = _object_colors(p)
    axis = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size
    xx, yy = axis[None, None, :], axis[None, :, None]  # (1,1,S) and (1,S,1), broadcast to (B,S,S)
    images = np.empty((n, 3, image_size, image_size), dtype=np.uint8)
    masks = np.empty((n, 1, image_size, image_size), dtype=bool)
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(start + _CHUNK, n))
        b = sl.stop - sl.start
        img = _distractors(_background(p, sl, xx, yy), p, sl, xx, yy)
        noise = rng.random((b, 3, image_size, image_size), dtype=np.float32) - 0.5
        img = np.clip(img + noise * (2 * p["noise_amp"][sl, None, None, None]), 0, 1)
        # The object's own frame: translate to its centre, rotate back, divide by its radius.
        dx, dy = xx - p["cx"][sl, None, None], yy - p["cy"][sl, None, None]
        c, s, r = p["cos"][sl, None, None], p["sin"][sl, None, None], p["radius"][sl, None, None]
        u, v = (c * dx + s * dy) / r, (c * dy - s * dx) / r
        inside = np.zeros((b, image_size, image_size), dtype=bool)
        labels = p["label"][sl]
        for k in np.unique(labels):
            sel = labels == k
            inside[sel] = shape_inside(SHAPE_NAMES[k], u[sel], v[sel])
        out = np.floor(img * 255 + 0.5).astype(np.uint8)
        images[sl] = np.where(inside[:, None], colors[sl, :, None, None], out)
        masks[sl, 0] = inside
    return ShapesData(
        images=torch.from_numpy(images),
        labels=torch.from_numpy(p["label"].astype(np.int64)),
        masks=torch.from_numpy(masks),
        colors=torch.from_numpy(colors),
    )


# Per-process memory cache of generated splits (uint8 images and bool masks: 160 MB for 10k at 64 px).
_cached_shapes = functools.lru_cache(maxsize=6)(generate_shapes)


class ShapesDataset(Dataset):
    """One split of the shapes data; items are ``(image (3,H,W) float in [0,1], label long, mask (1,H,W))``.

    Args:
        split: ``train``, ``val`` or ``test`` (each has its own derived seed).
        size: number of images N.
        image_size: side in pixels (default 64).
        num_classes: K <= ``len(SHAPE_NAMES)`` (default 8).
        seed: base seed (default 0).

    Attributes ``images`` (N,3,H,W) uint8, ``labels`` (N,) long, ``masks`` (N,1,H,W) bool, ``colors``
    (N,3) uint8 object colours and ``classes`` (names) give direct access to the whole split.

    Example:
        >>> ds = ShapesDataset("val", size=100, image_size=32)
        >>> image, label, mask = ds[0]
    """

    def __init__(self, split: str = "train", size: int = 1000, image_size: int = 64, num_classes: int = 8,
                 seed: int = 0) -> None:
        data = _cached_shapes(size, image_size, num_classes, seed, split)
        self.images, self.labels, self.masks, self.colors = data.images, data.labels, data.masks, data.colors
        self.classes = list(SHAPE_NAMES[:num_classes])

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        return self.images[index].float() / 255, self.labels[index], self.masks[index].float()


class ShapesDataModule(SplitDataModule):
    """LightningDataModule of the embedded synthetic shapes data (no download, ground-truth masks).

    Args:
        image_size: image side in pixels, >= 16 (default 64; the embedded configs use 32).
        num_classes: number of shape classes, 2 to ``len(SHAPE_NAMES)`` (default 8).
        train_size, val_size, test_size: images per split (defaults 10000, 1000, 1000).
        batch_size: images per batch (default 128).
        num_workers: DataLoader worker processes (default 0: the data already sits in memory).
        seed: base seed of the data and of the training shuffle (default 0).
        augment: during training, apply a random flip and quarter-turn rotation to each image and its
            mask (every class is closed under them), batched after the batch reaches the device.

    Batches are ``(images (B,3,H,W) in [0,1], labels (B,), masks (B,1,H,W) in {0,1})``.

    Example:
        >>> dm = ShapesDataModule(image_size=32, train_size=1000)
        >>> dm.setup("fit"); images, labels, masks = next(iter(dm.train_dataloader()))
    """

    has_masks = True

    def __init__(self, image_size: int = 64, num_classes: int = 8, train_size: int = 10000,
                 val_size: int = 1000, test_size: int = 1000, batch_size: int = 128, num_workers: int = 0,
                 seed: int = 0, augment: bool = True) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        self.augment = bool(augment)
        self._image_size = check_positive_int("image_size", image_size, minimum=16)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not (
            2 <= num_classes <= len(SHAPE_NAMES)
        ):
            raise ValueError(
                f"data.num_classes must be an integer in [2, {len(SHAPE_NAMES)}] (shapes available: "
                f"{', '.join(SHAPE_NAMES)}), got {num_classes!r}"
            )
        self._num_classes = num_classes
        self._sizes = {
            "train": check_positive_int("train_size", train_size),
            "val": check_positive_int("val_size", val_size),
            "test": check_positive_int("test_size", test_size),
        }
        check_positive_int("seed", seed, minimum=0)
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        """Generate (or take from the per-process cache) the splits the stage needs."""
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in needed.get(stage, SPLITS) if stage else SPLITS:
            if split not in self._splits:
                self._splits[split] = ShapesDataset(split, self._sizes[split], self._image_size,
                                                    self._num_classes, self.seed)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Random dihedral augmentation of training batches (see ``augment``); other batches pass."""
        trainer = getattr(self, "trainer", None)
        if not (self.augment and trainer is not None and trainer.training):
            return batch
        x, y, m = batch
        # Seeded by the global step and rank, so a resumed run draws what an uninterrupted one would.
        seed = (self.seed + 7919) * 1_000_003 + trainer.global_step * 64 + trainer.global_rank
        gen = torch.Generator().manual_seed(seed)
        draw = torch.randint(0, 8, (x.shape[0],), generator=gen).to(x.device)
        flip = (draw >= 4)[:, None, None, None]
        x, m = torch.where(flip, x.flip(-1), x), torch.where(flip, m.flip(-1), m)
        turns = draw % 4
        out_x, out_m = x.clone(), m.clone()
        for k in (1, 2, 3):  # three rotations for the whole batch, selected per image
            sel = (turns == k)[:, None, None, None]
            out_x = torch.where(sel, torch.rot90(x, k, (-2, -1)), out_x)
            out_m = torch.where(sel, torch.rot90(m, k, (-2, -1)), out_m)
        return out_x, y, out_m

    @property
    def num_classes(self) -> int:
        """Number of classes K."""
        return self._num_classes

    @property
    def image_size(self) -> int:
        """Image side in pixels."""
        return self._image_size

    @property
    def classes(self) -> list[str]:
        """Class names in label order."""
        return list(SHAPE_NAMES[: self._num_classes])

    def split_sizes(self) -> dict[str, int]:
        """Images per split, as configured (nothing is generated)."""
        return dict(self._sizes)
