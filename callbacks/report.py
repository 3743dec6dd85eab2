"""The run's report folder: ``summary.json`` (final value of every logged metric), ``report.md``, PNGs."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from callbacks.paper_numbers import PAPER, published

PUBLISHED_SECTION = "Published numbers (from the paper, not measured here)"


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


class ReportWriter(Callback):
    """Collects metrics and Markdown sections of a run and writes them to ``report_dir``.

    ``summary.json`` holds the last value of every metric that reached ``trainer.callback_metrics``
    or was added with :meth:`add_metrics` (flat keys such as ``val/acc`` or
    ``adv2/rts/adv2/l1``); ``report.md`` joins the sections that evaluation callbacks add.
    Only global rank zero writes files.

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
        self.sections: dict[str, str] = {}
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

    def add_section(self, name: str, markdown: str) -> None:
        """Add or replace a named Markdown section of ``report.md``."""
        self.sections[name] = markdown.strip() + "\n"

    def published_section(self) -> str:
        """Markdown table ``metric | ours | paper`` over every key with a published number ("–": not measured)."""
        paper = published(self.paper_reference)
        lines = [
            f"## {PUBLISHED_SECTION}",
            "",
            f"Reference `{self.paper_reference}`: numbers printed in the paper's tables (see"
            " callbacks/paper_numbers.py for the table of each), beside this run's. Rates are fractions.",
            "",
            f"| metric | ours | paper ({PAPER}) |",
            "|---|---|---|",
        ]
        for key in sorted(paper):
            ours = f"{self.metrics[key]:.3f}" if key in self.metrics else "–"
            lines.append(f"| `{key}` | {ours} | {_as_printed(paper[key])} |")
        return "\n".join(lines) + "\n"

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
        body = ["# Report", ""]
        body += [self.sections[k] for k in self.sections]
        if self.paper_reference is not None:
            body.append(self.published_section())
        (out / "report.md").write_text("\n".join(body))

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


def find_report(trainer: pl.Trainer) -> ReportWriter | None:
    """The run's :class:`ReportWriter`, if one is among the trainer's callbacks."""
    for cb in trainer.callbacks:
        if isinstance(cb, ReportWriter):
            return cb
    return None
