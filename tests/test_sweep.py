"""scripts/sweep.py: how a plan's patches merge into configs (the sweep itself runs training jobs)."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import ROOT, load_script

sweep = load_script("sweep")


CALLBACKS = [
    {"class_path": "callbacks.adv2.ADV2Evaluation", "init_args": {"interpreters": ["grad"]}},
    {"class_path": "callbacks.adv2.ADV2Evaluation", "init_args": {"prefix": "adv2_patch", "target_map": "patch"}},
    {"class_path": "callbacks.squeeze.SqueezeDetection", "init_args": {}},
]


def test_patch_merges_dicts_and_addresses_callbacks_by_class_and_prefix():
    base = {"trainer": {"max_epochs": 1, "callbacks": CALLBACKS}}
    out = sweep.deep_merge(base, {"trainer": {"max_epochs": 2, "callbacks": {
        "ADV2Evaluation:adv2_patch": {"init_args": {"seed": 1}}, "SqueezeDetection": None}}})
    assert out["trainer"]["max_epochs"] == 2
    assert [sweep.callback_label(cb) for cb in out["trainer"]["callbacks"]] == [
        "ADV2Evaluation:adv2", "ADV2Evaluation:adv2_patch"]  # the default prefix counts
    assert out["trainer"]["callbacks"][1]["init_args"] == {"prefix": "adv2_patch", "target_map": "patch", "seed": 1}
    assert "seed" not in CALLBACKS[1]["init_args"]  # the base is not modified


def test_a_star_removes_the_callbacks_a_patch_does_not_name_and_a_plus_adds_one():
    out = sweep.patch_callbacks(CALLBACKS, {"*": None, "ADV2Evaluation:adv2": {"init_args": {"seed": 3}},
                                            "+ema": {"class_path": "E", "init_args": {"decay": 0.9}}})
    assert [cb["class_path"] for cb in out] == ["callbacks.adv2.ADV2Evaluation", "E"]
    assert out[0]["init_args"]["seed"] == 3


@pytest.mark.parametrize("selector", ["ADV2Evaluation", "ADV2Evaluation:nope", "Missing", 0])
def test_a_selector_that_is_ambiguous_unknown_or_a_position_is_refused_naming_the_callbacks(selector):
    with pytest.raises(ValueError) as err:
        sweep.patch_callbacks(CALLBACKS, {selector: {"init_args": {}}})
    assert "ADV2Evaluation:adv2_patch" in str(err.value) or "not by position" in str(err.value)


def test_a_variant_runs_in_its_own_run_folder_with_prerequisites_in_the_shared_runs_folder(tmp_path):
    plan = {
        "defaults": {"config": "configs/rts.yaml", "patch": {"trainer": {"max_epochs": 7}}},
        "variants": [{"name": "a", "patch": {"model": {"init_args": {"lr": 0.5}}}},
                     {"name": "b", "stage": 1, "args": ["--model.init_args.classifier_ckpt", "@a/checkpoints/x.ckpt"]}],
    }
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    commands = {}

    def fake_run(v, out, runs, timeout, threads):
        workdir = out / v["name"]
        workdir.mkdir(parents=True)
        commands[v["name"]] = sweep.variant_command(v, workdir, out, runs)
        return {"name": v["name"], "status": "ok", "seconds": 0.0, "metrics": {}}

    sweep.run_variant, original = fake_run, sweep.run_variant
    try:
        sweep.main([str(tmp_path / "plan.yaml"), "--out", str(tmp_path / "out"), "--runs", str(tmp_path / "r")])
    finally:
        sweep.run_variant = original
    out = tmp_path / "out"
    cmd = commands["a"]
    assert cmd[cmd.index("--run_dir") + 1] == str(out / "a" / "run")
    assert cmd[cmd.index("--runs_root") + 1] == str(tmp_path / "r")
    assert commands["b"][-1] == str(out / "a" / "run" / "checkpoints" / "x.ckpt")
    config = yaml.safe_load((out / "a" / "config.yaml").read_text())
    assert config["trainer"]["max_epochs"] == 7 and config["model"]["init_args"]["lr"] == 0.5


def test_a_variants_subcommand_comes_before_the_config(tmp_path):
    v = {"name": "a", "script": "evaluate.py", "subcommand": "validate", "config": "configs/eval_adv2.yaml",
         "args": ["--seed_everything", "1"]}
    cmd = sweep.variant_command(v, tmp_path)
    assert cmd[1:4] == [str(ROOT / "evaluate.py"), "validate", "--config"]
    assert cmd[-2:] == ["--seed_everything", "1"]
    assert "validate" not in sweep.variant_command({**v, "subcommand": None}, tmp_path)
