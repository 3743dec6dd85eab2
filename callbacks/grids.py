"""Image grids of benign and adversarial inputs with their maps (paper Figures 4 and 16)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger
from torch import Tensor
from torchmetrics import Metric

from callbacks.adv2 import ATTACK_NAMES, INTERPRETER_FREE, benign_maps
from callbacks.evaluation import EvalBatch, EvaluationCallback, resolve_interpreters
from callbacks.figures import heat, save_grid
from callbacks.report import find_report
from callbacks.transfer import PGD, adversarial_maps, source_attack


def rgb(x: Tensor) -> Tensor:
    """Images (B, C, H, W) as RGB (B, 3, H, W): one channel is repeated, others kept."""
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]


def class_names(trainer: pl.Trainer) -> list[str] | None:
    """The datamodule's class names in label order (its ``classes``), or None when it has none."""
    names = getattr(trainer.datamodule, "classes", None)
    return [str(n) for n in names] if names else None


def class_name(names: list[str] | None, label: int) -> str:
    """The name of class ``label``, or the index when there are no names for it."""
    return names[label] if names is not None and 0 <= label < len(names) else str(label)


@dataclass
class Grid:
    """One figure's content: tiles (R, C, 3, H, W) with column titles, the columns that show adversarial
    inputs or their maps (labelled with the target class), true and target classes per row (R,)."""

    tiles: Tensor
    titles: list[str]
    adversarial: set[int]
    y: Tensor
    target: Tensor

    def row_labels(self, names: list[str] | None) -> list[str]:
        return [f"true: {class_name(names, int(c))}" for c in self.y]

    def tile_labels(self, names: list[str] | None) -> list[list[str]]:
        cols = range(len(self.titles))
        return [
            [f"target: {class_name(names, int(t))}" if c in self.adversarial else "" for c in cols]
            for t in self.target
        ]


