"""ADV² evaluation (paper §4 Q1–Q2, Table 3, Figures 5–6, Table 7): PGD vs ADV² per interpreter."""

from __future__ import annotations

from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor
from torchmetrics import Metric

from aid.attacks import AttackResult, build_attack
from aid.attacks.targets import random_patch_maps
from aid.interpreters import Interpreter
from aid.metrics import AttackSuccessRate, MapDistance, MeanConfidence
from callbacks.attack_cache import batch_key, cached, interpreter_key, settings_key
from callbacks.evaluation import EvalBatch, EvaluationCallback, resolve_interpreters
from callbacks.report import ReportWriter
from callbacks.settings import attack_settings, check_choices
from callbacks.tables import ReportTable

INTERPRETER_FREE = ("pgd", "stadv")  # attacks that only fool the classifier
ATTACK_NAMES = ("pgd", "adv2", "stadv", "adv2_stadv", "adv2_adaptive")
MAP_METRICS = ("l1", "l2", "iou")


def merged_kwargs(table: dict[str, dict[str, Any]], attack: str, interpreter: str | None) -> dict[str, Any]:
    """Settings of ``attack`` for ``interpreter``: ``table[attack]`` updated by ``table[attack.interpreter]``;
    un-suffixed keys that this interpreter's attack does not take are left out
    (:func:`callbacks.settings.attack_settings`)."""
    return attack_settings(table, attack, interpreter)


def benign_maps(trainer: pl.Trainer, name: str, interp: Interpreter, batch: EvalBatch) -> Tensor:
    """Maps of the benign images for their true (= predicted) class, cached for the round."""
    key = ("benign", name, interpreter_key(interp), batch_key(batch))
    return cached(trainer, key, lambda: interp(batch.x, batch.y).detach())


def run_attack(
    trainer: pl.Trainer,
    classifier: torch.nn.Module,
    attack: str,
    interp_name: str | None,
    interp: Interpreter | None,
    batch: EvalBatch,
    target_map: Tensor | None,
    target_kind: str,
    kwargs: dict[str, Any],
) -> AttackResult:
    """Run (or fetch from the round's cache) one attack on one batch."""

    def compute() -> AttackResult:
        # The dataset indices seed each image's random numbers (StAdv's start): an image's example then
        # does not depend on its batch, the number of processes or the device.
        if interp is None:
            atk = build_attack(attack, classifier, **kwargs)
            return atk(batch.x, batch.target, seeds=batch.index)
        atk = build_attack(attack, classifier, interpreter=interp, **kwargs)
        return atk(batch.x, batch.target, target_map, seeds=batch.index)

    # The settings are part of the key: callbacks with different attack or interpreter settings never
    # share examples.
    interp_id = (interp_name, interpreter_key(interp)) if interp is not None else None
    key = ("attack", attack, interp_id, target_kind, settings_key(kwargs), batch_key(batch))
    return cached(trainer, key, compute)


