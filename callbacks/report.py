"""The run's report: ``summary.json`` (final value of every logged metric), ``report.md`` and PNGs in the report
folder, and the same report in W&B (each table a ``wandb.Table``, the files an artifact)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import WandbLogger

from aid.loggers import log_report
from callbacks.paper_numbers import PAPER, published
from callbacks.tables import ReportTable

PUBLISHED_SECTION = "Published numbers (from the paper, not measured here)"
PUBLISHED_KEY = "published"  # the published numbers' section name (W&B key report/published/paper)

Part = str | ReportTable  # a piece of a report section: Markdown text or a table


def _to_float(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return None
        value = value.detach().float().item()
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _as_printed(value: float) -> str:
    """A published number with the decimals the paper prints (two, three for Table 4's rates)."""
    return f"{value:.2f}" if round(value, 2) == value else f"{value:.3f}"


def render(parts: list[Part]) -> str:
    """A section's Markdown: its text and tables, separated by blank lines, with a trailing newline."""
    blocks = [p.markdown() if isinstance(p, ReportTable) else p.strip() for p in parts]
    return "\n\n".join(b for b in blocks if b) + "\n"


class ReportWriter(Callback):
    """Collects metrics, Markdown sections and tables of a run and writes them to ``report_dir`` and to W&B.

    ``summary.json`` holds the last value of every metric that reached ``trainer.callback_metrics``
    or was added with :meth:`add_metrics` (flat keys such as ``val/acc`` or
    ``adv2/rts/adv2/l1``); ``report.md`` joins the sections that evaluation callbacks add. A section is
    Markdown text and tables as data (:class:`~callbacks.tables.ReportTable`), so the same table is
    written to ``report.md`` and, at the end of each ``fit`` / ``validate`` / ``test`` (``teardown``), logged
    to every :class:`~pytorch_lightning.loggers.WandbLogger` of the trainer as a ``wandb.Table`` under
    ``report/<section>/<table>``, with ``report.md``, ``summary.json`` and ``figures/*.png`` as the
    artifact ``report-<run id>`` (type ``report``). Offline W&B runs keep both in their run folder.
    Only global rank zero writes files and logs.

    Args:
        report_dir: folder for the report; ``None`` uses ``<trainer.default_root_dir>/report``.
        paper_reference: name of a published table in :mod:`callbacks.paper_numbers` (e.g.
            ``imagenet_resnet50``); when set, ``report.md`` ends with a section that puts the paper's
            numbers beside ours. ``summary.json`` always holds our numbers only. Default ``None``: no section.

    Example:
        >>> writer = ReportWriter("runs/x/report", paper_reference="imagenet_resnet50")
        >>> writer.add_metrics({"adv2/rts/adv2/l1": 0.012}); writer.write()
    """

    def __init__(self, report_dir: str | None = None, paper_reference: str | None = None) -> None:
        if paper_reference is not None:
            published(paper_reference)  # fail when the config is parsed, not after hours of attacks
        self.report_dir = report_dir
        self.paper_reference = paper_reference
        self.metrics: dict[str, float] = {}
        self._sections: dict[str, list[Part]] = {}
        self._trainer: pl.Trainer | None = None

    def directory(self, trainer: pl.Trainer | None = None) -> Path:
        """The report folder (created)."""
        trainer = trainer or self._trainer
        root = self.report_dir or os.path.join(trainer.default_root_dir if trainer else ".", "report")
        path = Path(root)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def add_metrics(self, metrics: dict[str, Any]) -> None:
        """Record metric values (floats or one-element tensors) under flat keys."""
        for key, value in metrics.items():
            f = _to_float(value)
            if f is not None:
                self.metrics[key] = f

    def add_section(self, name: str, *parts: Part) -> None:
        """Add or replace the named section of ``report.md``: Markdown text and tables, in order."""
        self._sections[name] = list(parts)

    def extend_section(self, name: str, *parts: Part) -> None:
        """Append text or tables to the named section (a new section if there is none)."""
        self._sections.setdefault(name, []).extend(parts)

    @property
    def sections(self) -> dict[str, str]:
        """The Markdown of each section, by name (read-only: change sections with :meth:`add_section`)."""
        return {name: render(parts) for name, parts in self._sections.items()}

    def _published_parts(self) -> list[Part]:
        paper = published(self.paper_reference)
        rows = [[key, self.metrics.get(key), paper[key]] for key in sorted(paper)]
        return [
            f"## {PUBLISHED_SECTION}",
            f"Reference `{self.paper_reference}`: numbers printed in the paper's tables (see"
            " callbacks/paper_numbers.py for the table of each), beside this run's. Rates are fractions.",
            ReportTable("paper", ["metric", "ours", f"paper ({PAPER})"], rows, formats={2: _as_printed},
                        code=(0,)),
        ]

    def published_section(self) -> str:
        """Markdown table ``metric | ours | paper`` over every key with a published number ("–": not measured)."""
        return render(self._published_parts())

    def _all_sections(self) -> dict[str, list[Part]]:
        sections = dict(self._sections)
        if self.paper_reference is not None:
            sections[PUBLISHED_KEY] = self._published_parts()
        return sections

    def tables(self) -> dict[str, ReportTable]:
        """Every table of the report by its W&B key ``report/<section>/<table name>``, in report order."""
        return {
            f"report/{section}/{part.name}": part
            for section, parts in self._all_sections().items()
            for part in parts
            if isinstance(part, ReportTable)
        }

    def _collect(self, trainer: pl.Trainer) -> None:
        self.add_metrics(dict(trainer.callback_metrics))

    def write(self, trainer: pl.Trainer | None = None) -> None:
        """Write ``summary.json`` and ``report.md`` (rank zero only)."""
        trainer = trainer or self._trainer
        if trainer is not None and not trainer.is_global_zero:
            return
        out = self.directory(trainer)
        clean = {k: (v if math.isfinite(v) else None) for k, v in sorted(self.metrics.items())}
        tmp = out / "summary.json.tmp"
        tmp.write_text(json.dumps(clean, indent=2) + "\n")
        os.replace(tmp, out / "summary.json")
        body = ["# Report", ""] + [render(parts) for parts in self._all_sections().values()]
        (out / "report.md").write_text("\n".join(body))

    def files(self, trainer: pl.Trainer | None = None) -> dict[str, Path]:
        """The report's files that exist, by their path inside the report folder: ``report.md``,
        ``summary.json`` and ``figures/*.png``."""
        out = self.directory(trainer)
        found = [out / "report.md", out / "summary.json", *sorted((out / "figures").glob("*.png"))]
        return {p.relative_to(out).as_posix(): p for p in found if p.is_file()}

    def log_to_wandb(self, trainer: pl.Trainer) -> None:
        """Log every table and the report's files (artifact ``report-<run id>``) to each W&B logger (rank zero)."""
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not trainer.is_global_zero or not loggers:
            return
        files = self.files(trainer)
        for logger in loggers:
            tables = {key: table.wandb_table() for key, table in self.tables().items()}
            log_report(logger, tables, files, step=trainer.global_step)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._collect(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._collect(trainer)
            self.write(trainer)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._collect(trainer)
        self.write(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._collect(trainer)
        self.write(trainer)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._collect(trainer)
        self.write(trainer)
        # The end of the run: Lightning calls callbacks' teardown before the loggers' finalize.
        self.log_to_wandb(trainer)


def find_report(trainer: pl.Trainer) -> ReportWriter | None:
    """The run's :class:`ReportWriter`, if one is among the trainer's callbacks."""
    for cb in trainer.callbacks:
        if isinstance(cb, ReportWriter):
            return cb
    return None
