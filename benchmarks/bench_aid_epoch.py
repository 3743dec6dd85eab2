"""Training speed of AID (RTS with ADV² in the loop) against plain RTS training, with peak memory.

Both modules are built as the embedded configs build them: a classifier checkpoint of the embedded
size (resnet10t, widths 32-64-128-256, output stride 8, 8 classes; random weights, saved to a temporary
folder as tests/test_modules.py does), ``RTSModule`` with its defaults, and ``AIDModule`` with the
settings of configs/rts_aid.yaml (whatever they are: at present ADV² with ε 12/255, α 6/255, 1 warm-start +
3 steps on half of each batch, and the presence gate the only part trained). Each trains for
``--warm-batches`` + N batches of the shapes data (batch 64 by default,
32 px) with a Lightning ``Trainer`` (no logger, checkpoints or validation); the N timed batches give the
median time per step and steps per second (N / their total time). Each module trains in its own Python
process, so the peak resident memory of that process (``getrusage``; on GPU also
``torch.cuda.max_memory_allocated``) is its own: ``peak_rss_mb`` covers the whole process (libraries, data,
models), ``train_extra_mb`` the rise of the peak over the level at the start of training (high-water mark
reset when training starts, Linux; on GPU allocated memory).

    python benchmarks/bench_aid_epoch.py            # N = 20 timed batches of 64 images
    python benchmarks/bench_aid_epoch.py --steps 50 --device cuda
    python benchmarks/bench_aid_epoch.py --modules aid --aid-kwargs '{"attack_kwargs": {"steps": 20}}'

``--classifier-ckpt`` and ``--rts-ckpt`` time the main job's own trained classifier and RTS instead of random
weights (the classifier's size then comes from its checkpoint; the RTS module keeps its defaults).
``--aid-kwargs`` (JSON) changes AIDModule's settings for a variant (``attack_kwargs`` merges key by key), as the
sweep plan ``experiments/plans/aid_cost.yaml`` does for training. Acceptance: the mean time per AID training
batch is at most 5× RTS's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import torch

MODULES = ("rts", "aid")


def aid_kwargs() -> dict:
    """``model.init_args`` of configs/rts_aid.yaml without the checkpoints: the main job's AID settings."""
    import yaml

    cfg = yaml.safe_load((common.ROOT / "configs" / "rts_aid.yaml").read_text())
    kwargs = dict(cfg["model"]["init_args"])
    for key in ("classifier_ckpt", "rts_ckpt"):
        kwargs.pop(key, None)
    return kwargs


AID_KWARGS = aid_kwargs()
#: Acceptance: mean time per AID training batch / RTS's.
RATIO_TARGET = 5.0


def merged_kwargs(override: str | None) -> dict:
    """AID_KWARGS with a JSON object of changes merged in (``attack_kwargs`` key by key)."""
    kwargs = dict(AID_KWARGS)
    for key, value in (json.loads(override) if override else {}).items():
        if key == "attack_kwargs":
            value = {**kwargs.get("attack_kwargs", {}), **value}
        kwargs[key] = value
    return kwargs


def save_rts(path: Path, classifier_ckpt: Path) -> Path:
    """An RTS checkpoint (random decoder) to start AID from, so that ℓ_keep's reference masker runs too."""
    from aid.modules.rts import RTSModule

    torch.save({"state_dict": RTSModule(str(classifier_ckpt)).state_dict()}, path)
    return path


def save_classifier(path: Path, args) -> Path:
    """A random classifier checkpoint of the embedded size (what ClassifierModule saves)."""
    from aid.modules.classifier import ClassifierModule

    torch.manual_seed(args.seed)
    module = ClassifierModule(
        arch=args.model, num_classes=args.num_classes, output_stride=args.output_stride, channels=args.channels
    )
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


