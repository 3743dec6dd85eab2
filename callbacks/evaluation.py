"""Base of the evaluation callbacks: a fixed, seeded set of correctly classified images, sharded over ranks.

Each evaluation callback subclasses :class:`EvaluationCallback` and implements :meth:`evaluate`, which
receives this rank's share of the images as an :class:`EvalBatch` stream. Runs happen every
``every_n_epochs`` validation epochs, at the end of fit (``on_train_end``, while DDP is still up) and
in ``validate`` / ``test`` runs. Metrics are torchmetrics objects, so DDP reduction needs no code
here; every rank calls every ``compute`` in the same order, and only rank zero writes files.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor
from torchmetrics import Metric, SumMetric
from tqdm.auto import tqdm

from aid.interpreters import Interpreter, build_interpreter
from aid.model_state import frozen_eval
from callbacks.attack_cache import settings_key
from callbacks.report import ReportWriter, find_report
from callbacks.settings import check_attack_kwargs, check_interpreter_kwargs, check_interpreter_names
from callbacks.tables import ReportTable, four_decimals


@dataclass
class EvalBatch:
    """One batch of evaluation images (all on the module's device).

    Attributes:
        x: images (B, C, H, W) in [0, 1]; y: true labels (B,); mask: ground-truth object masks
        (B, 1, H, W) (zeros where the data has none); target: attack target classes (B,), never
        equal to y; index: the images' indices in the dataset (B,); target_map: attack target maps
        (B, 1, H, W) when the callback draws them with the selection (random patches), else None;
        split: the dataset split the images come from; extra: other per-image tensors that a callback
        adds to its selection (e.g. noise), by name.
    """

    x: Tensor
    y: Tensor
    mask: Tensor
    target: Tensor
    index: Tensor
    target_map: Tensor | None = None
    split: str = ""
    extra: dict[str, Tensor] = field(default_factory=dict)


BATCH_FIELDS = {f.name for f in fields(EvalBatch)}


def _dataset(trainer: pl.Trainer, split: str):
    dm = trainer.datamodule
    if dm is None:
        raise RuntimeError("evaluation callbacks need a LightningDataModule")
    loader = getattr(dm, f"{split}_dataloader")()
    return loader.dataset


class EvaluationCallback(Callback):
    """Runs an evaluation on a fixed, seeded subset of correctly classified images.

    Args:
        num_images: how many correctly classified images to evaluate (over all ranks).
        batch_size: images per attack batch on each rank.
        every_n_epochs: also run after every n-th validation epoch of fit (0: only at the end of fit).
        split: ``val`` or ``test`` (the dataloader of the datamodule to draw from in fit runs;
            ``test`` runs always use the test split).
        seed: seed of the image selection and of the target classes.
        progress: show a progress bar on rank zero.

    When the split holds fewer than ``num_images`` correctly classified images, all of them are used, with a
    warning; ``<name>/images`` (logged, and stated under the report's section) says how many were evaluated.
    """

    name = "evaluation"

    def __init__(
        self,
        num_images: int = 64,
        batch_size: int = 32,
        every_n_epochs: int = 0,
        split: str = "val",
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        if num_images <= 0:
            raise ValueError(f"num_images must be > 0, got {num_images}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        if every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be >= 0, got {every_n_epochs}")
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        self.num_images = num_images
        self.batch_size = batch_size
        self.every_n_epochs = every_n_epochs
        self.split = split
        self.seed = seed
        self.progress = progress
        self._last_step: int | None = None
        self._selected_split: str | None = None  # the split of the last selection, for the report

    def check_settings(
        self,
        interpreters: Iterable[str],
        interpreter_kwargs: Mapping[str, Any] | None = None,
        attack_kwargs: Mapping[str, Any] | None = None,
        attacks: Iterable[str] = (),
        interpreter_free: Iterable[str] = (),
        compare: Iterable[str] | None = None,
    ) -> None:
        """Refuse unknown interpreter names, ``interpreter_kwargs`` and ``attack_kwargs`` entries when the
        callback is built (see :mod:`callbacks.settings`): a ``ValueError`` naming the key path.

        ``attacks``: the attack names ``attack_kwargs`` may hold, ``interpreter_free`` those of them that
        attack no interpreter; the un-suffixed attack settings apply to ``interpreters`` and ``compare``.
        """
        owner = type(self).__name__
        interpreters = list(interpreters)
        check_interpreter_names(owner, "interpreters", interpreters)
        if compare:
            check_interpreter_names(owner, "compare", compare)
        check_interpreter_kwargs(owner, interpreter_kwargs)
        if attack_kwargs is not None:
            names = list(dict.fromkeys([*interpreters, *(compare or [])]))
            check_attack_kwargs(owner, attack_kwargs, attacks, interpreter_free, names)

    # ------------------------------------------------------------------ hooks
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if trainer.state.fn == TrainerFn.VALIDATING:
            self.run(trainer, pl_module, "val")
        elif (
            trainer.state.fn == TrainerFn.FITTING
            and self.every_n_epochs > 0
            and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        ):
            self.run(trainer, pl_module, self.split)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._last_step != trainer.global_step:
            self.run(trainer, pl_module, self.split)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.run(trainer, pl_module, "test")

    # ------------------------------------------------------------------ machinery
    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> None:
        """Select images, evaluate this rank's share, reduce, log and report."""
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                f"{type(self).__name__} needs gradients: run with Trainer(inference_mode=False) "
                "(train.py and evaluate.py set it by default)"
            )
        self._last_step = trainer.global_step
        classifier = pl_module.classifier
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        # fork_rng: the evaluation must not shift the training RNG stream (same run with or without it).
        with torch.random.fork_rng(devices=devices), frozen_eval(pl_module), torch.enable_grad():
            batches = list(self.batches(trainer, pl_module, split))
            metrics = dict(self.evaluate(trainer, pl_module, classifier, batches))
            # How many images all ranks evaluated together: each selected image is counted once.
            count = SumMetric().to(pl_module.device)
            count.update(torch.tensor(float(sum(len(b.y) for b in batches)), device=pl_module.device))
            metrics[f"{self.name}/images"] = count
            values: dict[str, Tensor] = {}
            for key, metric in sorted(metrics.items()):
                out = metric.compute()
                # A metric with several outputs (e.g. Localization) returns a dict of sub-keys.
                values.update({f"{key}/{k}": v for k, v in out.items()} if isinstance(out, dict) else {key: out})
        self.publish(trainer, values)

    def select(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> dict[str, Tensor]:
        """The seeded selection of correctly classified images (the same on every rank)."""
        dataset = _dataset(trainer, split)
        device = pl_module.device
        gen = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(dataset), generator=gen)
        chosen: list[Tensor] = []
        xs, ys, ms = [], [], []
        count = 0
        chunk = max(self.batch_size, 64)
        for start in range(0, len(order), chunk):
            idx = order[start : start + chunk]
            items = [dataset[int(i)] for i in idx]
            x = torch.stack([it[0] for it in items]).to(device)
            y = torch.as_tensor([int(it[1]) for it in items], device=device)
            m = torch.stack([it[2] for it in items]).to(device) if len(items[0]) > 2 else torch.zeros_like(x[:, :1])
            with torch.no_grad():
                ok = pl_module.classifier(x).argmax(1) == y
            keep = ok.nonzero().flatten()[: self.num_images - count]
            chosen.append(idx.to(device)[keep])
            xs.append(x[keep])
            ys.append(y[keep])
            ms.append(m[keep])
            count += len(keep)
            if count >= self.num_images:
                break
        self._selected_split = split
        if count < self.num_images:
            rank_zero_warn(
                f"{type(self).__name__} ({self.name}): split {split!r} holds only {count} correctly classified "
                f"images of the {self.num_images} asked (num_images; {len(dataset)} images in the split); "
                f"evaluating those {count} ({self.name}/images says how many)"
            )
        y = torch.cat(ys)
        k = pl_module.classifier.num_classes
        # A shift in [1, K-1] makes the target differ from the label without rejection sampling.
        shift = torch.randint(1, k, (len(y),), generator=gen).to(device)
        return {
            "x": torch.cat(xs),
            "y": y,
            "mask": torch.cat(ms),
            "target": (y + shift) % k,
            "index": torch.cat(chosen),
        }

    def selection_generator(self, selection: dict[str, Tensor], offset: int = 0) -> torch.Generator:
        """A CPU generator for random numbers drawn once for the whole ``selection`` (so an image's draw
        does not depend on the batch size, the number of processes or the device), seeded with ``seed`` +
        ``offset`` + the first selected image's dataset index (the seed of a single batch holding the whole
        selection)."""
        return torch.Generator().manual_seed(self.seed + offset + int(selection["index"][0]))

    def batches(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> Iterator[EvalBatch]:
        """This rank's share of the selection, in batches of ``batch_size``."""
        sel = self.select(trainer, pl_module, split)
        rank, world = trainer.global_rank, trainer.world_size
        share = {k: v[rank::world] for k, v in sel.items()}
        n = len(share["y"])
        for start in range(0, n, self.batch_size):
            part = {k: v[start : start + self.batch_size] for k, v in share.items()}
            extra = {k: part.pop(k) for k in list(part) if k not in BATCH_FIELDS}
            yield EvalBatch(**part, split=split, extra=extra)

    def bar(self, trainer: pl.Trainer, total: int, desc: str) -> tqdm:
        """A progress bar shown on rank zero only, when ``progress`` is on."""
        return tqdm(total=total, desc=desc, leave=False, disable=not (self.progress and trainer.is_global_zero))

    def evaluate(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        classifier: torch.nn.Module,
        batches: list[EvalBatch],
    ) -> dict[str, Metric]:
        """Evaluate this rank's batches; return torchmetrics keyed by metric name
        (``<name>/...``, e.g. ``adv2/cam/pgd/l1``: the keys of the logger and the report)."""
        raise NotImplementedError  # abstractmethod: each evaluation implements its experiment

    def publish(self, trainer: pl.Trainer, values: dict[str, Tensor]) -> None:
        """Log reduced values to the logger (rank zero) and to the report; write the report section."""
        floats = {k: float(v) for k, v in values.items()}
        report = find_report(trainer)
        if report is not None:
            report.add_metrics(floats)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(floats, step=trainer.global_step)
            if report is not None:
                self.write_report(trainer, report, floats)
                self.note_images(report, floats)

    def note_images(self, report: ReportWriter, values: dict[str, float]) -> None:
        """Add to this callback's report section how many images were evaluated, of how many asked."""
        count = values.get(f"{self.name}/images")
        if count is None or self.name not in report.sections:
            return
        split = self._selected_split or "?"
        short = f" (fewer than the {self.num_images} asked: the split has no more)" if count < self.num_images else ""
        note = f"Images: {int(count)} correctly classified images of split `{split}`{short}."
        report.extend_section(self.name, note)

    def write_report(self, trainer: pl.Trainer, report: ReportWriter, values: dict[str, float]) -> None:
        """Add this evaluation's report section (rank zero): Markdown text, tables as data
        (:class:`~callbacks.tables.ReportTable`, also logged to W&B) and figures. Default: a flat table
        ``metric | value``."""
        table = ReportTable("metrics", ["metric", "value"], [[k, v] for k, v in values.items()], fmt=four_decimals,
                            code=(0,))
        report.add_section(self.name, f"## {self.name}", table)


def resolve_interpreters(
    pl_module: pl.LightningModule,
    names: list[str],
    kwargs: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Interpreter]:
    """Interpreters by name: the module's own (``pl_module.interpreters()``, e.g. rts / rtsa) first,
    then the registry (grad, cam, mask, ...) built on the module's classifier."""
    own = pl_module.interpreters() if hasattr(pl_module, "interpreters") else {}
    kwargs = kwargs or {}
    out: dict[str, Interpreter] = {}
    for name in names:
        if name in own:
            out[name] = own[name]
        else:
            if name in ("rts", "rtsa") and not {"checkpoint", "masker"} & set(kwargs.get(name, {})):
                # The registry's RTS has a randomly initialised masker: its maps would mean nothing.
                raise ValueError(
                    f"interpreter {name!r}: the module has no trained masker of that name (set model.rts_ckpt "
                    f"/ model.rtsa_ckpt), and interpreter_kwargs give no checkpoint; drop {name!r} from the "
                    f"callback's interpreters or give interpreter_kwargs {{{name}: {{checkpoint: PATH}}}}"
                )
            out[name] = build_interpreter(name, pl_module.classifier, **kwargs.get(name, {}))
            out[name].cache_tag = settings_key(kwargs.get(name, {}))
    return out
