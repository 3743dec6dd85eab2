"""Mistakes refused before any training, through the CLI as users run it: each ends with a non-zero exit and a
message naming the offender, and no checkpoint is written."""

from __future__ import annotations

import time

import pytest
import torch
import yaml

from aid.modules.classifier import ClassifierModule
from tests.conftest import ROOT, run_script

TINY = ["--data.init_args.train_size", "64", "--data.init_args.val_size", "32", "--data.init_args.test_size", "32",
        "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
        "--model.init_args.channels", "[8, 16, 32, 64]"]
ZEN = "Beautiful is better than ugly"


def refused(tmp_path, args, words, config="classifier.yaml"):
    start = time.time()
    res = run_script([str(ROOT / "train.py"), "--config", str(config), *args], cwd=tmp_path, timeout=300)
    took = time.time() - start
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-2000:]
    for w in words:
        assert w in out, (w, out[-3000:])
    assert not list(tmp_path.rglob("*.ckpt")) or all("given" in str(p) for p in tmp_path.rglob("*.ckpt"))
    assert not list(tmp_path.glob("runs/*/checkpoints"))
    return out, took


def config_with_callback(tmp_path, init_args):
    cfg = yaml.safe_load((ROOT / "configs" / "classifier.yaml").read_text())
    cfg["trainer"]["callbacks"] = [{"class_path": "callbacks.adv2.ADV2Evaluation", "init_args": init_args}]
    path = tmp_path / "with_callback.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("init_args, words", [
    ({"interpreters": ["gradcamm"]}, ["interpreters", "gradcamm", "gradcam"]),
    ({"interpreters": ["grad"], "attack_kwargs": {"pdg": {"eps": 0.03}}}, ["attack_kwargs.pdg", "pgd"]),
    ({"interpreters": ["grad"], "attack_kwargs": {"pgd": {"eps": 8}}}, ["eps", "8/255"]),
    ({"interpreters": ["grad"], "interpreter_kwargs": {"grd": {"pool": 4}}}, ["interpreter_kwargs.grd", "grad"]),
])
def test_a_wrong_evaluation_setting_is_refused_before_training(tmp_path, init_args, words):
    _, took = refused(tmp_path, TINY, words, config_with_callback(tmp_path, init_args))
    assert took < 90


def write_checkpoint(path, hyper_parameters, module=None):
    module = module or ClassifierModule(arch="resnet10t", num_classes=8, output_stride=8, channels=[8, 16, 32, 64])
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hyper_parameters}, path)
    return path


def test_a_checkpoint_naming_another_class_is_refused_without_importing_it(tmp_path):
    ckpt = write_checkpoint(tmp_path / "given.ckpt", {"_class_path": "this.Foo", "arch": "resnet10t"})
    out, _ = refused(tmp_path, [*TINY, "--ckpt_path", str(ckpt)],
                     ["this.Foo", "aid.modules.classifier.ClassifierModule"])
    assert ZEN not in out  # `import this` prints the Zen of Python: nothing the checkpoint names is imported


def test_a_checkpoint_of_another_architecture_is_refused_naming_both(tmp_path):
    ckpt = write_checkpoint(tmp_path / "given.ckpt", {"_class_path": "aid.modules.classifier.ClassifierModule",
                                                      "arch": "resnet10t", "num_classes": 8})
    refused(tmp_path, [*TINY, "--model.init_args.arch", "resnet18", "--ckpt_path", str(ckpt)],
            ["model.arch='resnet10t'", "model.arch='resnet18'"])


def test_a_checkpoint_with_another_class_count_names_the_data_not_a_setting_the_user_never_made(tmp_path):
    module = ClassifierModule(arch="resnet10t", num_classes=3, output_stride=8, channels=[8, 16, 32, 64])
    ckpt = write_checkpoint(tmp_path / "given.ckpt", dict(module.hparams, _class_path=
                                                          "aid.modules.classifier.ClassifierModule"), module)
    out, _ = refused(tmp_path, [*TINY, "--ckpt_path", str(ckpt)], ["has 3 classes", "the data", "has 8"])
    assert "set model.num_classes" not in out


@pytest.mark.parametrize("args, words", [
    (["--trainer.max_epochs", "0"], ["max_epochs", "nothing would be trained"]),
    (["--prerequisites", '[{"config": "classifier.yaml", "provides": "x", "checkpoint": "first"}]'],
     ["prerequisites[0].checkpoint", "best", "last"]),
])
def test_settings_that_cannot_train_are_refused(tmp_path, args, words):
    refused(tmp_path, [*TINY, *args], words)


def test_a_binary_file_as_config_is_refused_naming_it(tmp_path):
    path = tmp_path / "weights.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    refused(tmp_path, [], [str(path), "not a readable YAML file"], config=path)
