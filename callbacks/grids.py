"""Image grids of benign and adversarial inputs with their maps (paper Figures 4 and 16)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger
from torch import Tensor
from torchmetrics import Metric
from torchvision.utils import save_image

from callbacks.adv2 import ATTACK_NAMES, INTERPRETER_FREE, benign_maps
from callbacks.evaluation import EvalBatch, EvaluationCallback, resolve_interpreters
from callbacks.report import find_report
from callbacks.transfer import PGD, adversarial_maps, source_attack


def heat(maps: Tensor) -> Tensor:
    """A jet-like colour ramp: maps (B, 1, H, W) in [0, 1] -> RGB (B, 3, H, W) in [0, 1] (0 blue, 1 red)."""
    v = maps.clamp(0, 1)
    centres = torch.tensor([3.0, 2.0, 1.0], device=v.device, dtype=v.dtype).view(1, 3, 1, 1)
    return (1.5 - (4 * v - centres).abs()).clamp(0, 1)


def rgb(x: Tensor) -> Tensor:
    """Images (B, C, H, W) as RGB (B, 3, H, W): one channel is repeated, others kept."""
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]


def grid_rows(columns: list[Tensor]) -> Tensor:
    """Columns of (B, 3, H, W) tiles -> (B·len(columns), 3, H, W) in row order (one row per image)."""
    return torch.stack(columns, dim=1).flatten(0, 1)


class ImageGrids(EvaluationCallback):
    """PNG grids of inputs and maps, like the paper's Figure 4 (and Figure 16 with ``compare``).

    Figure 4 (``<report dir>/figures/<name>_attacks.png``): one row per image; columns: the input,
    then for each interpreter its benign map (true class), the map of the PGD input, the ADV² input
    (against that interpreter) and its map (target class). Figure 16 (``<name>_compare.png``, with
    ``compare``, e.g. ``["rts", "rtsa"]``): the input, the benign map of each compared interpreter, then
    for each the ADV² input against it and its map. Maps are drawn with a jet-like colour ramp.

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
        self._grids: dict[str, tuple[Tensor, int]] = {}

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
        if attacks:
            self._grids["attacks"] = (torch.cat(attacks).cpu(), 1 + 4 * len(self.interpreters))
        if compares:
            self._grids["compare"] = (torch.cat(compares).cpu(), 1 + 3 * len(self.compare))
        return {}

    def _attack_columns(self, trainer, classifier, interps, batch: EvalBatch) -> Tensor:
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
        return grid_rows(cols)

    def _compare_columns(self, trainer, classifier, interps, batch: EvalBatch) -> Tensor:
        cols = [rgb(batch.x)] + [heat(benign_maps(trainer, n, interps[n], batch)) for n in self.compare]
        for name in self.compare:
            adv2 = source_attack(trainer, classifier, name, interps, batch, self.attack_kwargs)
            cols += [rgb(adv2.x_adv), heat(adversarial_maps(trainer, name, interps[name], name, adv2, batch))]
        return grid_rows(cols)

    def publish(self, trainer: pl.Trainer, values: dict[str, Tensor]) -> None:
        """Write the PNGs, log them to W&B and link them from the report (rank zero)."""
        if not trainer.is_global_zero or not self._grids:
            return
        report = find_report(trainer)
        root = report.directory(trainer) if report is not None else Path(trainer.default_root_dir) / "report"
        (root / "figures").mkdir(parents=True, exist_ok=True)
        captions = {
            "attacks": f"Input; per interpreter ({', '.join(self.interpreters)}): benign map, map of the PGD"
            " input, ADV² input, ADV² map (paper Figure 4).",
            "compare": f"Input; benign maps of {', '.join(self.compare or [])}; per interpreter: the ADV²"
            " input against it and its map (paper Figure 16).",
        }
        lines = [f"## Image grids ({self.name})", ""]
        for kind, (tiles, ncols) in self._grids.items():
            path = root / "figures" / f"{self.name}_{kind}.png"
            save_image(tiles, path, nrow=ncols, padding=1, pad_value=1.0)
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    key, caption = f"{self.name}/{kind}", [captions[kind]]
                    logger.log_image(key, [str(path)], step=trainer.global_step, caption=caption)
            lines += [captions[kind], "", f"![{self.name} {kind}](figures/{path.name})", ""]
        if report is not None:
            report.add_section(self.name, "\n".join(lines))
