"""Every committed sweep plan (scripts/plans/*.yaml): each variant's patched config parses with the CLI and
builds its model, callbacks and attacks, so a config change that breaks a plan fails here, not in a sweep."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from callbacks import EvaluationCallback
from callbacks.adv2 import ADV2Evaluation
from tests.test_paper_configs import CPU_OVERRIDES, check_attack_tables, write_checkpoints
from tests.test_sweep import sweep
from train import AIDCLI

PLANS = sorted((Path(__file__).resolve().parents[1] / "scripts" / "plans").glob("*.yaml"))


def plan_variants() -> list[tuple[str, dict]]:
    """(plan file, variant with the defaults merged in) for every variant of every plan."""
    out = []
    for path in PLANS:
        plan = yaml.safe_load(path.read_text())
        defaults = plan.get("defaults") or {}
        for v in plan["variants"]:
            merged = {**sweep.deep_merge(defaults, v), **{k: v[k] for k in sweep.REPLACED if k in v}}
            out.append((path.name, merged))
    return out


VARIANTS = plan_variants()


def test_every_plan_has_unique_names_and_points_only_into_earlier_stages():
    for name in {p for p, _ in VARIANTS}:
        variants = [v for p, v in VARIANTS if p == name]
        stages = {v["name"]: int(v.get("stage", 0)) for v in variants}
        assert len(stages) == len(variants), f"{name}: duplicate variant names"
        for v in variants:
            assert not {"links", "report"} & set(v), f"{name}/{v['name']}: links and report are gone"
            for arg in map(str, v.get("args") or []):
                if arg.startswith("@"):
                    other = arg[1:].split("/")[0]
                    assert stages.get(other, 1 << 30) < stages[v["name"]], f"{name}/{v['name']} points to {arg}"


@pytest.mark.parametrize("plan,variant", VARIANTS, ids=[f"{p}:{v['name']}" for p, v in VARIANTS])
def test_plan_variant_config_builds_its_model_callbacks_and_attacks(plan, variant, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    sweep.variant_command(variant, tmp_path)  # writes the patched config.yaml
    cfg = yaml.safe_load((tmp_path / "config.yaml").read_text())
    # Stand-in checkpoints for what the prerequisites provide and for those a variant takes from another
    # variant's run (``@other/...``, given as ``--model.init_args.<key> PATH``).
    extra = list(map(str, variant.get("args") or []))
    given = [extra[i] for i in range(len(extra) - 1) if extra[i].startswith("--model.init_args.")]
    provided = write_checkpoints(cfg, tmp_path / "provided", [k.removeprefix("--") for k in given])
    rest = [a for i, a in enumerate(extra) if a not in given and (i == 0 or extra[i - 1] not in given)]
    args = ["--config", str(tmp_path / "config.yaml"), *provided, *rest, *CPU_OVERRIDES]
    if "pretrained" in (cfg["model"].get("init_args") or {}):
        args += ["--model.init_args.pretrained", "false"]
    cli = AIDCLI(args=args, run=False, save_config_kwargs={"overwrite": True},
                 trainer_defaults={"inference_mode": False}, seed_everything_default=0)
    evals = [cb for cb in cli.trainer.callbacks if isinstance(cb, EvaluationCallback) and hasattr(cb, "attack_kwargs")]
    check_attack_tables(cli.model, evals, mask_iterations=None)
    # A key <prefix>/<interpreter>/<attack>/<metric> must come from an ADV2Evaluation the variant keeps,
    # so a patch that lands on the wrong callback (the config's list reordered) fails here.
    rows = {(cb.prefix, i, a) for cb in cli.trainer.callbacks if isinstance(cb, ADV2Evaluation)
            for i in cb.interpreters for a in cb.attacks}
    prefixes = {p for p, _, _ in rows} | {"adv2", "adv2_patch", "adv2_unrolled"}
    for key in variant.get("keys") or []:
        parts = key.split("/")
        if len(parts) == 4 and parts[0] in prefixes:
            assert tuple(parts[:3]) in rows, f"{plan}:{variant['name']}: no callback logs {key}"
