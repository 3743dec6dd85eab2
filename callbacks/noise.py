"""Noise sensitivity of interpreters (paper §5 "Attack Robustness", Figure 15): RTS vs RTSA under noise.

Random noise at levels that make the classifier err on a given share of the inputs (the paper: 3 % and
30 %) changes the model's behaviour; an interpreter that follows the model (RTSA) should then change
its map more than one that does not (RTS).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from torchmetrics import MeanMetric, Metric

from aid.metrics import MapDistance
from callbacks.adv2 import benign_maps
from callbacks.evaluation import EvalBatch, EvaluationCallback, _dataset, resolve_interpreters
from callbacks.report import ReportWriter
from callbacks.settings import check_choices
from callbacks.tables import ReportTable

NOISES = ("normal", "uniform")


def calibration_images(
    trainer: pl.Trainer, n: int, seed: int, device: torch.device, split: str = "val"
) -> Tensor:
    """The first ``n`` images (N, C, H, W) of a seeded permutation of ``split``, correct or not.

    Deterministic, so every rank gets the same set without a collective.
    """
    dataset = _dataset(trainer, split)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
    return torch.stack([dataset[int(i)][0] for i in order]).to(device)


def unit_noise(x: Tensor, kind: str, generator: torch.Generator) -> Tensor:
    """Noise of scale 1 shaped like x: standard normal, or uniform on [−1, 1] (half-width 1)."""
    if kind == "normal":
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if kind == "uniform":
        return 2 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1
    raise ValueError(f"noise must be one of {NOISES}, got {kind!r}")


@torch.no_grad()
def predict(classifier: torch.nn.Module, x: Tensor, chunk: int = 256) -> Tensor:
    """Predicted classes (N,) of images x (N, C, H, W), in chunks of ``chunk`` images."""
    return torch.cat([classifier(part).argmax(1) for part in x.split(chunk)])


@torch.no_grad()
def calibrate_sigma(
    classifier: torch.nn.Module,
    x: Tensor,
    noise: Tensor,
    rates: Tensor,
    sigma_max: float = 1.0,
    iterations: int = 14,
    chunk: int = 256,
) -> Tensor:
    """Noise scales σ (L,) at which ``clamp(x + σ·noise, 0, 1)`` changes about ``rates`` (L,) of predictions.

    A bisection on [0, ``sigma_max``] run for all L rates at once (one forward of L·N images per
    iteration). The same ``noise`` (N, C, H, W) is scaled at every σ, so the rate grows smoothly with σ.
    A rate not reached at ``sigma_max`` returns ``sigma_max``.
    """
    clean = predict(classifier, x, chunk)
    lo = torch.zeros_like(rates, dtype=x.dtype)
    hi = torch.full_like(lo, sigma_max)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        noisy = (x[None] + mid.view(-1, 1, 1, 1, 1) * noise[None]).clamp(0, 1).flatten(0, 1)
        changed = (predict(classifier, noisy, chunk) != clean.repeat(len(rates))).view(len(rates), -1)
        below = changed.float().mean(1) < rates.to(x.dtype)
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return (lo + hi) / 2


def level_name(rate: float) -> str:
    """The level of a target rate in metric names: the percentage, ``0.03 -> "3"``, ``0.025 -> "2.5"``."""
    return f"{round(rate * 100, 6):g}"


class NoiseSensitivity(EvaluationCallback):
    """How much each interpreter's map moves when noise changes the classifier's behaviour (Figure 15).

    Per noise type (``normal``: σ is the standard deviation; ``uniform``: σ is the half-width; pixel
    units, the noisy image clamped to [0, 1]) the noise scale is calibrated first: a bisection on σ over
    ``calibration_images`` images of the validation split (correct or not, seeded noise, the same on
    every rank) finds the σ at which the noise changes ``target_rate`` of the classifier's predictions.
    On correctly classified images a changed prediction is a misclassification, so this is the
    paper's "noise that causes 3 % / 30 % misclassification", whatever the model's clean error.

    Then on the evaluation images (correctly classified), for each interpreter, noise and level it logs
    ``noise/<interpreter>/<noise>_<level>/`` with ``<level>`` the target rate in percent (``normal_3``,
    ``normal_30``):

    - ``l1``: mean L1 between the clean map (true class) and the noisy map, over all images;
    - ``l1_misclassified``: the same over the images the noise made misclassified (Figure 15 shows those);
    - ``misclassified``: the share of noisy images the classifier gets wrong.

    The noisy map is taken for the class the classifier predicts on the noisy image: the paper compares
    maps under the model's behaviour change, so an interpreter that follows the model changes its map
    where the prediction changed. The calibrated scales are logged as ``noise/<noise>_<level>/sigma``.

    Args:
        interpreters: interpreter names (the module's own, e.g. ``rts`` / ``rtsa``, or registry names).
        noises: among ``normal``, ``uniform``.
        target_rates: misclassification rates the noise levels are calibrated for (default 3 % and 30 %).
        calibration_images: validation images of the calibration (default 256).
        interpreter_kwargs: settings per registry interpreter.
        num_images, batch_size, every_n_epochs, split, seed, progress: see ``EvaluationCallback``.

    Example:
        >>> cb = NoiseSensitivity(interpreters=["rts", "rtsa"], target_rates=[0.03, 0.30])
        >>> pl.Trainer(inference_mode=False, callbacks=[ReportWriter(), cb]).validate(model, datamodule=dm)
    """

    name = "noise"

    def __init__(
        self,
        interpreters: list[str] = ("rts",),
        noises: list[str] = NOISES,
        target_rates: list[float] = (0.03, 0.30),
        calibration_images: int = 256,
        interpreter_kwargs: dict[str, dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_choices(type(self).__name__, "noises", noises, NOISES)
        self.check_settings(interpreters, interpreter_kwargs)
        if not target_rates or not all(0 < r < 1 for r in target_rates):
            raise ValueError(f"target_rates must lie in (0, 1), got {list(target_rates)}")
        if calibration_images <= 0:
            raise ValueError(f"calibration_images must be > 0, got {calibration_images}")
        self.interpreters = list(interpreters)
        self.noises = list(noises)
        self.target_rates = [float(r) for r in target_rates]
        self.calibration_images = calibration_images
        self.interpreter_kwargs = interpreter_kwargs or {}

    def calibrate(
        self, trainer: pl.Trainer, classifier: torch.nn.Module, device: torch.device
    ) -> dict[str, Tensor]:
        """σ (L,) per noise type for ``target_rates``, on the validation split (same on every rank)."""
        x = calibration_images(trainer, self.calibration_images, self.seed, device)
        rates = torch.tensor(self.target_rates, device=device)
        out = {}
        for k, kind in enumerate(self.noises):
            gen = torch.Generator(device=device).manual_seed(self.seed + 1000 + k)
            out[kind] = calibrate_sigma(classifier, x, unit_noise(x, kind, gen), rates, chunk=self.batch_size)
        return out

    def select(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> dict[str, Tensor]:
        """The selection of :class:`EvaluationCallback` with each image's unit noise of every kind
        (``noise_<k>``), drawn once for the whole selection (:meth:`selection_generator`)."""
        sel = super().select(trainer, pl_module, split)
        if len(sel["index"]):
            x = sel["x"].cpu()
            for k, kind in enumerate(self.noises):
                gen = self.selection_generator(sel, offset=7919 * k)
                sel[f"noise_{k}"] = unit_noise(x, kind, gen).to(sel["x"].device)
        return sel

    def evaluate(self, trainer, pl_module, classifier, batches: list[EvalBatch]) -> dict[str, Metric]:
        device = pl_module.device
        interps = resolve_interpreters(pl_module, self.interpreters, self.interpreter_kwargs)
        sigmas = self.calibrate(trainer, classifier, device)
        # Every key exists on every rank (even one without images): ranks compute the same metrics in order.
        metrics: dict[str, Metric] = {}
        for kind, sigma in sigmas.items():
            for rate, s in zip(self.target_rates, sigma, strict=True):
                level = f"{kind}_{level_name(rate)}"
                metrics[f"noise/{level}/sigma"] = MeanMetric().to(device)
                metrics[f"noise/{level}/sigma"].update(s)  # the same σ on every rank: the mean is σ
                for name in interps:
                    base = f"noise/{name}/{level}"
                    metrics[f"{base}/l1"] = MapDistance("l1").to(device)
                    metrics[f"{base}/l1_misclassified"] = MapDistance("l1").to(device)
                    metrics[f"{base}/misclassified"] = MeanMetric().to(device)
        total = len(batches) * len(sigmas) * len(self.target_rates)
        with self.bar(trainer, total, "noise sensitivity") as bar:
            for batch in batches:
                clean = {n: benign_maps(trainer, n, interp, batch) for n, interp in interps.items()}
                for k, (kind, sigma) in enumerate(sigmas.items()):
                    z = batch.extra[f"noise_{k}"]  # one draw for all levels of this noise
                    for rate, s in zip(self.target_rates, sigma, strict=True):
                        x_noisy = (batch.x + s * z).clamp(0, 1)
                        pred = predict(classifier, x_noisy, self.batch_size)
                        wrong = pred != batch.y
                        for name, interp in interps.items():
                            base = f"noise/{name}/{kind}_{level_name(rate)}"
                            noisy = interp(x_noisy, pred)
                            metrics[f"{base}/l1"].update(noisy, clean[name])
                            metrics[f"{base}/l1_misclassified"].update(noisy, clean[name], wrong)
                            metrics[f"{base}/misclassified"].update(wrong.float())
                        bar.update(1)
        return metrics

    def write_report(self, trainer, report: ReportWriter, values: dict[str, float]) -> None:
        levels = [f"{kind}_{level_name(r)}" for kind in self.noises for r in self.target_rates]
        first = self.interpreters[0]
        rows = [
            ["σ", *(values.get(f"noise/{lvl}/sigma") for lvl in levels)],
            ["misclassified", *(values.get(f"noise/{first}/{lvl}/misclassified") for lvl in levels)],
        ]
        for name in self.interpreters:
            rows.append([name, *(values.get(f"noise/{name}/{lvl}/l1") for lvl in levels)])
            rows.append([f"{name} (misclassified)", *(values.get(f"noise/{name}/{lvl}/l1_misclassified")
                                                      for lvl in levels)])
        columns = ["", *(f"{kind} {level_name(r)}%" for kind in self.noises for r in self.target_rates)]
        report.add_section(
            self.name,
            "## Noise sensitivity (paper Figure 15)",
            "Noise calibrated to misclassify the given share of validation inputs (σ: normal standard"
            " deviation / uniform half-width, pixels in [0, 1]; misclassified: the share reached). Rows per"
            " interpreter: L1 between clean and noisy maps over all images, then over the misclassified ones"
            " (noisy map for the predicted class).",
            ReportTable("l1", columns, rows),
        )
