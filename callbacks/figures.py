"""Figures a reader understands without the code: a grid of image tiles with column titles, row labels, labels
under tiles and a colour bar of the map ramp, drawn with matplotlib (Agg canvas, no pyplot state)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.text import Text
from PIL import Image
from torch import Tensor

COLORBAR_LABEL = "map value (0 → 1)"
TITLE_SIZE = 8  # points; a two-line title of ~16 characters a line fits a 96 px tile
LABEL_SIZE = 7


def heat(maps: Tensor) -> Tensor:
    """A jet-like colour ramp: maps (B, 1, H, W) in [0, 1] -> RGB (B, 3, H, W) in [0, 1] (0 blue, 1 red)."""
    v = maps.clamp(0, 1)
    centres = torch.tensor([3.0, 2.0, 1.0], device=v.device, dtype=v.dtype).view(1, 3, 1, 1)
    return (1.5 - (4 * v - centres).abs()).clamp(0, 1)


def heat_colormap(n: int = 256) -> ListedColormap:
    """The :func:`heat` ramp as a matplotlib colour map of ``n`` colours (for the colour bar)."""
    ramp = heat(torch.linspace(0, 1, n).view(n, 1, 1, 1)).view(n, 3)
    return ListedColormap(ramp.numpy(), name="heat")


def upscale(tiles: Tensor, tile_px: int) -> Tensor:
    """Tiles (..., C, H, W) enlarged by the smallest whole factor that makes the shorter side at least
    ``tile_px`` pixels, nearest neighbour (each pixel becomes a block: no blur, no invented detail)."""
    factor = max(1, math.ceil(tile_px / min(tiles.shape[-2:])))
    return tiles.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def grid_figure(
    tiles: Tensor,
    column_titles: Sequence[str],
    row_labels: Sequence[str],
    tile_labels: Sequence[Sequence[str]] | None = None,
    colorbar: bool = True,
    tile_px: int = 96,
    dpi: int = 100,
) -> Figure:
    """A matplotlib figure of a grid of RGB tiles with titles and labels (pure: no global state, no file).

    Args:
        tiles: (R, C, 3, H, W) images in [0, 1] (any device / float dtype): R rows, C columns.
        column_titles: C titles above the first row ("\\n" breaks a title into lines).
        row_labels: R labels left of the first column (e.g. the true class).
        tile_labels: optional (R, C) labels under the tiles ("" for none; e.g. the target class on
            adversarial columns).
        colorbar: draw the :func:`heat` ramp from 0 to 1 right of the grid, labelled ``COLORBAR_LABEL``.
        tile_px: smallest tile side in pixels; tiles are enlarged by a whole factor (:func:`upscale`).
        dpi: pixels per inch of the canvas (sizes are laid out in pixels).

    Returns:
        A :class:`~matplotlib.figure.Figure` on an Agg canvas; its colour bar axes is labelled ``colorbar``.

    Example:
        >>> fig = grid_figure(torch.rand(2, 3, 3, 16, 16), ["input", "GRAD\\nbenign map", "GRAD\\nADV² map"],
        ...                   ["true: circle", "true: square"])
    """
    if tiles.dim() != 5 or tiles.shape[2] != 3:
        raise ValueError(f"tiles must be (R, C, 3, H, W), got {tuple(tiles.shape)}")
    rows, cols = tiles.shape[:2]
    if len(column_titles) != cols or len(row_labels) != rows:
        raise ValueError(
            f"{cols} columns and {rows} rows of tiles, got {len(column_titles)} column titles and "
            f"{len(row_labels)} row labels"
        )
    if tile_labels is not None and [len(r) for r in tile_labels] != [cols] * rows:
        raise ValueError(f"tile_labels must be {rows} rows of {cols} labels")
    big = upscale(tiles.detach().float().clamp(0, 1).cpu(), tile_px)
    h, w = big.shape[-2:]
    gap_x, gap_y = 6, (6 + 2 * LABEL_SIZE if tile_labels is not None else 6)  # pixels; room for labels under tiles
    bar_w, bar_gap = 12, 14
    width = cols * w + (cols - 1) * gap_x + (bar_gap + bar_w if colorbar else 0)
    height = rows * h + (rows - 1) * gap_y
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    images = big.permute(0, 1, 3, 4, 2).numpy()
    for r in range(rows):
        for c in range(cols):
            left, top = c * (w + gap_x), r * (h + gap_y)
            ax = fig.add_axes((left / width, 1 - (top + h) / height, w / width, h / height))
            ax.imshow(images[r, c], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if r == 0:
                ax.set_title(column_titles[c], fontsize=TITLE_SIZE)
            if c == 0:
                ax.set_ylabel(row_labels[r], fontsize=TITLE_SIZE)
            if tile_labels is not None and tile_labels[r][c]:
                ax.set_xlabel(tile_labels[r][c], fontsize=LABEL_SIZE, labelpad=1)
    if colorbar:
        left = width - bar_w
        cax = fig.add_axes((left / width, 0.0, bar_w / width, 1.0), label="colorbar")
        bar = fig.colorbar(ScalarMappable(norm=Normalize(0, 1), cmap=heat_colormap()), cax=cax, ticks=[0, 0.5, 1])
        bar.ax.tick_params(labelsize=LABEL_SIZE)
        bar.set_label(COLORBAR_LABEL, fontsize=LABEL_SIZE)
    return fig


def figure_texts(fig: Figure) -> list[str]:
    """Every non-empty string drawn on ``fig`` (titles, labels, tick labels), in drawing order."""
    fig.canvas.draw()  # tick labels exist once drawn
    return [t.get_text() for t in fig.findobj(Text) if t.get_visible() and t.get_text()]


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight", pad_inches=0.05, facecolor="white")
    return buf.getvalue()


def _rgb(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as img:
        return np.asarray(img.convert("RGB")).copy()


def draw_grid(tiles: Tensor, column_titles: Sequence[str], row_labels: Sequence[str], **kwargs) -> np.ndarray:
    """The grid of :func:`grid_figure` as an RGB image (H', W', 3) uint8, cropped to what is drawn.

    Example:
        >>> img = draw_grid(torch.rand(2, 2, 3, 32, 32), ["input", "GRAD\\nbenign map"], ["circle", "square"])
        >>> img.shape  # about (2·96 + titles, 2·96 + row labels + colour bar, 3)
    """
    return _rgb(_png(grid_figure(tiles, column_titles, row_labels, **kwargs)))


def save_grid(
    path: str | Path, tiles: Tensor, column_titles: Sequence[str], row_labels: Sequence[str], **kwargs
) -> np.ndarray:
    """Write the grid of :func:`grid_figure` to the PNG file ``path``; return its pixels as :func:`draw_grid`."""
    png = _png(grid_figure(tiles, column_titles, row_labels, **kwargs))
    Path(path).write_bytes(png)
    return _rgb(png)
