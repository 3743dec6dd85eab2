"""Weights & Biases logger that is offline unless the user turns it on, and never hangs."""

from __future__ import annotations

import os
from pathlib import Path

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
