"""Opt-in channels-last memory format for every model of a run (classifier, maskers), for GPU runs."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback


class ChannelsLast(Callback):
    """Store the LightningModule's 4-D weights in ``torch.channels_last`` when the run starts.

    Convolutions then run in NHWC, which tensor cores on recent GPUs prefer (most with bf16); inputs in
    NCHW are accepted as they are, the first convolution's output follows its weight's format. Off by
    default, and the embedded (CPU) configs leave it off: on a CPU the gain depends on the batch size and
    can be a loss. Outputs, maps and attacks are the same up to float rounding.

    Example (config)::

        trainer:
          callbacks:
            - class_path: callbacks.memory_format.ChannelsLast
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pl_module.to(memory_format=torch.channels_last)