class ImageGrids(EvaluationCallback):
    """PNG grids of inputs and maps, like the paper's Figure 4 (and Figure 16 with ``compare``).

    Figure 4 (``<report dir>/figures/<name>_attacks.png``): one row per image; columns: the input,
    then for each interpreter its benign map (true class), the map of the PGD input, the ADV² input
    (against that interpreter) and its map (target class). Figure 16 (``<name>_compare.png``, with
    ``compare``, e.g. ``["rts", "rtsa"]``): the input, the benign map of each compared interpreter, then
    for each the ADV² input against it and its map. Maps are drawn with a jet-like colour ramp (blue 0 to
    red 1, shown by a colour bar); tiles are enlarged to at least 96 pixels (nearest neighbour),
    columns carry titles (e.g. "GRAD benign map", "ADV² input vs GRAD"), rows the true class and the
    columns of adversarial inputs and maps the target class (names from the datamodule's ``classes``, else
    indices).

    The grids are written on global rank zero from its own share of the images (other ranks compute
    nothing: no collective is involved), logged with ``WandbLogger.log_image`` and linked from the
    report. Adversarial inputs and maps come from the round's cache, so with the same
    ``attack_kwargs`` as :class:`~callbacks.adv2.ADV2Evaluation` no attack runs twice. No metrics.

    Args:
        interpreters: interpreters of the Figure 4 grid.
        compare: interpreters of the Figure 16 grid (None: no such grid).
        attack_kwargs: settings per attack, as in ``ADV2Evaluation``.
        interpreter_kwargs: settings per registry interpreter.
        name: file and section name.
        num_images: images (rows) of the grids over all ranks (default 8).
        batch_size, every_n_epochs, split, seed, progress: see ``EvaluationCallback``.

    Example:
        >>> cb = ImageGrids(interpreters=["grad", "cam", "rts", "mask"], compare=["rts", "rtsa"])
        >>> pl.Trainer(inference_mode=False, callbacks=[ReportWriter(), cb]).validate(model, datamodule=dm)
    """

    name = "grids"

    def __init__(
        self,
        interpreters: list[str] = ("grad", "cam", "rts", "mask"),
        compare: list[str] | None = None,
        attack_kwargs: dict[str, dict[str, Any]] | None = None,
        interpreter_kwargs: dict[str, dict[str, Any]] | None = None,
        name: str = "grids",
        num_images: int = 8,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_images=num_images, **kwargs)
        if PGD in interpreters or (compare and PGD in compare):
            raise ValueError(f"{PGD!r} is an attack, not an interpreter")
        self.check_settings(interpreters, interpreter_kwargs, attack_kwargs or {}, ATTACK_NAMES, INTERPRETER_FREE,
                            compare=compare)
        self.interpreters = list(interpreters)
        self.compare = list(compare) if compare else None
        self.attack_kwargs = attack_kwargs or {}
        self.interpreter_kwargs = interpreter_kwargs or {}
        self.name = name
        self._grids: dict[str, Grid] = {}

    def evaluate(self, trainer, pl_module, classifier, batches: list[EvalBatch]) -> dict[str, Metric]:
        self._grids = {}
        if not trainer.is_global_zero:
            return {}
        names = list(dict.fromkeys(self.interpreters + (self.compare or [])))
        interps = resolve_interpreters(pl_module, names, self.interpreter_kwargs)
        attacks, compares = [], []
        with self.bar(trainer, len(batches), "image grids") as bar:
            for batch in batches:
                attacks.append(self._attack_columns(trainer, classifier, interps, batch))
                if self.compare:
                    compares.append(self._compare_columns(trainer, classifier, interps, batch))
                bar.update(1)
        if not batches:
            return {}
        y = torch.cat([b.y for b in batches]).cpu()
        target = torch.cat([b.target for b in batches]).cpu()
        titles, adversarial = ["input"], set()
        for name in self.interpreters:
            shown = name.upper()
            adversarial |= {len(titles) + 1, len(titles) + 2, len(titles) + 3}
            titles += [f"{shown}\nbenign map", f"{shown}\nPGD map", f"ADV² input\nvs {shown}", f"{shown}\nADV² map"]
        self._grids["attacks"] = Grid(torch.cat(attacks).cpu(), titles, adversarial, y, target)
        if compares:
            titles = ["input"] + [f"{n.upper()}\nbenign map" for n in self.compare]
            adversarial = set(range(len(titles), len(titles) + 2 * len(self.compare)))
            for name in self.compare:
                titles += [f"ADV² input\nvs {name.upper()}", f"{name.upper()}\nADV² map"]
            self._grids["compare"] = Grid(torch.cat(compares).cpu(), titles, adversarial, y, target)
        return {}

    def _attack_columns(self, trainer, classifier, interps, batch: EvalBatch) -> Tensor:
        """The Figure 4 tiles of one batch, (B, 1 + 4·interpreters, 3, H, W)."""
        pgd = source_attack(trainer, classifier, PGD, interps, batch, self.attack_kwargs)
        cols = [rgb(batch.x)]
        for name in self.interpreters:
            interp = interps[name]
            adv2 = source_attack(trainer, classifier, name, interps, batch, self.attack_kwargs)
            cols += [
                heat(benign_maps(trainer, name, interp, batch)),
                heat(adversarial_maps(trainer, name, interp, PGD, pgd, batch)),
                rgb(adv2.x_adv),
                heat(adversarial_maps(trainer, name, interp, name, adv2, batch)),
            ]
        return torch.stack(cols, dim=1)

    def _compare_columns(self, trainer, classifier, interps, batch: EvalBatch) -> Tensor:
        """The Figure 16 tiles of one batch, (B, 1 + 3·compared, 3, H, W)."""
        cols = [rgb(batch.x)] + [heat(benign_maps(trainer, n, interps[n], batch)) for n in self.compare]
        for name in self.compare:
            adv2 = source_attack(trainer, classifier, name, interps, batch, self.attack_kwargs)
            cols += [rgb(adv2.x_adv), heat(adversarial_maps(trainer, name, interps[name], name, adv2, batch))]
        return torch.stack(cols, dim=1)

    def publish(self, trainer: pl.Trainer, values: dict[str, Tensor]) -> None:
        """Write the PNGs, log them to W&B with captions and link them from the report (rank zero)."""
        if not trainer.is_global_zero or not self._grids:
            return
        report = find_report(trainer)
        root = report.directory(trainer) if report is not None else Path(trainer.default_root_dir) / "report"
        (root / "figures").mkdir(parents=True, exist_ok=True)
        rows = (" Rows: one image each, labelled with its true class; the columns of adversarial inputs and their"
                " maps name the attack's target class. Maps: blue 0 (unimportant) to red 1 (important).")
        captions = {
            "attacks": f"Input; per interpreter ({', '.join(self.interpreters)}): benign map (true class), map of"
            " the PGD input, ADV² input against that interpreter, its map (paper Figure 4)." + rows,
            "compare": f"Input; benign maps of {', '.join(self.compare or [])}; per interpreter: the ADV² input"
            " against it and its map (paper Figure 16)." + rows,
        }
        names = class_names(trainer)
        parts = [f"## Image grids ({self.name})"]
        for kind, grid in self._grids.items():
            path = root / "figures" / f"{self.name}_{kind}.png"
            save_grid(path, grid.tiles, grid.titles, grid.row_labels(names), tile_labels=grid.tile_labels(names))
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    key, caption = f"{self.name}/{kind}", [captions[kind]]
                    logger.log_image(key, [str(path)], step=trainer.global_step, caption=caption)
            parts += [captions[kind], f"![{self.name} {kind}](figures/{path.name})"]
        if report is not None:
            report.add_section(self.name, *parts)
