"""Every embedded config (configs/*.yaml) parses with the CLI and builds its model, callbacks and attacks.

Built as ``train.main`` builds them (``run=False``) in a scratch folder with randomly initialised
checkpoints at the paths each config reads and no prerequisites, so a renamed argument or a bad value
in a config fails here rather than minutes into the main job.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from aid.attacks import build_attack
from aid.interpreters.rts import RTSMasker
from aid.modules.aid import AIDModule
from aid.modules.classifier import ClassifierModule
from callbacks import EvaluationCallback
from callbacks.evaluation import resolve_interpreters
from tests.test_paper_configs import CONFIGS, build, init_args, load, planned_attacks, producer, producers
from train import resolve_config

EMBEDDED = sorted(CONFIGS.glob("*.yaml"))


def classifier_module(ckpt: str) -> ClassifierModule:
    """A randomly initialised classifier as the config writing ``ckpt`` builds it (classes from its data)."""
    cfg = producer(ckpt)
    args = dict(init_args(cfg))
    args.setdefault("num_classes", init_args(cfg, "data")["num_classes"])
    return ClassifierModule(**args)


def write_checkpoints(cfg: dict) -> None:
    """Random checkpoints at the paths the config's model reads (``*_ckpt``)."""
    for key, value in init_args(cfg).items():
        if not key.endswith("_ckpt") or not value or Path(value).is_file():
            continue
        Path(value).parent.mkdir(parents=True, exist_ok=True)
        if key == "classifier_ckpt":
            module = classifier_module(value)
            torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, value)
        else:
            writer = init_args(producer(value))
            classifier = classifier_module(writer["classifier_ckpt"]).classifier
            masker = RTSMasker.from_classifier(classifier, mask_scale=int(writer.get("mask_scale", 2)))
            if writer.get("presence"):  # an RTSA checkpoint: the masker with its gate
                masker.add_presence(writer["presence"])
            torch.save({"state_dict": {f"masker.{k}": v for k, v in masker.state_dict().items()}}, value)


@pytest.mark.parametrize("config", EMBEDDED, ids=[p.name for p in EMBEDDED])
def test_embedded_config_builds_its_model_callbacks_and_attacks(config, tmp_path, monkeypatch):
    cfg = load(config)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    for item in cfg.get("prerequisites") or []:
        assert producers().get(item["checkpoint"]) == resolve_config(item["config"]).resolve()
    write_checkpoints(cfg)
    cli = build(config, cfg)
    model, trainer = cli.model, cli.trainer
    evals = [cb for cb in trainer.callbacks if isinstance(cb, EvaluationCallback)]
    for cb in evals:
        if not hasattr(cb, "attack_kwargs"):
            continue
        plan = planned_attacks(cb)
        names = sorted({name for _, name, _ in plan if name is not None})
        interps = resolve_interpreters(model, names, cb.interpreter_kwargs)
        for attack, name, kwargs in plan:
            interp = {} if name is None else {"interpreter": interps[name]}
            build_attack(attack, model.classifier, **interp, **kwargs)
    if isinstance(model, AIDModule):
        build_attack("adv2", model.classifier, interpreter=model.interpreters()["rtsa"], **model.attack_kwargs)
        if init_args(cfg).get("presence"):
            assert model.masker.presence is not None and model.reference.presence is None
    if init_args(cfg).get("rtsa_ckpt"):
        assert model.maskers["rtsa"].presence is not None  # the gate comes back from the checkpoint
