"""Run a small evaluation with N CPU processes (``python tests/ddp_eval_script.py N OUT [validate|test]``).

Launched by tests in a child process: ``strategy="ddp"`` re-launches ``sys.argv``, which must not be pytest.
"""

import sys

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from aid.interpreters.rts import RTSInterpreter, RTSMasker
from aid.models import build_classifier
from callbacks import ADV2Evaluation, LocalizationEvaluation, ReportWriter
from datamodules import ShapesDataModule


class TinyModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.classifier = build_classifier("resnet10t", num_classes=4, output_stride=8, channels=[8, 16, 32, 64])
        self.masker = RTSMasker.from_classifier(self.classifier)

    def interpreters(self):
        return {"rts": RTSInterpreter(self.classifier, masker=self.masker)}

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", F.cross_entropy(self.classifier(batch[0]), batch[1]), sync_dist=True)

    def test_step(self, batch, batch_idx):
        self.log("test/loss", F.cross_entropy(self.classifier(batch[0]), batch[1]), sync_dist=True)


def main() -> None:
    devices, out, mode = int(sys.argv[1]), sys.argv[2], (sys.argv[3] if len(sys.argv) > 3 else "validate")
    torch.set_num_threads(1)
    attacks = {"pgd": {"steps": 4, "eps": 0.1, "alpha": 0.02}, "adv2": {"steps": 3, "warm_steps": 2, "eps": 0.1}}
    common = dict(num_images=7, batch_size=2, progress=False, split="val" if mode == "validate" else "test")
    trainer = pl.Trainer(
        accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", logger=False,
        inference_mode=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
        callbacks=[
            ReportWriter(out),
            ADV2Evaluation(interpreters=["cam", "rts"], attacks=["pgd", "adv2"], attack_kwargs=attacks, **common),
            # Random-patch targets and StAdv's random start: drawn per image, whatever the process.
            ADV2Evaluation(interpreters=["rts"], attacks=["adv2", "stadv"], target_map="patch", prefix="patch",
                           attack_kwargs={**attacks, "stadv": {"steps": 3, "lr": 0.1}}, **common),
            LocalizationEvaluation(interpreters=["grad", "rts"], **common),
        ],
    )
    dm = ShapesDataModule(image_size=32, num_classes=4, train_size=32, val_size=96, test_size=96, batch_size=32)
    getattr(trainer, mode)(TinyModule(), datamodule=dm)


if __name__ == "__main__":
    main()
