"""Attack targets: target classes c_t and target maps m_t (benign maps; random patches and random-class
maps of §5 Q1). Every random choice comes from a seeded generator, so the same seed gives the same targets.

Map convention (used by every attack and metric of the framework): the *benign map* of an image is
its interpretation for the class the classifier predicts on it; the *adversarial map* is the
interpretation of x_adv for the target class (its predicted class when the attack succeeds); both come
from the same, ordinary (evaluation) interpreter.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from aid.interpreters.base import Interpreter
from aid.model_state import frozen_eval
from aid.models import Classifier

SHAPES = ("rectangle", "circle", "random")


def as_generator(generator: torch.Generator | int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator``: the one given, or a new one on ``device`` seeded with the int (None: 0)."""
    if isinstance(generator, torch.Generator):
        return generator
    g = torch.Generator(device=device)
    g.manual_seed(0 if generator is None else int(generator))
    return g


def random_target_classes(labels: Tensor, num_classes: int, generator: torch.Generator | int | None = None) -> Tensor:
    """Target classes (B,) long, uniform over the classes other than each label.

    A random offset in [1, K − 1] added to the label modulo K: never the label, each other class
    with probability 1 / (K − 1). Drawn on the generator's device and returned on ``labels``' device.

    Args:
        labels: (B,) true (or predicted) classes.
        num_classes: K ≥ 2.
        generator: a ``torch.Generator`` or an int seed.
    """
    if num_classes < 2:
        raise ValueError(f"random target classes need num_classes >= 2, got {num_classes}")
    labels = torch.as_tensor(labels).long()
    if labels.dim() != 1:
        raise ValueError(f"labels must have shape (B,), got {tuple(labels.shape)}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes - 1}]")
    g = as_generator(generator)
    offset = torch.randint(1, num_classes, labels.shape, generator=g, device=g.device)
    return (labels + offset.to(labels.device)) % num_classes


def benign_target_maps(interpreter: Interpreter, classifier: Classifier, x: Tensor) -> Tensor:
    """Benign maps (B, 1, H, W): the interpretation of x for the class the classifier predicts on it.

    Detached; the classifier's mode and flags are left as they were.
    """
    with frozen_eval(classifier), torch.no_grad():
        pred = classifier(x).argmax(dim=1)
    return interpreter.attribute(x, pred).detach()


