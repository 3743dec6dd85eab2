"""Smoke tests of experiments/: the sweep tool, the sweep plans and the research probes run as written.

The library has its own tests; these only check that the experiment scripts still fit it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from aid.interpreters.mask import MaskInterpreter
from callbacks import EvaluationCallback
from callbacks.adv2 import ADV2Evaluation
from tests.conftest import ROOT, load_script, quadrant_classifier, quadrant_images
from tests.test_paper_configs import CPU_OVERRIDES, check_attack_tables, write_checkpoints
from train import AIDCLI

sweep = load_script("sweep")
PLANS = sorted((ROOT / "experiments" / "plans").glob("*.yaml"))
CALLBACKS = [
    {"class_path": "callbacks.adv2.ADV2Evaluation", "init_args": {"interpreters": ["grad"]}},
    {"class_path": "callbacks.adv2.ADV2Evaluation", "init_args": {"prefix": "adv2_patch", "target_map": "patch"}},
    {"class_path": "callbacks.squeeze.SqueezeDetection", "init_args": {}},
]


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


def test_sweep_patches_callbacks_by_class_and_prefix_never_by_position():
    out = sweep.deep_merge({"trainer": {"callbacks": CALLBACKS}}, {"trainer": {"callbacks": {
        "ADV2Evaluation:adv2_patch": {"init_args": {"seed": 1}}, "SqueezeDetection": None}}})["trainer"]["callbacks"]
    assert [sweep.callback_label(cb) for cb in out] == ["ADV2Evaluation:adv2", "ADV2Evaluation:adv2_patch"]
    assert out[1]["init_args"] == {"prefix": "adv2_patch", "target_map": "patch", "seed": 1}
    only = sweep.patch_callbacks(CALLBACKS, {"*": None, "ADV2Evaluation:adv2": {}, "+ema": {"class_path": "E"}})
    assert [cb["class_path"] for cb in only] == ["callbacks.adv2.ADV2Evaluation", "E"]
    for selector in ("ADV2Evaluation", "ADV2Evaluation:nope", 0):  # ambiguous, unknown, a position
        with pytest.raises(ValueError):
            sweep.patch_callbacks(CALLBACKS, {selector: {}})


def test_a_sweep_variant_runs_in_its_own_folder_with_prerequisites_in_the_shared_runs_folder(tmp_path):
    v = {"name": "b", "script": "evaluate.py", "subcommand": "validate", "config": "configs/rts.yaml",
         "args": ["--model.init_args.classifier_ckpt", "@a/checkpoints/x.ckpt"]}
    (tmp_path / "out" / "b").mkdir(parents=True)
    cmd = sweep.variant_command(v, tmp_path / "out" / "b", tmp_path / "out", tmp_path / "r")
    assert cmd[1:4] == [str(ROOT / "evaluate.py"), "validate", "--config"]
    assert cmd[cmd.index("--run_dir") + 1] == str(tmp_path / "out" / "b" / "run")
    assert cmd[cmd.index("--runs_root") + 1] == str(tmp_path / "r")
    assert cmd[-1] == str(tmp_path / "out" / "a" / "run" / "checkpoints" / "x.ckpt")


def test_every_plan_patches_its_config_and_points_only_into_earlier_stages(tmp_path):
    for plan in {p for p, _ in VARIANTS}:
        variants = [v for p, v in VARIANTS if p == plan]
        stages = {v["name"]: int(v.get("stage", 0)) for v in variants}
        assert len(stages) == len(variants), f"{plan}: duplicate variant names"
        for v in variants:
            sweep.variant_command(v, tmp_path)  # the patch applies (selectors match) and is written
            for arg in map(str, v.get("args") or []):
                if arg.startswith("@"):
                    other = arg[1:].split("/")[0]
                    assert stages.get(other, 1 << 30) < stages[v["name"]], f"{plan}/{v['name']} points to {arg}"


@pytest.mark.slow
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
    cli = AIDCLI(args=args, run=False, save_config_kwargs={"overwrite": True},
                 trainer_defaults={"inference_mode": False}, seed_everything_default=0)
    evals = [cb for cb in cli.trainer.callbacks if isinstance(cb, EvaluationCallback) and hasattr(cb, "attack_kwargs")]
    check_attack_tables(cli.model, evals, mask_iterations=None)
    # A key <prefix>/<interpreter>/<attack>/<metric> must come from an ADV2Evaluation the variant keeps.
    rows = {(cb.prefix, i, a) for cb in cli.trainer.callbacks if isinstance(cb, ADV2Evaluation)
            for i in cb.interpreters for a in cb.attacks}
    prefixes = {p for p, _, _ in rows} | {"adv2", "adv2_patch", "adv2_unrolled", "adv2_minmax"}
    for key in variant.get("keys") or []:
        parts = key.split("/")
        if len(parts) == 4 and parts[0] in prefixes:
            assert tuple(parts[:3]) in rows, f"{plan}:{variant['name']}: no callback logs {key}"


def test_mask_quality_parses_its_settings():
    mask_quality = load_script("mask_quality")
    setting = mask_quality.parse_setting("perturbation=blur,area_weight=0.1")
    assert setting == {"perturbation": "blur", "area_weight": 0.1}
    with pytest.raises(SystemExit, match="key=value"):
        mask_quality.parse_setting("area_weight")


def test_mask_support_confines_pgd_to_its_support():
    mask_support = load_script("mask_support")
    clf = quadrant_classifier()
    x, y = quadrant_images(4, seed=1)
    support = torch.zeros(4, 1, *x.shape[-2:])
    support[..., 4:12, 4:12] = 1
    x_adv = mask_support.confined_pgd(clf, x, (y + 1) % 4, support, eps=0.1, steps=10)
    outside = (support == 0).expand_as(x)
    assert torch.equal(x_adv[outside], x[outside]) and (x_adv - x)[~outside].abs().max() > 0


def test_mask_unrolled_builds_the_mask_of_the_eval_config():
    script = load_script("mask_unrolled")
    config = yaml.safe_load((ROOT / "configs" / "eval_adv2.yaml").read_text())
    kwargs = script.eval_mask_kwargs()
    assert kwargs == config["trainer"]["callbacks"][0]["init_args"]["interpreter_kwargs"]["mask"]
    MaskInterpreter(quadrant_classifier(), **kwargs)  # valid MaskInterpreter arguments


def test_experiments_find_the_main_jobs_classifier_as_configs_do(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    shapes_images = load_script("shapes_images")
    with pytest.raises(FileNotFoundError, match="classifier.yaml"):
        shapes_images.embedded_classifier()
    assert Path(ROOT / "experiments" / "README.md").is_file()
