"""Every embedded config (configs/*.yaml) parses with the CLI and builds its model, callbacks and attacks.

Built as ``train.main`` builds them (``run=False``) in a scratch folder with randomly initialised
checkpoints for what the prerequisites provide and no prerequisites run, so a renamed argument or a bad value
in a config fails here rather than minutes into the main job.
"""

from __future__ import annotations

import sys

import pytest

from aid.attacks import build_attack
from aid.modules.aid import AIDModule
from callbacks import EvaluationCallback
from tests.test_paper_configs import (
    CONFIGS,
    build,
    check_attack_tables,
    init_args,
    load,
    write_checkpoints,
    write_data,
)

EMBEDDED = sorted(CONFIGS.glob("*.yaml"))
#: Overlays (no model of their own) are layered on the main job's config, as their headers say.
MAIN_JOB = CONFIGS / "rts_aid.yaml"


@pytest.mark.parametrize("config", EMBEDDED, ids=[p.name for p in EMBEDDED])
def test_embedded_config_builds_its_model_callbacks_and_attacks(config, tmp_path, monkeypatch):
    cfg = load(config)
    base = None
    if "model" not in cfg:
        base, cfg = MAIN_JOB, {**load(MAIN_JOB), **cfg}
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    if "root" in init_args(cfg, "data"):
        write_data(cfg)
    cli = build(config, cfg, write_checkpoints(cfg), base)
    model, trainer = cli.model, cli.trainer
    evals = [cb for cb in trainer.callbacks if isinstance(cb, EvaluationCallback) and hasattr(cb, "attack_kwargs")]
    check_attack_tables(model, evals, mask_iterations=None)
    if isinstance(model, AIDModule):
        build_attack("adv2", model.classifier, interpreter=model.interpreters()["rtsa"], **model.attack_kwargs)
        if init_args(cfg).get("presence"):
            assert model.masker.presence is not None and model.reference.presence is None
    if any(item["provides"].endswith("rtsa_ckpt") for item in cfg.get("prerequisites") or []):
        assert model.maskers["rtsa"].presence is not None  # the gate comes back from the checkpoint
