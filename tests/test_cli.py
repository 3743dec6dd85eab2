"""The LightningCLI entry points, run as users run them (child processes)."""

import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, run_script

TINY = [
    "--data.init_args.train_size", "64", "--data.init_args.val_size", "32", "--data.init_args.test_size", "32",
    "--data.init_args.batch_size", "32", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
    "--model.init_args.channels", "[8, 16, 32, 64]",
]


def write_folder(root, classes=("cat", "dog"), n=4, size=40):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                arr = (rng.random((size, size, 3)) * 255).astype("uint8")
                Image.fromarray(arr).save(d / f"{i}.jpg")


def run_folder(cwd, name):
    """The one run folder ``<cwd>/runs/<name>-<hash>``."""
    found = sorted((cwd / "runs").glob(f"{name}-*"))
    assert len(found) == 1, found
    return found[0]


def test_one_epoch_fit_through_the_cli_writes_summary_checkpoint_record_and_offline_wandb_run(tmp_path):
    res = run_script([str(ROOT / "train.py"), "--config", "classifier.yaml", *TINY], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    run = run_folder(tmp_path, "classifier")
    summary = json.loads((run / "report" / "summary.json").read_text())
    assert 0.0 <= summary["val/acc"] <= 1.0 and "train/loss" in summary
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "checkpoints" / "best.ckpt").is_file()
    record = json.loads((run / "complete.json").read_text())
    assert record["checkpoints"] == {"best": "checkpoints/best.ckpt", "last": "checkpoints/last.ckpt"}
    offline = list((run / "wandb").glob("offline-run-*"))
    assert offline, "no offline W&B run directory"
    # the offline run stores the logged metrics in its .wandb file
    blob = b"".join(p.read_bytes() for p in offline[0].glob("*.wandb"))
    assert b"val/acc" in blob
    assert f"{run.name} finished; wall time " in res.stdout
    # a second run of the same config reuses the folder and leaves last.ckpt the newest (no last-v1.ckpt)
    first = (run / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    res2 = run_script([str(ROOT / "train.py"), "--config", "classifier.yaml", *TINY], cwd=tmp_path)
    assert res2.returncode == 0, res2.stderr[-3000:]
    assert run_folder(tmp_path, "classifier") == run
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert (run / "checkpoints" / "last.ckpt").stat().st_mtime_ns > first
    assert (run / "complete.json").stat().st_mtime >= (run / "checkpoints" / "last.ckpt").stat().st_mtime


@pytest.mark.parametrize("seconds, text", [(42.4, "42 s"), (725, "12 min 05 s"), (3725, "1 h 02 min 05 s")])
def test_wall_time_is_printed_in_hours_minutes_and_seconds(seconds, text):
    from train import format_duration

    assert format_duration(seconds) == text


def test_datasets_switch_from_the_command_line_to_an_image_folder(tmp_path):
    write_folder(tmp_path / "folder")
    res = run_script(
        [str(ROOT / "train.py"), "--config", "classifier.yaml",
         "--data", "datamodules.ImageFolderDataModule", "--data.root", str(tmp_path / "folder"),
         "--data.val_split", "test", "--data.image_size", "32",
         "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
         "--model.init_args.channels", "[8, 16, 32, 64]", "--report_dir", str(tmp_path / "rep")],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert "val/acc" in summary


@pytest.mark.parametrize(
    "args, words",
    [
        (["--model.init_args.optimizer", "rmsprop"], ["optimizer", "adamw"]),
        (["--model.init_args.no_such_key", "1"], ["no_such_key"]),
        (["--data.init_args.image_size", "8"], ["image_size"]),
    ],
)
def test_wrong_config_values_fail_before_training_naming_the_key(tmp_path, args, words):
    res = run_script([str(ROOT / "train.py"), "--config", "classifier.yaml", *args], cwd=tmp_path, timeout=120)
    assert res.returncode != 0
    for w in words:
        assert w in res.stderr, res.stderr[-2000:]
    assert not list(tmp_path.glob("runs/*/checkpoints"))


def test_unknown_config_name_lists_the_available_ones(tmp_path):
    res = run_script([str(ROOT / "train.py"), "--config", "nope.yaml"], cwd=tmp_path, timeout=120)
    assert res.returncode != 0
    assert "classifier.yaml" in res.stderr + res.stdout


@pytest.mark.parametrize("env, rank", [({}, 0), ({"RANK": "3", "LOCAL_RANK": "1"}, 3),
                                       ({"SLURM_PROCID": "5", "LOCAL_RANK": "0"}, 5), ({"LOCAL_RANK": "2"}, 2)])
def test_prerequisites_are_made_by_the_launchers_global_rank_zero(monkeypatch, env, rank):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_script", ROOT / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    for key in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert train.global_rank() == rank
