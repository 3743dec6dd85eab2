"""Report tables as data: one object renders the Markdown of ``report.md`` and the ``wandb.Table`` of the dashboard."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Cell = str | float | int | None
"""A table cell: a label (str), a number, or ``None`` (not measured; NaN counts as not measured)."""

MISSING = "–"


def three_decimals(value: float) -> str:
    """The report's default number format: ``0.123``."""
    return f"{value:.3f}"


def two_decimals(value: float) -> str:
    """Two decimals: ``0.12``."""
    return f"{value:.2f}"


def four_decimals(value: float) -> str:
    """Four decimals: ``0.1234``."""
    return f"{value:.4f}"


def percent(value: float) -> str:
    """A rate in [0, 1] as a percentage with one decimal: ``0.923`` -> ``92.3%``."""
    return f"{100 * value:.1f}%"


def _number(value: Cell) -> float | None:
    """A numeric cell as a float, ``None`` for missing or NaN."""
    if value is None:
        return None
    f = float(value)
    return None if math.isnan(f) else f


@dataclass
class ReportTable:
    """A table of the report as data (columns + rows), rendered as Markdown and as a ``wandb.Table``.

    Numbers stay numbers until rendered: ``report.md`` shows them with ``fmt`` (missing or NaN as "–",
    ``bold`` cells in bold), W&B receives the raw values (missing or NaN as ``None``), so the dashboard
    can sort and plot them.

    Args:
        name: the table's name within its report section; its W&B key is ``report/<section>/<name>``.
        columns: column titles.
        rows: one list of cells per row, as long as ``columns``; strings are labels, numbers values.
        fmt: Markdown format of numbers (default three decimals; :func:`percent` for rates).
        formats: Markdown formats of particular columns by index, overriding ``fmt``.
        bold: (row, column) indices of the cells drawn in bold in Markdown (e.g. the best of a column).
        code: indices of columns whose labels are drawn as ``code`` in Markdown (metric names).

    Example:
        >>> t = ReportTable("attacks", ["interpreter", "asr"], [["grad", 1.0], ["cam", None]])
        >>> print(t.markdown())  # | interpreter | asr | ... | grad | 1.000 | ... | cam | – |
    """

    name: str
    columns: list[str]
    rows: list[list[Cell]]
    fmt: Callable[[float], str] = three_decimals
    formats: dict[int, Callable[[float], str]] = field(default_factory=dict)
    bold: set[tuple[int, int]] = field(default_factory=set)
    code: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for i, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise ValueError(f"table {self.name!r}: row {i} has {len(row)} cells for {len(self.columns)} columns")

    def _markdown_cell(self, i: int, j: int, value: Cell) -> str:
        if isinstance(value, str):
            text = f"`{value}`" if j in self.code else value
        else:
            number = _number(value)
            text = MISSING if number is None else self.formats.get(j, self.fmt)(number)
        return f"**{text}**" if (i, j) in self.bold and text != MISSING else text

    def markdown(self) -> str:
        """The table as Markdown lines (header, rule, rows), without a trailing newline."""
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        for i, row in enumerate(self.rows):
            lines.append("| " + " | ".join(self._markdown_cell(i, j, v) for j, v in enumerate(row)) + " |")
        return "\n".join(lines)

    def data(self) -> list[list[Any]]:
        """The rows with raw values: labels as strings, numbers as floats, missing or NaN as ``None``."""
        return [[v if isinstance(v, str) else _number(v) for v in row] for row in self.rows]

    def wandb_table(self) -> Any:
        """The table as a ``wandb.Table`` (imported here: wandb is only needed when a W&B logger is used)."""
        import wandb

        return wandb.Table(columns=list(self.columns), data=self.data())
