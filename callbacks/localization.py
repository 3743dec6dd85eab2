"""Localisation of the object by each interpreter against ground-truth masks (a Table 2 analogue)."""

from __future__ import annotations

from typing import Any

from pytorch_lightning.utilities import rank_zero_warn
from torchmetrics import Metric

from aid.metrics import Localization, MapDistance
from callbacks.adv2 import benign_maps
from callbacks.evaluation import EvalBatch, EvaluationCallback, resolve_interpreters
from callbacks.report import ReportWriter
from callbacks.tables import ReportTable


class LocalizationEvaluation(EvaluationCallback):
    """``localization/<interpreter>/{iou, energy}`` of benign maps against the data's object masks.

    iou: IoU of the map binarised at the object's own area with the object mask; energy: share of the
    map's mass inside the object (see :func:`aid.metrics.localization`). Needs a datamodule with masks
    (the shapes data); images whose mask is empty do not count (NaN, with a warning, when none has
    one). With ``compare`` (e.g. ``["rts", "rtsa"]``) it also logs the benign L1 between the two
    interpreters' maps as ``localization/<a>_vs_<b>/l1``.

    Args:
        interpreters: interpreter names (module's own or registry names).
        interpreter_kwargs: settings per registry interpreter.
        compare: optional pair of interpreter names whose benign maps are compared.
        other args: see ``EvaluationCallback``.

    Example (config)::

        - class_path: callbacks.localization.LocalizationEvaluation
          init_args: {interpreters: [rts, rtsa], compare: [rts, rtsa]}
    """

    name = "localization"

    def __init__(
        self,
        interpreters: list[str] = ("grad", "cam", "rts", "mask"),
        interpreter_kwargs: dict[str, dict[str, Any]] | None = None,
        compare: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if compare is not None and len(compare) != 2:
            raise ValueError(f"compare must name two interpreters, got {compare}")
        self.check_settings(interpreters, interpreter_kwargs, compare=compare)
        self.interpreters = list(interpreters)
        self.interpreter_kwargs = interpreter_kwargs or {}
        self.compare = list(compare) if compare else None

    def evaluate(self, trainer, pl_module, classifier, batches: list[EvalBatch]) -> dict[str, Metric]:
        if self.interpreters and not getattr(trainer.datamodule, "has_masks", True):
            rank_zero_warn(
                "LocalizationEvaluation: the data has no ground-truth object masks, so localization/* is NaN; "
                "give the data masks (ImageFolderDataModule's mask_root) or drop the callback"
            )
        names = list(dict.fromkeys(self.interpreters + (self.compare or [])))
        interps = resolve_interpreters(pl_module, names, self.interpreter_kwargs)
        locs = {n: Localization().to(pl_module.device) for n in self.interpreters}
        cmp = MapDistance("l1").to(pl_module.device) if self.compare else None
        with self.bar(trainer, len(batches) * len(names), "localization") as bar:
            for batch in batches:
                maps = {}
                for n in names:
                    maps[n] = benign_maps(trainer, n, interps[n], batch)
                    if n in locs:  # images without a ground-truth mask (all zero) do not count
                        locs[n].update(maps[n], batch.mask, valid_mask=batch.mask.flatten(1).any(dim=1))
                    bar.update(1)
                if cmp is not None:
                    cmp.update(maps[self.compare[0]], maps[self.compare[1]])
        metrics: dict[str, Metric] = {}
        for n, loc in locs.items():
            metrics[f"localization/{n}"] = loc
        if cmp is not None:
            metrics[f"localization/{self.compare[0]}_vs_{self.compare[1]}/l1"] = cmp
        return metrics

    def write_report(self, trainer, report: ReportWriter, values: dict[str, float]) -> None:
        rows = [[n, values.get(f"localization/{n}/iou"), values.get(f"localization/{n}/energy")]
                for n in self.interpreters]
        parts = [
            "## Localisation against ground-truth object masks",
            "IoU of each benign map (binarised at the object's area) with the object mask, and the share of"
            " map energy inside the object.",
            ReportTable("localization", ["interpreter", "iou", "energy"], rows),
        ]
        if self.compare:
            key = f"localization/{self.compare[0]}_vs_{self.compare[1]}/l1"
            parts.append(f"Benign L1 between {self.compare[0]} and {self.compare[1]} maps: {values[key]:.4f}")
        report.add_section(self.name, *parts)
