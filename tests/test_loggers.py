"""The offline-by-default W&B logger: which mode it asks wandb.init for."""

from __future__ import annotations

import pytest

from aid.loggers import OfflineWandbLogger


@pytest.mark.parametrize("env, online, offline", [(None, None, True), ("online", None, False),
                                                  ("offline", True, False), ("online", False, True)])
def test_online_flag_or_wandb_mode_decides_and_the_flag_wins(monkeypatch, tmp_path, env, online, offline):
    if env is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", env)
    logger = OfflineWandbLogger(save_dir=str(tmp_path), online=online)
    assert logger._offline is offline
    # An explicit online=True must reach wandb.init, where it overrides the environment's WANDB_MODE.
    assert logger._wandb_init.get("mode") == (None if offline else "online")