def random_patch_maps(
    batch: int,
    size: int | tuple[int, int],
    generator: torch.Generator | int | None = None,
    shape: str = "rectangle",
    area_range: tuple[float, float] = (0.1, 0.3),
    aspect_range: tuple[float, float] = (0.5, 2.0),
    device: torch.device | str | None = None,
) -> Tensor:
    """Random patch target maps (§5 Q1): 1 inside a patch of random shape, angle and position, 0 outside.

    Per sample: an area fraction a ~ U(area_range) of the H·W pixels, a rotation angle ~ U(0, π),
    for rectangles an aspect ratio whose log is uniform in log(aspect_range), and a centre uniform over
    the positions where the rotated patch lies inside the image (the image centre if none does, which
    can only happen for elongated patches in non-square images; the patch is then clipped). Pixels
    whose centre is inside the patch are 1, so the area matches ``a`` up to the rasterisation of the
    border. Vectorised over the batch with coordinate grids.

    Args:
        batch: B.
        size: H (square) or (H, W), in pixels.
        generator: a ``torch.Generator`` or an int seed (its device is used unless ``device`` is given).
        shape: ``"rectangle"``, ``"circle"`` or ``"random"`` (each sample a rectangle or a circle).
        area_range: (min, max) area fraction, inside (0, 1].
        aspect_range: (min, max) width/height ratio of the rectangles.
        device: where the maps are made (default: the generator's device).

    Returns: (B, 1, H, W) float maps with values in {0, 1}.
    """
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    lo, hi = (float(v) for v in area_range)
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"area_range must satisfy 0 < min <= max <= 1, got {area_range}")
    r_lo, r_hi = (float(v) for v in aspect_range)
    if not 0 < r_lo <= r_hi:
        raise ValueError(f"aspect_range must satisfy 0 < min <= max, got {aspect_range}")
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    g = as_generator(generator)
    u = torch.rand(batch, 6, generator=g, device=g.device).double()
    dev = torch.device(device) if device is not None else g.device
    u = u.to(dev)
    area = (lo + (hi - lo) * u[:, 0]) * h * w
    theta = math.pi * u[:, 1]
    aspect = torch.exp(math.log(r_lo) + (math.log(r_hi) - math.log(r_lo)) * u[:, 2])
    if shape == "random":
        circle = u[:, 5] < 0.5
    else:
        circle = torch.full((batch,), shape == "circle", device=dev)
    # Half sides of the rectangle, radius of the circle, and half extents of their bounding boxes.
    half_w, half_h = (area * aspect).sqrt() / 2, (area / aspect).sqrt() / 2
    radius = (area / math.pi).sqrt()
    cos, sin = theta.cos(), theta.sin()
    box_x = torch.where(circle, radius, half_w * cos.abs() + half_h * sin.abs())
    box_y = torch.where(circle, radius, half_w * sin.abs() + half_h * cos.abs())
    cx = torch.where(box_x < w / 2, box_x + (w - 2 * box_x) * u[:, 3], torch.full_like(box_x, w / 2))
    cy = torch.where(box_y < h / 2, box_y + (h - 2 * box_y) * u[:, 4], torch.full_like(box_y, h / 2))
    ys = torch.arange(h, device=dev, dtype=torch.float64).view(1, h, 1) + 0.5
    xs = torch.arange(w, device=dev, dtype=torch.float64).view(1, 1, w) + 0.5
    dx, dy = xs - cx.view(-1, 1, 1), ys - cy.view(-1, 1, 1)
    along = dx * cos.view(-1, 1, 1) + dy * sin.view(-1, 1, 1)
    across = -dx * sin.view(-1, 1, 1) + dy * cos.view(-1, 1, 1)
    in_rect = (along.abs() <= half_w.view(-1, 1, 1)) & (across.abs() <= half_h.view(-1, 1, 1))
    in_circle = dx * dx + dy * dy <= (radius * radius).view(-1, 1, 1)
    inside = torch.where(circle.view(-1, 1, 1), in_circle, in_rect)
    return inside[:, None].float()


def random_class_maps(
    interpreter: Interpreter,
    x_pool: Tensor,
    y_pool: Tensor,
    target_classes: Tensor,
    generator: torch.Generator | int | None = None,
    return_index: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Random-class target maps (§5 Q1): per sample, the map of a pool image whose class ≠ the target class.

    For each target class c_t a pool image with label ≠ c_t is drawn uniformly (one vectorised
    ``multinomial`` over the pool), and its map for its own label is the target map; the paper's pool
    holds correctly classified images, where the label is also the benign (predicted) class, so the
    adversarial input is then classified as c_t but interpreted as another class.

    Args:
        interpreter: the interpreter g whose maps are the targets.
        x_pool: (N, C, H, W) candidate images in [0, 1].
        y_pool: (N,) their labels.
        target_classes: (B,) the attack's target classes c_t.
        generator: a ``torch.Generator`` or an int seed.
        return_index: also return the chosen pool indices (B,) (e.g. to show the source images).

    Returns: maps (B, 1, H, W) (and the indices when ``return_index``).
    """
    y_pool = torch.as_tensor(y_pool, device=x_pool.device).long()
    t = torch.as_tensor(target_classes, device=x_pool.device).long()
    if y_pool.shape != (x_pool.shape[0],):
        raise ValueError(f"y_pool must have shape ({x_pool.shape[0]},), got {tuple(y_pool.shape)}")
    allowed = (y_pool[None, :] != t[:, None]).double()  # (B, N)
    if t.numel() and (allowed.sum(dim=1) == 0).any():
        missing = sorted(set(t[allowed.sum(dim=1) == 0].tolist()))
        raise ValueError(f"the pool has no image of a class other than target class(es) {missing}")
    g = as_generator(generator)
    idx = torch.multinomial(allowed.to(g.device), 1, generator=g).squeeze(1).to(x_pool.device)
    maps = interpreter.attribute(x_pool[idx], y_pool[idx]).detach()
    return (maps, idx) if return_index else maps
