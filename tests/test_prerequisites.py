"""Prerequisites through the CLI, run as users run them: what passes on, reuse, resume, concurrency, ranks.

Tiny copies of the embedded configs (1–3 epochs, a slim network, no evaluation callbacks) keep each run to
seconds; the mechanism is the real one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from aid.checkpoints import load_checkpoint
from aid.modules.classifier import ClassifierModule
from aid.modules.data_checks import check_same_data
from aid.modules.target_classifier import target_classifier
from aid.runs.status import RunStatus
from tests.conftest import ROOT, run_script

CHANNELS = [8, 16, 32, 64]
SHAPES = {"class_path": "datamodules.ShapesDataModule",
          "init_args": {"image_size": 32, "num_classes": 4, "train_size": 64, "val_size": 32, "test_size": 32,
                        "batch_size": 32, "seed": 0}}


def tiny_configs(folder: Path, classifier_epochs: int = 1) -> dict[str, Path]:
    """classifier / rts / main configs in ``folder``: the embedded ones, made small."""
    paths = {name: folder / f"{name}.yaml" for name in ("classifier", "rts", "main")}
    for name, source in (("classifier", "classifier"), ("rts", "rts"), ("main", "rts_aid")):
        cfg = yaml.safe_load((ROOT / "configs" / f"{source}.yaml").read_text())
        cfg["trainer"].update(max_epochs=classifier_epochs if name == "classifier" else 1,
                              enable_progress_bar=False, enable_model_summary=False, callbacks=[])
        cfg["model"]["init_args"]["channels"] = CHANNELS
        cfg["data"] = SHAPES
        for item in cfg.get("prerequisites") or []:
            item["config"] = str(paths[Path(item["config"]).stem.replace("rts_aid", "main")])
        if name == "main":
            cfg["model"]["init_args"]["attack_kwargs"] = {"eps": 0.047, "alpha": 0.01, "warm_steps": 1, "steps": 2}
        paths[name].write_text(yaml.safe_dump(cfg))
    return paths


def train(config: Path, cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    res = run_script([str(ROOT / "train.py"), "--config", str(config), *args], cwd=cwd)
    return res


def folders(cwd: Path, name: str) -> list[Path]:
    return sorted((cwd / "runs").glob(f"{name}-*"))


def write_image_folder(root: Path, classes: int, train: int = 6, test: int = 4, size: int = 32) -> None:
    rng = np.random.default_rng(classes)
    for split, n in (("train", train), ("test", test)):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                arr = (rng.random((size, size, 3)) * 60 + c * 50).clip(0, 255).astype("uint8")
                Image.fromarray(arr).save(d / f"{i}.png")


@pytest.mark.slow
def test_the_main_job_on_two_image_folders_trains_each_its_own_prerequisites(tmp_path):
    cfg = tiny_configs(tmp_path)
    for classes in (3, 4):
        write_image_folder(tmp_path / f"data{classes}", classes)
    outputs = []
    for classes in (3, 4):
        res = train(cfg["main"], tmp_path, "--data", "datamodules.ImageFolderDataModule",
                    "--data.root", str(tmp_path / f"data{classes}"), "--data.val_split", "test",
                    "--data.image_size", "32")
        assert res.returncode == 0, res.stderr[-3000:]
        outputs.append(res.stdout)
    for name in ("classifier", "rts", "main"):
        assert len(folders(tmp_path, name)) == 2, name
    for name in ("classifier", "rts", "main"):
        for run in folders(tmp_path, name):
            assert (run / "complete.json").is_file()
    # each classifier learnt its own folder's classes and says so in its checkpoint
    seen = sorted(load_checkpoint(run / "checkpoints" / "best.ckpt")["data"]["classes"]
                  for run in folders(tmp_path, "classifier"))
    assert seen == [[f"class{c}" for c in range(3)], [f"class{c}" for c in range(4)]]
    # the printed plan says what is made and why, and where this run lives
    assert "[prerequisite]" in outputs[1] and "make in runs/classifier-" in outputs[1]
    assert "no such run yet" in outputs[1] and "[run] runs/main-" in outputs[1]
    # a rerun on the first folder reuses both prerequisites
    res = train(cfg["main"], tmp_path, "--data", "datamodules.ImageFolderDataModule",
                "--data.root", str(tmp_path / "data3"), "--data.val_split", "test", "--data.image_size", "32")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("reuse runs/") == 2


@pytest.mark.slow
def test_the_main_job_on_the_embedded_data_makes_and_then_reuses_its_prerequisites(tmp_path):
    cfg = tiny_configs(tmp_path)
    first = train(cfg["main"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("make in runs/") == 2
    second = train(cfg["main"], tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("reuse runs/") == 2 and "training in" not in second.stdout
    assert (folders(tmp_path, "main")[0] / "complete.json").is_file()


@pytest.mark.slow
def test_a_prerequisite_killed_mid_training_is_resumed_on_the_next_run_never_taken_as_finished(tmp_path):
    cfg = tiny_configs(tmp_path, classifier_epochs=6)
    env = dict(os.environ, WANDB_MODE="offline", PYTHONPATH=str(ROOT), WANDB_SILENT="true")
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "--config", str(cfg["rts"])], cwd=tmp_path,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list(tmp_path.glob("runs/classifier-*/checkpoints/"
                                                                                       "last.ckpt")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the parent and the classifier's process
    proc.wait()
    (classifier,) = folders(tmp_path, "classifier")
    killed_at = load_checkpoint(classifier / "checkpoints" / "last.ckpt")["epoch"]
    assert killed_at < 5, "the kill came after the last epoch"
    assert not (classifier / "complete.json").exists()

    res = train(cfg["rts"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"make in {classifier.relative_to(tmp_path)} (unfinished: no completion record; resumes" in res.stdout
    assert "Restoring states from the checkpoint" in res.stdout + res.stderr  # resumed, not restarted
    assert load_checkpoint(classifier / "checkpoints" / "last.ckpt")["epoch"] == 5
    assert (classifier / "complete.json").is_file()


@pytest.mark.slow
def test_two_runs_started_at_once_in_one_folder_never_mix(tmp_path):
    cfg = tiny_configs(tmp_path, classifier_epochs=3)
    env = dict(os.environ, WANDB_MODE="offline", PYTHONPATH=str(ROOT), WANDB_SILENT="true")
    procs = [subprocess.Popen([sys.executable, str(ROOT / "train.py"), "--config", str(cfg["classifier"])],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    (run,) = folders(tmp_path, "classifier")
    assert (run / "complete.json").is_file()
    if codes != [0, 0]:  # one refused, naming the folder in use; the other finished alone
        assert codes[0] == 0 and codes[1] != 0
        refused = next(err for code, err in results if code != 0)
        assert f"run folder {run.relative_to(tmp_path)} is in use by process" in refused
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == 2


@pytest.mark.slow
def test_another_rank_leaves_with_rank_zeros_error_when_rank_zero_fails_its_prerequisite(tmp_path):
    cfg = tiny_configs(tmp_path)
    env = dict(os.environ, WANDB_MODE="offline", PYTHONPATH=str(ROOT), WANDB_SILENT="true", RANK="1")
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "--config", str(cfg["rts"])], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("waiting for rank zero to make runs/classifier-"), line
    run_dir = tmp_path / line.split()[-1]
    RunStatus(run_dir).write("failed", error="CUDA out of memory (rank zero)")
    failed_at = time.time()
    code = proc.wait(timeout=120)
    assert code != 0 and time.time() - failed_at < 60
    assert "CUDA out of memory (rank zero)" in proc.stderr.read()


def test_a_classifier_checkpoint_of_another_architecture_is_refused_naming_both(tmp_path):
    module = ClassifierModule(arch="resnet10t", num_classes=4, output_stride=8, channels=CHANNELS)
    path = tmp_path / "c.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    assert target_classifier(str(path), arch="resnet10t", output_stride=8).num_classes == 4
    with pytest.raises(ValueError, match=r"arch='resnet10t'.*arch='resnet18'"):
        target_classifier(str(path), arch="resnet18")
    with pytest.raises(ValueError, match=r"num_classes=4.*num_classes=10"):
        target_classifier(str(path), num_classes=10)
    with pytest.raises(ValueError, match="output_stride=8.*output_stride=32"):
        target_classifier(str(path), output_stride=32)


def test_a_checkpoint_trained_on_other_classes_is_refused_naming_both():
    class Data:
        num_classes = 3

        def describe(self):
            return {"classes": ["cat", "dog", "eel"], "image_size": 32}

    trainer = type("T", (), {"datamodule": Data()})()
    check_same_data({"classes": ["cat", "dog", "eel"], "image_size": 32}, trainer)
    with pytest.raises(ValueError, match=r"classes \['ant', 'bee', 'cow'\].*\['cat', 'dog', 'eel'\]"):
        check_same_data({"classes": ["ant", "bee", "cow"], "image_size": 32}, trainer, "classifier checkpoint X")
    with pytest.raises(ValueError, match="image_size 64.*image_size 32"):
        check_same_data({"classes": ["cat", "dog", "eel"], "image_size": 64}, trainer)


def test_a_checkpoint_given_explicitly_skips_its_prerequisite_and_the_plan_says_so(tmp_path):
    cfg = tiny_configs(tmp_path)
    module = ClassifierModule(arch="resnet10t", num_classes=4, output_stride=8, channels=CHANNELS)
    path = tmp_path / "mine.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    res = train(cfg["rts"], tmp_path, "--model.init_args.classifier_ckpt", str(path))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "not made, model.init_args.classifier_ckpt is set" in res.stdout
    assert not folders(tmp_path, "classifier")
    record = json.loads((folders(tmp_path, "rts")[0] / "complete.json").read_text())
    assert record["identity"]["config"]["model"]["init_args"]["classifier_ckpt"] == str(path)


def plan(config: str, *args: str):
    """The planning parse of ``train.py --config config args`` (nothing built or trained)."""
    from train import Planned, PlanningCLI, _cli_kwargs, resolve_config

    try:
        PlanningCLI(**_cli_kwargs(["fit", "--config", str(resolve_config(config)), *args]))
    except Planned as planned:
        return planned
    raise AssertionError("planning did not stop")


def test_the_main_jobs_prerequisites_are_the_runs_their_own_configs_make(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    main = plan("rts_aid.yaml")
    classifier, rts = main.plans
    assert classifier.run_dir == plan("classifier.yaml").run_dir
    assert rts.run_dir == plan("rts.yaml").run_dir
    assert [p.item.checkpoint for p in main.plans] == ["best", "last"]
    assert "--data.init_args" not in classifier.args  # the data block travels whole
    # other devices do not make other runs; another data size or architecture does
    assert plan("rts_aid.yaml", "--trainer.accelerator", "cpu", "--trainer.devices", "2").plans[0].run_dir == \
        classifier.run_dir
    other = plan("rts_aid.yaml", "--data.init_args.image_size", "48", "--model.init_args.channels", "[8, 16, 32, 64]")
    assert {p.run_dir for p in other.plans}.isdisjoint({classifier.run_dir, rts.run_dir})
    assert other.run_dir != main.run_dir


def test_locate_finds_the_checkpoint_of_a_finished_run_and_names_the_command_otherwise(tmp_path, monkeypatch):
    from aid.runs.record import write_record
    from train import locate

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    with pytest.raises(FileNotFoundError, match="python train.py --config .*classifier.yaml"):
        locate("classifier.yaml", "best")
    planned = plan("classifier.yaml")
    (planned.run_dir / "checkpoints").mkdir(parents=True)
    (planned.run_dir / "checkpoints" / "best.ckpt").write_bytes(b"")
    write_record(planned.run_dir, planned.identity, {"best": str(planned.run_dir / "checkpoints" / "best.ckpt")})
    assert locate("classifier.yaml", "best") == planned.run_dir / "checkpoints" / "best.ckpt"
