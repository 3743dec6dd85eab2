"""LightningCLI entry point: ``python train.py --config rts_aid.yaml`` (the ``fit`` subcommand is implied).

Bare config names are looked up under ``configs/``. Besides Lightning's own arguments the CLI has:

- ``--report_dir DIR``: where ``summary.json``, ``report.md`` and figures go
  (default ``<trainer.default_root_dir>/report``);
- ``--prerequisites``: a list of ``{checkpoint: PATH, config: NAME}``; a missing checkpoint is made
  first by running ``train.py --config NAME`` (so the main job trains its own classifier on a fresh
  machine).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

ROOT = Path(__file__).resolve().parent
CONFIG_DIR = ROOT / "configs"
SUBCOMMANDS = ("fit", "validate", "test", "predict")


def resolve_config_args(argv: list[str]) -> list[str]:
    """Replace bare config names after ``--config`` / ``-c`` by their path under ``configs/``."""
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg in ("--config", "-c"):
            out[i + 1] = str(resolve_config(out[i + 1]))
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            out[i] = "--config=" + str(resolve_config(arg.split("=", 1)[1]))
    return out


def resolve_config(name: str) -> Path:
    """A config path as given if it exists, else ``configs/<name>`` (``.yaml`` optional)."""
    path = Path(name)
    if path.exists():
        return path
    for candidate in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"):
        if candidate.exists():
            return candidate
    available = sorted(str(p.relative_to(CONFIG_DIR)) for p in CONFIG_DIR.rglob("*.yaml"))
    raise SystemExit(f"config {name!r} not found (as a path or under {CONFIG_DIR}); available: {', '.join(available)}")


def global_rank() -> int:
    """This process's rank from the launcher's environment (torchrun, SLURM's srun, LSF's jsrun), 0 alone.

    Read before Lightning starts, so from the same variables it reads: a global rank first, a node-local
    one last."""
    for key in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "LOCAL_RANK"):
        if os.environ.get(key, "").strip().isdigit():
            return int(os.environ[key])
    return 0


def run_prerequisites(prereqs: list[dict[str, Any]]) -> None:
    """Train each missing prerequisite checkpoint with its config, in order, in a child process."""
    rank = global_rank()
    for item in prereqs or []:
        ckpt = Path(item["checkpoint"])
        if ckpt.is_file():
            continue
        if rank != 0:  # other ranks of a multi-process launch wait for rank zero to make it
            while not ckpt.is_file():
                time.sleep(5)
            continue
        config = str(resolve_config(item["config"]))
        print(f"[prerequisite] {ckpt} is missing: training it with {config}", flush=True)
        cmd = [sys.executable, str(ROOT / "train.py"), "fit", "--config", config]
        cmd += [str(a) for a in item.get("args", [])]
        subprocess.run(cmd, check=True, cwd=os.getcwd())
        if not ckpt.is_file():
            raise SystemExit(f"prerequisite config {config} finished but did not write {ckpt}")


class AIDCLI(LightningCLI):
    """LightningCLI with the report folder, prerequisites and the framework's defaults."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--report_dir", type=str | None, default=None, help="folder of the run's report")
        parser.add_argument(
            "--prerequisites",
            type=list[dict[str, Any]],
            default=[],
            help="list of {checkpoint, config}: missing checkpoints are trained first with their config",
        )

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        run_prerequisites(cfg.get("prerequisites") or [])

    def instantiate_trainer(self, **kwargs: Any):
        from callbacks.report import ReportWriter

        cfg = self.config[self.subcommand] if self.subcommand else self.config
        trainer = super().instantiate_trainer(**kwargs)
        writers = [cb for cb in trainer.callbacks if isinstance(cb, ReportWriter)]
        if not writers:
            trainer.callbacks.append(ReportWriter(cfg.get("report_dir")))
        elif cfg.get("report_dir"):
            for w in writers:
                w.report_dir = cfg.get("report_dir")
        return trainer


def main(argv: list[str] | None = None, default_subcommand: str = "fit") -> AIDCLI:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``); ``default_subcommand`` is implied when absent."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help"):
        argv = [default_subcommand, *argv]
    argv = resolve_config_args(argv)
    # We pass the (rewritten) command line as ``args`` on purpose; Lightning's warning about it is noise.
    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
    return AIDCLI(
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"inference_mode": False},
        seed_everything_default=0,
        args=argv,
    )


if __name__ == "__main__":
    main()
