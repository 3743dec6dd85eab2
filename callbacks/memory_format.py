"""Opt-in channels-last memory format for every model of a run (classifier, maskers), for GPU runs."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback


class ChannelsLast(Callback):
    """Store the LightningModule's 4-D weights in ``torch.channels_last`` when the run starts.

    Convolutions then run in NHWC, which tensor cores on recent GPUs prefer (most with bf16); inputs in
    NCHW are accepted as they are, the first convolution's output follows its weight's format. Off by
    default. On this project's 2-core CPU it made a PGD step 17 % faster at batch 32
    (benchmarks/bench_switches.py) but a quick check at batch 8 was slower, so the embedded configs do not
    turn it on. Outputs, maps and attacks are the same up to float rounding.

    Example (config)::

        trainer:
          callbacks:
            - class_path: callbacks.memory_format.ChannelsLast
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pl_module.to(memory_format=torch.channels_last)
