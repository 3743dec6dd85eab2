"""Train AID with the presence gate for a few steps with N CPU processes
(``python tests/ddp_aid_script.py N OUT``); each rank writes its gate weights to OUT/rank<r>.pt.

Launched by tests in a child process: ``strategy="ddp"`` re-launches ``sys.argv``, which must not be pytest.
"""

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

from aid.modules.aid import AIDModule
from aid.modules.classifier import ClassifierModule
from aid.modules.rts import RTSModule
from datamodules import ShapesDataModule


def main(devices: int, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    clf, rts = out / "classifier.ckpt", out / "rts.ckpt"
    if not rts.exists():  # the parent of the DDP processes writes them once (rank 0 of the launch)
        torch.manual_seed(0)
        module = ClassifierModule(num_classes=4, output_stride=8, channels=[8, 16, 32, 64])
        torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, clf)
        torch.save({"state_dict": RTSModule(str(clf)).state_dict()}, rts)
    pl.seed_everything(0)
    model = AIDModule(
        str(clf), rts_ckpt=str(rts), presence=True, train_masker=False, presence_ce_weight=0.3,
        keep_weight=2.0, fake_label_prob=0.5, lr=1e-3,
        attack_kwargs={"eps": 0.05, "alpha": 0.01, "warm_steps": 1, "steps": 2},
    )
    data = ShapesDataModule(image_size=32, num_classes=4, train_size=64, val_size=16, test_size=16, batch_size=8)
    trainer = pl.Trainer(
        accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_steps=3,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=data)
    gate = {k: v.detach().cpu() for k, v in model.masker.presence.state_dict().items()}
    frozen = {k: v.detach().cpu() for k, v in model.masker.state_dict().items() if not k.startswith("presence.")}
    torch.save({"gate": gate, "frozen": frozen}, out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
