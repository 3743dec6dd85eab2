"""Detectability of PGD, ADV² and adaptive ADV² by feature squeezing (paper §4 Q3, Tables 4–5)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import MeanMetric, Metric

from aid.defenses import FeatureSqueezingDetector, Squeezer, build_squeezer
from aid.metrics import MapDistance
from callbacks.adv2 import ATTACK_NAMES, INTERPRETER_FREE, benign_maps, merged_kwargs, run_attack
from callbacks.evaluation import EvalBatch, EvaluationCallback, resolve_interpreters
from callbacks.noise import calibration_images
from callbacks.report import ReportWriter
from callbacks.settings import check_choices
from callbacks.tables import ReportTable, percent, two_decimals

ADAPTIVE = "adv2_adaptive"


class SqueezeDetection(EvaluationCallback):
    """Detection rate of adversarial inputs by a feature-squeezing detector (Table 4; Table 5's maps).

    The detector (:class:`~aid.defenses.FeatureSqueezingDetector`) is fitted on ``calibration_images``
    benign images of the validation split (correct or not; the same on every rank): each squeezer's
    threshold flags a fraction ``fpr`` of them. For each attack it logs
    ``squeeze/<squeezer>/<attack>/detection_rate``: the share of *successful* adversarial examples
    (those the classifier puts in the target class; a failed example is no threat) that the squeezer
    flags with its own threshold. ``<squeezer>`` is the squeezer's full name (``bit_depth_5``,
    ``median_3x3``, ``nlm_11_3_4``).

    - Interpreter-free attacks (``pgd``, ``stadv``) have one key each.
    - Attacks on an interpreter (``adv2``, ...) target the first interpreter under the key above; other
      interpreters get ``squeeze/<squeezer>/<attack>_<interpreter>/detection_rate``.
    - ``adv2_adaptive`` (Algorithm 2) runs once per squeezer, adapted to that squeezer, and is detected
      by that squeezer; it also logs ``adv2/<interpreter>/adv2_adaptive/{l1, iou}`` (adaptive maps vs
      benign maps over successful examples, pooled over the squeezers: Table 5).
    - ``squeeze/<squeezer>/benign/detection_rate``: the false-positive rate on the evaluation images.

    Adversarial examples of the non-adaptive attacks come from the round's cache (same settings as
    :class:`~callbacks.adv2.ADV2Evaluation`: no attack runs twice).

    Args:
        interpreters: interpreters the ADV² attacks target (the first one names the plain keys).
        squeezers: registry names (``bit_depth``, ``median``, ``nlm``, with their defaults) or full
            names (``bit_depth_2``, ``median_3x3``, ``nlm_11_3_4``), see :func:`aid.defenses.build_squeezer`
            (default: Table 4's rows, 2- and 3-bit depth, 3×3 median, non-local means 11-3-4).
        attacks: among ``pgd``, ``adv2``, ``stadv``, ``adv2_stadv``, ``adv2_adaptive``.
        fpr: false-positive rate the thresholds are set for on the benign fitting images (default 0.05).
        calibration_images: benign validation images the detector is fitted on (default 256).
        attack_kwargs: settings per attack, as in ``ADV2Evaluation``.
        interpreter_kwargs: settings per registry interpreter.
        num_images, batch_size, every_n_epochs, split, seed, progress: see ``EvaluationCallback``.

    Example:
        >>> cb = SqueezeDetection(interpreters=["rts"], squeezers=["bit_depth_2", "median_3x3", "nlm_11_3_4"])
        >>> pl.Trainer(inference_mode=False, callbacks=[ReportWriter(), cb]).validate(model, datamodule=dm)
    """

    name = "squeeze"

    def __init__(
        self,
        interpreters: list[str] = ("rts",),
        squeezers: list[str] = ("bit_depth_2", "bit_depth_3", "median_3x3", "nlm_11_3_4"),
        attacks: list[str] = ("pgd", "adv2", ADAPTIVE),
        fpr: float = 0.05,
        calibration_images: int = 256,
        attack_kwargs: dict[str, dict[str, Any]] | None = None,
        interpreter_kwargs: dict[str, dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_choices(type(self).__name__, "attacks", attacks, ATTACK_NAMES)
        self.check_settings(interpreters, interpreter_kwargs, attack_kwargs or {}, ATTACK_NAMES, INTERPRETER_FREE)
        if not interpreters:
            raise ValueError("give at least one interpreter")
        if not 0 < fpr < 1:
            raise ValueError(f"fpr must lie in (0, 1), got {fpr}")
        if calibration_images <= 0:
            raise ValueError(f"calibration_images must be > 0, got {calibration_images}")
        self.interpreters = list(interpreters)
        self.squeezers = [build_squeezer(s) for s in squeezers]  # fails early on a wrong name
        self.attacks = list(attacks)
        self.fpr = float(fpr)
        self.calibration_images = calibration_images
        self.attack_kwargs = attack_kwargs or {}
        self.interpreter_kwargs = interpreter_kwargs or {}

    def plan(self) -> list[tuple[str, str, str | None, str, dict[str, Any], list[Squeezer]]]:
        """The attack runs on each batch: (column, attack, interpreter or None, cache target kind,
        attack settings, squeezers that judge the result)."""
        jobs = []
        for attack in self.attacks:
            if attack in INTERPRETER_FREE:
                kwargs = merged_kwargs(self.attack_kwargs, attack, None)
                jobs.append((attack, attack, None, "benign", kwargs, self.squeezers))
                continue
            for i, name in enumerate(self.interpreters):
                col = attack if i == 0 else f"{attack}_{name}"
                kwargs = merged_kwargs(self.attack_kwargs, attack, name)
                if attack != ADAPTIVE:
                    jobs.append((col, attack, name, "benign", kwargs, self.squeezers))
                    continue
                # One adaptive attack per squeezer; the cache key's target kind carries the squeezer.
                for sq in self.squeezers:
                    jobs.append((col, attack, name, f"benign|{sq.name}", {**kwargs, "squeezer": sq}, [sq]))
        return jobs

    def columns(self) -> list[str]:
        """The ``<attack>`` parts of the metric keys, in table order."""
        return list(dict.fromkeys(["benign"] + [job[0] for job in self.plan()]))

    def fit_detector(self, trainer, classifier, device: torch.device) -> FeatureSqueezingDetector:
        """The detector fitted on the benign validation images (deterministic: the same on every rank)."""
        x = calibration_images(trainer, self.calibration_images, self.seed, device)
        return FeatureSqueezingDetector(classifier, self.squeezers, self.fpr).fit(x.split(self.batch_size))

    def evaluate(self, trainer, pl_module, classifier, batches: list[EvalBatch]) -> dict[str, Metric]:
        device = pl_module.device
        interps = resolve_interpreters(pl_module, self.interpreters, self.interpreter_kwargs)
        detector = self.fit_detector(trainer, classifier, device)
        # Every key exists on every rank (even one without images): ranks compute the same metrics in order.
        metrics: dict[str, Metric] = {
            f"squeeze/{sq.name}/{col}/detection_rate": MeanMetric().to(device)
            for sq in self.squeezers
            for col in self.columns()
        }
        if ADAPTIVE in self.attacks:
            for n in self.interpreters:
                metrics.update({f"adv2/{n}/{ADAPTIVE}/{k}": MapDistance(k).to(device) for k in ("l1", "iou")})

        def detect(col: str, x: Tensor, success: Tensor, squeezers: list[Squeezer]) -> None:
            scores = detector.scores(x)
            for sq in squeezers:
                flagged = scores[sq.name] > detector.thresholds[sq.name].to(x.device)
                # Weighted by success: the rate over successful adversarial examples only.
                metrics[f"squeeze/{sq.name}/{col}/detection_rate"].update(flagged.float(), success.float())

        jobs = self.plan()
        with self.bar(trainer, len(batches) * (1 + len(jobs)), "squeeze detection") as bar:
            for batch in batches:
                detect("benign", batch.x, torch.ones_like(batch.y, dtype=torch.bool), self.squeezers)
                bar.update(1)
                for col, attack, name, kind, kw, squeezers in jobs:
                    interp = interps[name] if name is not None else None
                    benign = benign_maps(trainer, name, interp, batch) if interp is not None else None
                    result = run_attack(trainer, classifier, attack, name, interp, batch, benign, kind, kw)
                    detect(col, result.x_adv, result.success, squeezers)
                    if attack == ADAPTIVE:
                        adv = result.maps if result.maps is not None else interp(result.x_adv, batch.target)
                        for k in ("l1", "iou"):
                            metrics[f"adv2/{name}/{ADAPTIVE}/{k}"].update(adv, benign, result.success)
                    bar.update(1)
        return metrics

    def write_report(self, trainer, report: ReportWriter, values: dict[str, float]) -> None:
        cols = self.columns()
        # Table 5 also shows PGD / ADV² maps when the ADV² evaluation logged them in this run.
        known = {**report.metrics, **values}
        rows = [[sq.name, *(known.get(f"squeeze/{sq.name}/{c}/detection_rate") for c in cols)] for sq in self.squeezers]
        parts = [
            "## Feature squeezing (paper Tables 4–5)",
            "Detection rate over successful adversarial examples; the thresholds flag"
            f" {100 * self.fpr:g}% of {self.calibration_images} benign validation images (`benign`: the rate"
            f" on the evaluation images). Attacks without a suffix target `{self.interpreters[0]}`;"
            f" `{ADAPTIVE}` is adapted to each row's squeezer.",
            ReportTable("detection_rate", ["squeezer", *cols], rows, fmt=percent),
        ]
        if ADAPTIVE in self.attacks:
            attacks = ["pgd", "adv2", ADAPTIVE]
            rows = [[n, *(known.get(f"adv2/{n}/{a}/{m}") for m in ("l1", "iou") for a in attacks)]
                    for n in self.interpreters]
            columns = ["interpreter", "L1 P", "L1 A", "L1 A*", "IoU P", "IoU A", "IoU A*"]
            parts += [
                "Maps of adversarial inputs vs benign maps (Table 5; P: PGD, A: ADV², A*: adaptive ADV²).",
                ReportTable("maps", columns, rows, fmt=two_decimals),
            ]
        report.add_section(self.name, *parts)
