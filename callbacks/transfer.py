"""Transferability of ADV² across interpreters (paper §5 "Attack Transferability", Table 9)."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from torch import Tensor
from torchmetrics import Metric

from aid.attacks import AttackResult
from aid.interpreters import Interpreter
from aid.metrics import MapDistance
from callbacks.adv2 import ATTACK_NAMES, INTERPRETER_FREE, benign_maps, merged_kwargs, run_attack
from callbacks.attack_cache import batch_key, cached, interpreter_key
from callbacks.evaluation import EvalBatch, EvaluationCallback, resolve_interpreters
from callbacks.report import ReportWriter
from callbacks.tables import ReportTable

PGD = "pgd"


def source_attack(
    trainer: pl.Trainer,
    classifier,
    source: str,
    interps: dict[str, Interpreter],
    batch: EvalBatch,
    attack_kwargs: dict[str, dict[str, Any]],
) -> AttackResult:
    """The round's adversarial batch of ``source``: PGD, or ADV² against interpreter ``source`` with the
    benign map as target (the ADV² evaluation's default, so the round's cache shares the examples)."""
    if source == PGD:
        kwargs = merged_kwargs(attack_kwargs, PGD, None)
        return run_attack(trainer, classifier, PGD, None, None, batch, None, "benign", kwargs)
    interp = interps[source]
    benign = benign_maps(trainer, source, interp, batch)
    kwargs = merged_kwargs(attack_kwargs, "adv2", source)
    return run_attack(trainer, classifier, "adv2", source, interp, batch, benign, "benign", kwargs)


def adversarial_maps(
    trainer: pl.Trainer, name: str, interp: Interpreter, source: str, result: AttackResult, batch: EvalBatch
) -> Tensor:
    """Maps (B, 1, H, W) by interpreter ``name`` of ``source``'s adversarial batch for the target classes,
    cached for the round (the attacked interpreter's own maps come with the attack result)."""
    if source == name and result.maps is not None:
        return result.maps
    # ``result`` is held by the round's cache, so its id names these examples (whatever their settings).
    key = ("adversarial maps", name, interpreter_key(interp), id(result), batch_key(batch))
    return cached(trainer, key, lambda: interp(result.x_adv, batch.target).detach())


def matrix_table(
    values: dict[str, float], rows: list[str], cols: list[str], metric: str, lower_is_better: bool
) -> ReportTable:
    """The table ``transfer/<row>/<col>/<metric>`` (rows: sources, columns: targets), the best entry of each
    column in bold."""
    cells = [[r, *(values.get(f"transfer/{r}/{c}/{metric}") for c in cols)] for r in rows]
    bold = set()
    for j in range(1, len(cols) + 1):
        found = [(v, i) for i, row in enumerate(cells) if (v := row[j]) is not None and v == v]
        if found:
            best = (min if lower_is_better else max)(v for v, _ in found)
            bold |= {(i, j) for v, i in found if v == best}
    return ReportTable(metric, ["source \\ target", *cols], cells, bold=bold)


class Transferability(EvaluationCallback):
    """Do adversarial inputs crafted against one interpreter fool another? (Table 9).

    For every source ``s`` (each interpreter, attacked with ADV² with its benign map as target, and
    ``pgd``, which attacks no interpreter) and every target interpreter ``t`` it logs
    ``transfer/<s>/<t>/l1`` and ``transfer/<s>/<t>/iou``: the distance between t's map of the
    adversarial input (for the target class) and t's benign map (for the true class), over the
    examples on which the source attack succeeded. The diagonal is ADV²'s own result; a low
    transferability shows as off-diagonal values close to the PGD row.

    Adversarial examples come from the round's attack cache (``run_attack``), so with the same
    ``attack_kwargs`` as :class:`~callbacks.adv2.ADV2Evaluation` (target map ``benign``) no attack runs twice.

    Args:
        interpreters: interpreter names, sources and targets alike.
        attack_kwargs: settings per attack, as in ``ADV2Evaluation`` (``{"pgd": {...}, "adv2": {...},
            "adv2.rts": {...}}``).
        interpreter_kwargs: settings per registry interpreter (``{"mask": {"iterations": 100}}``).
        num_images, batch_size, every_n_epochs, split, seed, progress: see ``EvaluationCallback``.

    Example:
        >>> cb = Transferability(interpreters=["grad", "cam", "rts", "mask"])
        >>> pl.Trainer(inference_mode=False, callbacks=[ReportWriter(), cb]).validate(model, datamodule=dm)
    """

    name = "transfer"

    def __init__(
        self,
        interpreters: list[str] = ("grad", "cam", "rts", "mask"),
        attack_kwargs: dict[str, dict[str, Any]] | None = None,
        interpreter_kwargs: dict[str, dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if PGD in interpreters:
            raise ValueError(f"{PGD!r} is the baseline row, not an interpreter")
        self.check_settings(interpreters, interpreter_kwargs, attack_kwargs or {}, ATTACK_NAMES, INTERPRETER_FREE)
        self.interpreters = list(interpreters)
        self.attack_kwargs = attack_kwargs or {}
        self.interpreter_kwargs = interpreter_kwargs or {}

    @property
    def sources(self) -> list[str]:
        """Rows of the matrix: the interpreters (ADV² against each), then PGD."""
        return [*self.interpreters, PGD]

    def evaluate(self, trainer, pl_module, classifier, batches: list[EvalBatch]) -> dict[str, Metric]:
        interps = resolve_interpreters(pl_module, self.interpreters, self.interpreter_kwargs)
        metrics = {
            f"transfer/{s}/{t}/{kind}": MapDistance(kind).to(pl_module.device)
            for s in self.sources
            for t in self.interpreters
            for kind in ("l1", "iou")
        }
        with self.bar(trainer, len(batches) * len(self.sources), "transferability") as bar:
            for batch in batches:
                for s in self.sources:
                    result = source_attack(trainer, classifier, s, interps, batch, self.attack_kwargs)
                    for t, interp in interps.items():
                        adv = adversarial_maps(trainer, t, interp, s, result, batch)
                        benign = benign_maps(trainer, t, interp, batch)
                        for kind in ("l1", "iou"):
                            metrics[f"transfer/{s}/{t}/{kind}"].update(adv, benign, result.success)
                    bar.update(1)
        return metrics

    def write_report(self, trainer, report: ReportWriter, values: dict[str, float]) -> None:
        report.add_section(
            self.name,
            "## Transferability across interpreters (paper Table 9)",
            "L1 distance between the target interpreter's maps of adversarial (ADV² against the source"
            " interpreter, or PGD) and benign inputs, over successful examples; the lowest of each column"
            " in bold.",
            matrix_table(values, self.sources, self.interpreters, "l1", lower_is_better=True),
            "IoU of the same maps (top-25 % regions); the highest of each column in bold.",
            matrix_table(values, self.sources, self.interpreters, "iou", lower_is_better=False),
        )