def run_worker(args) -> dict:
    """Train one module in this process for warm + N batches and return its timings and memory."""
    import pytorch_lightning as pl

    from aid.modules.aid import AIDModule
    from aid.modules.rts import RTSModule
    from datamodules import ShapesDataModule

    dev = args.device_obj
    n_batches = args.warm_batches + args.steps
    data = ShapesDataModule(
        image_size=args.image_size, num_classes=args.num_classes, train_size=args.batch * n_batches,
        val_size=args.batch, test_size=args.batch, batch_size=args.batch, seed=args.seed,
    )
    if args.worker == "aid":
        rts = args.rts_ckpt or save_rts(Path(args.worker_out).with_suffix(".rts.ckpt"), Path(args.ckpt))
        module = AIDModule(args.ckpt, rts_ckpt=str(rts), seed=args.seed, **merged_kwargs(args.aid_kwargs))
    else:
        module = RTSModule(args.ckpt, seed=args.seed)

    class Timer(pl.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.t0 = 0.0
            self.resettable = False
            self.base_mb = 0.0

        def on_train_start(self, trainer, pl_module) -> None:
            common.sync(dev)
            self.resettable = common.reset_peak_memory(dev)
            self.base_mb = common.current_memory_mb(dev)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            common.sync(dev)
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            common.sync(dev)
            self.times.append(time.perf_counter() - self.t0)

    timer = Timer()
    trainer = pl.Trainer(
        max_epochs=1, limit_train_batches=n_batches, limit_val_batches=0, num_sanity_val_steps=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        accelerator="gpu" if dev.type == "cuda" else "cpu", devices=[dev.index or 0] if dev.type == "cuda" else 1,
        callbacks=[timer], deterministic=False,
    )
    trainer.fit(module, datamodule=data)
    timed = timer.times[args.warm_batches:]
    stats = common.Stats(args.worker, times=timed)
    out = {
        **stats.summary(),
        "batches_timed": len(timed),
        "mean_s": sum(timed) / len(timed) if timed else float("nan"),
        "steps_per_s": len(timed) / sum(timed) if timed else float("nan"),
        "images_per_s": args.batch * len(timed) / sum(timed) if timed else float("nan"),
        "train_peak_mb": common.peak_memory_mb(dev) if timer.resettable else None,
        "train_extra_mb": common.peak_memory_mb(dev) - timer.base_mb if timer.resettable else None,
        "peak_rss_mb": common._rss_peak_mb(),
        "samples_s": timed,
    }
    if dev.type == "cuda":
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return out


def spawn(name: str, ckpt: Path, args, out: Path) -> dict:
    """Run this script as a worker for module ``name`` in a fresh Python process."""
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--worker", name, "--ckpt", str(ckpt), "--worker-out", str(out),
        "--model", args.model, "--num-classes", str(args.num_classes), "--output-stride", str(args.output_stride),
        "--image-size", str(args.image_size), "--batch", str(args.batch), "--device", str(args.device_obj),
        "--steps", str(args.steps), "--warm-batches", str(args.warm_batches), "--seed", str(args.seed),
    ]
    if args.channels:
        cmd += ["--channels", ",".join(str(c) for c in args.channels)]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    if args.aid_kwargs:
        cmd += ["--aid-kwargs", args.aid_kwargs]
    if args.rts_ckpt:
        cmd += ["--rts-ckpt", str(args.rts_ckpt)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(common.ROOT), os.environ.get("PYTHONPATH", "")]),
               WANDB_MODE="offline", WANDB_SILENT="true")
    subprocess.run(cmd, check=True, env=env)
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> dict:
    p = common.base_parser(__doc__.split("\n")[0], batch=64)
    p.add_argument("--steps", type=int, default=None, help="timed training batches N (default 20; 2 with --quick)")
    p.add_argument("--warm-batches", type=int, default=None, help="untimed first batches (default 3; 1 quick)")
    p.add_argument("--modules", default="rts,aid", help="which modules to train: rts, aid")
    p.add_argument("--classifier-ckpt", default=None, help="a trained classifier (default: random weights)")
    p.add_argument("--rts-ckpt", default=None, help="a trained RTS to start AID from (default: random decoder)")
    p.add_argument("--aid-kwargs", default=None, help="JSON changes to AIDModule's settings (rts_aid.yaml's)")
    p.add_argument("--worker", choices=MODULES, default=None, help=argparse.SUPPRESS)
    p.add_argument("--ckpt", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = common.finish_args(p.parse_args(argv))
    args.steps = args.steps or (2 if args.quick else 20)
    args.warm_batches = args.warm_batches if args.warm_batches is not None else (1 if args.quick else 3)
    if args.worker:
        common.write_json(args.worker_out, run_worker(args))
        return {}

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(args.classifier_ckpt or save_classifier(Path(tmp) / "classifier.ckpt", args))
        for name in [m.strip() for m in args.modules.split(",") if m.strip()]:
            results[name] = spawn(name, ckpt, args, Path(tmp) / f"{name}.json")
    rows = []
    for name, r in results.items():
        rows.append({
            "module": {"rts": "RTSModule", "aid": "AIDModule"}[name],
            "mean_ms_per_step": 1e3 * r["mean_s"], "median_ms_per_step": 1e3 * r["median_s"],
            "iqr_ms": 1e3 * r["iqr_s"], "steps_per_s": r["steps_per_s"],
            "images_per_s": r["images_per_s"], "peak_rss_mb": r["peak_rss_mb"], "train_extra_mb": r["train_extra_mb"],
            "gpu_peak_mb": r.get("gpu_peak_mb"),
        })
    checks = []
    if {"rts", "aid"} <= set(results):
        ratio = results["aid"]["mean_s"] / results["rts"]["mean_s"]
        rows.append({"module": "ratio AID / RTS (time per step)", "mean_ms_per_step": ratio,
                     "median_ms_per_step": results["aid"]["median_s"] / results["rts"]["median_s"]})
        checks.append(common.check(f"AID / RTS, mean time per training batch ({args.batch} images)", ratio,
                                   f"<= {RATIO_TARGET:.2f}", ratio <= RATIO_TARGET))
    kwargs = merged_kwargs(args.aid_kwargs)
    a = kwargs["attack_kwargs"]
    t = common.table(
        f"Training steps: batch {args.batch}, {args.image_size} px, {args.steps} timed steps "
        f"(after {args.warm_batches}), {args.model} on {args.device_obj}",
        ["module", "mean_ms_per_step", "median_ms_per_step", "iqr_ms", "steps_per_s", "images_per_s", "peak_rss_mb",
         "train_extra_mb", "gpu_peak_mb"], rows,
        f"AID ({'configs/rts_aid.yaml' if not args.aid_kwargs else 'changed'} settings) attacks "
        f"{kwargs['attack_fraction']:.0%} of each batch with ADV2 (warm {a['warm_steps']} + {a['steps']} steps of "
        f"alpha {a.get('alpha')}) every {kwargs.get('attack_every_n_steps', 1)} step(s). Memory in MiB, each "
        "module in its own process: peak_rss_mb = the process's peak resident set (CPU); train_extra_mb = its "
        "rise during training (GPU: allocated memory); "
        "gpu_peak_mb = torch.cuda.max_memory_allocated.",
    )
    return common.report("bench_aid_epoch", args, [t], checks, {"raw": results, "aid_kwargs": kwargs})


if __name__ == "__main__":
    main()
