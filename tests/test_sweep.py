"""scripts/sweep.py: how a plan's patches merge into configs (the sweep itself runs training jobs)."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import ROOT, load_script

sweep = load_script("sweep")


def test_patch_merges_dicts_and_list_items_by_index():
    base = {"trainer": {"max_epochs": 1, "callbacks": [{"class_path": "A", "init_args": {"n": 1, "m": 2}}, {"x": 1}]}}
    out = sweep.deep_merge(base, {"trainer": {"max_epochs": 2, "callbacks": {0: {"init_args": {"n": 5}}}}})
    assert out["trainer"]["max_epochs"] == 2
    assert out["trainer"]["callbacks"][0] == {"class_path": "A", "init_args": {"n": 5, "m": 2}}
    assert out["trainer"]["callbacks"][1] == {"x": 1}
    assert base["trainer"]["callbacks"][0]["init_args"]["n"] == 1  # the base is not modified


def test_patch_with_another_class_path_replaces_the_item_and_null_removes_one():
    base = {"callbacks": [{"class_path": "A", "init_args": {"n": 1}}, {"class_path": "B"}, {"class_path": "C"}]}
    out = sweep.deep_merge(base, {"callbacks": {0: {"class_path": "Z", "init_args": {"d": 0.9}}, 2: None}})
    assert out["callbacks"] == [{"class_path": "Z", "init_args": {"d": 0.9}}, {"class_path": "B"}]
    with pytest.raises(IndexError):
        sweep.deep_merge(base, {"callbacks": {5: {"x": 1}}})


def test_variant_links_replace_the_defaults_and_the_written_config_is_patched(tmp_path):
    plan = {
        "defaults": {"config": "configs/rts.yaml", "links": {"runs/classifier": "c", "runs/rts": "r"},
                     "patch": {"trainer": {"max_epochs": 7}}},
        "variants": [{"name": "a", "links": {"runs/classifier": "c"}, "patch": {"model": {"init_args": {"lr": 0.5}}}}],
    }
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    (tmp_path / "c").mkdir()
    seen = {}

    def fake_run(v, out, prereq, timeout, threads):
        seen.update(v)
        workdir = out / v["name"]
        workdir.mkdir(parents=True)
        sweep.make_links(v, workdir, out, prereq)
        sweep.variant_command(v, workdir)
        return {"name": v["name"], "status": "ok", "seconds": 0.0, "metrics": {}}

    sweep.run_variant, original = fake_run, sweep.run_variant
    try:
        sweep.main([str(tmp_path / "plan.yaml"), "--out", str(tmp_path / "out"), "--prereq", str(tmp_path)])
    finally:
        sweep.run_variant = original
    assert seen["links"] == {"runs/classifier": "c"}
    workdir = tmp_path / "out" / "a"
    assert (workdir / "runs" / "classifier").is_symlink() and not (workdir / "runs" / "rts").exists()
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    assert config["trainer"]["max_epochs"] == 7 and config["model"]["init_args"]["lr"] == 0.5


def test_a_variants_subcommand_comes_before_the_config(tmp_path):
    v = {"name": "a", "script": "evaluate.py", "subcommand": "validate", "config": "configs/eval_adv2.yaml",
         "args": ["--seed_everything", "1"]}
    cmd = sweep.variant_command(v, tmp_path)
    assert cmd[1:] == [str(ROOT / "evaluate.py"), "validate", "--config", str(tmp_path / "config.yaml"),
                       "--seed_everything", "1"]
    assert "validate" not in sweep.variant_command({**v, "subcommand": None}, tmp_path)
