"""Weights & Biases logger that is offline unless the user turns it on, and never hangs; a report's tables and
files logged to a W&B run."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import WandbLogger


class OfflineWandbLogger(WandbLogger):
    """:class:`~pytorch_lightning.loggers.WandbLogger` that is offline by default.

    Args:
        online: ``None`` (default) follows ``WANDB_MODE`` (``online`` turns syncing on; anything else,
            including unset, stays offline); ``True`` / ``False`` force it.
        init_timeout: seconds to wait for the W&B service at start-up, so a run without network
            fails over quickly instead of hanging.
        save_dir, project, name: as for ``WandbLogger``; the offline run directory is
            ``<save_dir>/wandb/offline-run-*`` (sync it later with ``wandb sync``).
        kwargs: passed to ``WandbLogger`` / ``wandb.init``.
    """

    def __init__(
        self,
        save_dir: str = ".",
        project: str = "adv2-aid",
        name: str | None = None,
        online: bool | None = None,
        init_timeout: float = 60.0,
        **kwargs,
    ) -> None:
        import wandb

        if online is None:
            online = os.environ.get("WANDB_MODE", "offline").lower() == "online"
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        settings = kwargs.pop("settings", None) or wandb.Settings(
            init_timeout=init_timeout, silent=True, console="off"
        )
        if not online:
            kwargs.pop("log_model", None)  # offline runs cannot upload models
        else:
            kwargs.setdefault("mode", "online")  # wandb.init's argument beats a WANDB_MODE of the environment
        super().__init__(
            save_dir=save_dir, project=project, name=name, offline=not online, settings=settings, **kwargs
        )


def report_artifact_name(logger: WandbLogger) -> str:
    """Name of the run's report artifact: ``report-<W&B run id>`` (like Lightning's ``model-<run id>``)."""
    return f"report-{logger.experiment.id}"


def log_report(
    logger: WandbLogger, tables: Mapping[str, Any], files: Mapping[str, Path], step: int | None = None
) -> str:
    """Log a report to one W&B run: each table under its key, and the files as one artifact of type ``report``.

    Works offline (the records land in ``<save_dir>/wandb/offline-run-*``; ``wandb sync`` uploads them).
    Logging again adds a new version of the same artifact when a file changed.

    Args:
        logger: the W&B logger (rank zero).
        tables: ``wandb.Table`` objects by key (e.g. ``report/adv2/attacks``).
        files: path inside the artifact (e.g. ``figures/grids_attacks.png``) -> file on disk.
        step: the trainer's global step for the tables (None: W&B's own step).

    Returns:
        The artifact's name, :func:`report_artifact_name`.
    """
    import wandb

    if tables:
        logger.log_metrics(dict(tables), step=step)
    name = report_artifact_name(logger)
    artifact = wandb.Artifact(name, type="report", description="report.md, summary.json and figures of the run")
    for inside, path in files.items():
        artifact.add_file(str(path), name=inside)
    logger.experiment.log_artifact(artifact)
    return name
