"""A killed run resumes from its last checkpoint and ends where an uninterrupted run ends."""

import os
import signal
import subprocess
import sys
import time

import pytest
import pytorch_lightning as pl
import torch

from aid.checkpoints import load_checkpoint
from tests.conftest import ROOT, run_script

ARGS = [
    "--config", "classifier.yaml", "--trainer.max_epochs", "4", "--trainer.enable_progress_bar", "false",
    "--data.init_args.train_size", "512", "--data.init_args.val_size", "64", "--data.init_args.batch_size", "32",
    "--model.init_args.channels", "[8, 16, 32, 64]",
]


def weights(path):
    return load_checkpoint(path)["state_dict"]


@pytest.mark.slow
def test_classifier_run_killed_with_sigkill_resumes_to_the_same_weights(tmp_path):
    # Tolerance: CPU kernels are deterministic here, so resumed and uninterrupted weights agree to 1e-6.
    full, cut = tmp_path / "full", tmp_path / "cut"
    full.mkdir(), cut.mkdir()
    res = run_script([str(ROOT / "train.py"), *ARGS], cwd=full)
    assert res.returncode == 0, res.stderr[-3000:]

    env = dict(os.environ, WANDB_MODE="offline", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *ARGS], cwd=cut, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(cut.glob("runs/classifier-*/checkpoints/last.ckpt")) and time.time() < deadline \
            and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    (last,) = cut.glob("runs/classifier-*/checkpoints/last.ckpt")
    epoch = load_checkpoint(last)["epoch"]
    assert epoch < 3, "the kill came after the last epoch"

    res = run_script([str(ROOT / "train.py"), *ARGS, "--ckpt_path", str(last)], cwd=cut)
    assert res.returncode == 0, res.stderr[-3000:]
    (uninterrupted,) = full.glob("runs/classifier-*/checkpoints/last.ckpt")
    assert uninterrupted.parent.parent.name == last.parent.parent.name  # the same run, so the same folder
    a = weights(uninterrupted)
    b = weights(last)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k


@pytest.mark.slow
def test_aid_training_interrupted_and_resumed_matches_uninterrupted(tmp_path):
    from aid.modules.aid import AIDModule
    from datamodules import ShapesDataModule
    from tests.test_modules import save_classifier

    ckpt = str(save_classifier(tmp_path / "c.ckpt"))
    kwargs = dict(attack_kwargs={"eps": 0.05, "alpha": 0.01, "warm_steps": 1, "steps": 2})

    def trainer(epochs):
        return pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, accelerator="cpu", devices=1, limit_val_batches=0,
                          num_sanity_val_steps=0)

    def data():
        return ShapesDataModule(image_size=32, num_classes=4, train_size=32, val_size=16, test_size=16, batch_size=16)

    pl.seed_everything(0)
    full = AIDModule(ckpt, **kwargs)
    trainer(2).fit(full, datamodule=data())

    pl.seed_everything(0)
    first = AIDModule(ckpt, **kwargs)
    t = trainer(1)
    t.fit(first, datamodule=data())
    t.save_checkpoint(tmp_path / "mid.ckpt")
    resumed = AIDModule(ckpt, **kwargs)
    trainer(2).fit(resumed, datamodule=data(), ckpt_path=tmp_path / "mid.ckpt")

    for (k, a), b in zip(full.masker.state_dict().items(), resumed.masker.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), k