class ADV2Evaluation(EvaluationCallback):
    """ADV² against each interpreter, with PGD (and StAdv) as the baseline.

    For every interpreter ``i`` and attack ``a`` it logs ``<prefix>/<i>/<a>/{asr, mc, l1, l2, iou}``:
    attack success rate, mean target-class confidence of successful examples, and the distance
    between the adversarial map (for the target class) and the benign map (for the true class),
    over successful examples. With ``target_map="patch"`` the ADV² target is a random patch
    (Table 7) and ``l1_target`` (distance to the target map) is logged beside ``l1``.

    Args:
        interpreters: interpreter names (the module's own, e.g. ``rts`` / ``rtsa``, or registry names).
        attacks: among ``pgd``, ``adv2``, ``stadv``, ``adv2_stadv``, ``adv2_adaptive``.
        target_map: ``benign`` (default), ``patch`` (random rectangle / circle).
        attack_kwargs: settings per attack (``{"adv2": {...}, "adv2.rts": {...}}``), checked when the
            callback is built (:mod:`callbacks.settings`): keys ``<attack>`` or ``<attack>.<interpreter>``
            among ``ATTACK_NAMES``, inner keys arguments of the attack that will run. An un-suffixed table's
            key reaches the interpreters whose attack takes it (``n_reset`` reaches MASK's ``ADV2Mask`` only).
            Against MASK, ``estimate`` picks the attack (``"algorithm1"``, the default, ``"unrolled"``,
            ``"minmax"``; :mod:`aid.attacks.adv2_mask`) and the other keys must be its arguments.
        interpreter_kwargs: settings per registry interpreter (``{"mask": {"iterations": 100}}``), checked
            against the interpreter's constructor.
        prefix: first part of the metric names.
        num_images, batch_size, every_n_epochs, split, seed, progress: see ``EvaluationCallback``.

    Example (config)::

        - class_path: callbacks.adv2.ADV2Evaluation
          init_args:
            interpreters: [cam, mask]
            attacks: [pgd, adv2]
            attack_kwargs: {adv2: {steps: 90}, adv2.mask: {estimate: minmax, steps: 300}}
    """

    name = "adv2"

    def __init__(
        self,
        interpreters: list[str] = ("grad", "cam", "rts", "mask"),
        attacks: list[str] = ("pgd", "adv2"),
        target_map: Literal["benign", "patch"] = "benign",
        attack_kwargs: dict[str, dict[str, Any]] | None = None,
        interpreter_kwargs: dict[str, dict[str, Any]] | None = None,
        prefix: str = "adv2",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_choices(type(self).__name__, "attacks", attacks, ATTACK_NAMES)
        self.check_settings(interpreters, interpreter_kwargs, attack_kwargs or {}, ATTACK_NAMES, INTERPRETER_FREE)
        if target_map not in ("benign", "patch"):
            raise ValueError(f"target_map must be 'benign' or 'patch', got {target_map!r}")
        self.interpreters = list(interpreters)
        self.attacks = list(attacks)
        self.target_map = target_map
        self.attack_kwargs = attack_kwargs or {}
        self.interpreter_kwargs = interpreter_kwargs or {}
        self.prefix = prefix
        self.name = prefix

    def evaluate(self, trainer, pl_module, classifier, batches: list[EvalBatch]) -> dict[str, Metric]:
        device = pl_module.device
        interps = resolve_interpreters(pl_module, self.interpreters, self.interpreter_kwargs)
        # Every rank creates every metric, even one with no images, so all ranks reduce the same set.
        metrics: dict[str, Metric] = {}
        for name in interps:
            for attack in self.attacks:
                base = f"{self.prefix}/{name}/{attack}"
                metrics[f"{base}/asr"] = AttackSuccessRate().to(device)
                metrics[f"{base}/mc"] = MeanConfidence().to(device)
                for kind in MAP_METRICS:
                    metrics[f"{base}/{kind}"] = MapDistance(kind).to(device)
                if self.target_map != "benign" and attack not in INTERPRETER_FREE:
                    metrics[f"{base}/l1_target"] = MapDistance("l1").to(device)

        total = len(batches) * len(interps) * len(self.attacks)
        with self.bar(trainer, total, f"{self.prefix} evaluation") as bar:
            for batch in batches:
                for name, interp in interps.items():
                    benign = benign_maps(trainer, name, interp, batch)
                    target = self._target_map(batch, benign)
                    for attack in self.attacks:
                        uses_interp = attack not in INTERPRETER_FREE
                        result = run_attack(
                            trainer,
                            classifier,
                            attack,
                            name,
                            interp if uses_interp else None,
                            batch,
                            target if uses_interp else None,
                            self.target_map,
                            merged_kwargs(self.attack_kwargs, attack, name if uses_interp else None),
                        )
                        adv_maps = (
                            result.maps
                            if uses_interp and result.maps is not None
                            else interp(result.x_adv, batch.target)
                        )
                        base = f"{self.prefix}/{name}/{attack}"
                        ok = result.success
                        metrics[f"{base}/asr"].update(ok)
                        metrics[f"{base}/mc"].update(result.confidence, ok)
                        for kind in MAP_METRICS:
                            metrics[f"{base}/{kind}"].update(adv_maps, benign, ok)
                        if f"{base}/l1_target" in metrics:
                            metrics[f"{base}/l1_target"].update(adv_maps, target, ok)
                        bar.update(1)
        return metrics

    def select(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> dict[str, Tensor]:
        """The selection of :class:`EvaluationCallback`, with each image's random patch when
        ``target_map="patch"``, drawn once for the whole selection (:meth:`selection_generator`)."""
        sel = super().select(trainer, pl_module, split)
        if self.target_map == "patch" and len(sel["index"]):
            gen = self.selection_generator(sel)
            patches = random_patch_maps(len(sel["index"]), tuple(sel["x"].shape[-2:]), generator=gen)
            sel["target_map"] = patches.to(sel["x"])
        return sel

    def _target_map(self, batch: EvalBatch, benign: Tensor) -> Tensor:
        if self.target_map == "benign":
            return benign
        return batch.target_map.to(benign)

    def write_report(self, trainer, report: ReportWriter, values: dict[str, float]) -> None:
        cols = ["asr", "mc", "l1", "l2", "iou"] + (["l1_target"] if self.target_map != "benign" else [])
        rows = [
            [name, attack, *(values.get(f"{self.prefix}/{name}/{attack}/{c}") for c in cols)]
            for name in self.interpreters
            for attack in self.attacks
        ]
        report.add_section(
            self.prefix,
            f"## {self.prefix}: attacks per interpreter (target map: {self.target_map})",
            "Attack success rate (asr), mean target confidence (mc) and the distance between adversarial and"
            " benign maps (l1, l2 per pixel; iou of the top-25% regions), over successful examples"
            " (paper Table 3, Figures 5–6" + (", Table 7" if self.target_map != "benign" else "") + ").",
            ReportTable("attacks", ["interpreter", "attack", *cols], rows),
        )
