"""Shared test fixtures: tiny models, data and training helpers, and the repository root."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# Offline W&B keeps copies of logged tables and artifact files under WANDB_DATA_DIR (default: the home folder).
os.environ.setdefault("WANDB_DATA_DIR", tempfile.mkdtemp(prefix="wandb-data-"))


@pytest.fixture
def tiny_classifier():
    """A random :func:`build_slim_classifier`, in eval mode."""
    torch.manual_seed(0)
    return build_slim_classifier().eval()


def load_script(name: str) -> ModuleType:
    """The module ``experiments/<name>.py``, loaded from its file (experiments are not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a repository script (train.py / evaluate.py / a helper) in a child process."""
    env = dict(os.environ, WANDB_MODE="offline", PYTHONPATH=str(ROOT), WANDB_SILENT="true")
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )

# Tiny test models run faster on one thread, and do not fight the CI machine's two cores.
torch.set_num_threads(1)


def quadrant_images(n: int, seed: int = 0, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Toy 4-class images: class k has a slightly brighter quadrant k on a noisy grey background."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = 0.3 + 0.2 * torch.rand(n, 3, size, size, generator=g)
    rows = torch.arange(size).view(1, 1, -1, 1) // (size // 2)
    cols = torch.arange(size).view(1, 1, 1, -1) // (size // 2)
    x = x + 0.12 * ((rows == (y // 2).view(-1, 1, 1, 1)) & (cols == (y % 2).view(-1, 1, 1, 1))).float()
    return x.clamp(0, 1), y


def quadrant_classifier():
    """The tiny resnet10t briefly trained on the quadrant toy (accurate, still attackable at ε = 0.1).

    Random tiny models give nearly the same output for any input, so no attack can reach a target on them.
    """
    import torch.nn.functional as F

    torch.manual_seed(0)
    f = build_slim_classifier()
    opt = torch.optim.Adam(f.parameters(), lr=1e-2)
    for i in range(15):
        x, y = quadrant_images(16, seed=i)
        opt.zero_grad()
        F.cross_entropy(f(x), y).backward()
        opt.step()
    return f.eval()


@pytest.fixture(scope="module")
def model():
    """:func:`quadrant_classifier`, once per test module (a module may define its own ``model``)."""
    return quadrant_classifier()


class TinyClassifierModule(pl.LightningModule):
    """A seeded slim resnet10t (4 classes, 32 px inputs) as ``classifier``: trains with cross-entropy (Adam)
    and logs ``val/loss``; the evaluation callbacks build their registry interpreters on it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.classifier = build_slim_classifier()

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self.classifier(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", F.cross_entropy(self.classifier(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.Adam(self.classifier.parameters(), lr=3e-3)


def build_slim_classifier():
    """An untrained slim resnet10t: 4 classes, output stride 8, channels [8, 16, 32, 64] (4x4 maps at 32 px)."""
    from aid.models import build_classifier

    return build_classifier("resnet10t", num_classes=4, output_stride=8, channels=[8, 16, 32, 64])


def shapes_datamodule(**overrides):
    """The synthetic shapes data of the callback tests: 4 classes, 32 px, 64 images per split, batches of 32
    (``overrides``: other ShapesDataModule arguments)."""
    from datamodules import ShapesDataModule

    settings = dict(image_size=32, num_classes=4, train_size=64, val_size=64, test_size=64, batch_size=32)
    return ShapesDataModule(**{**settings, **overrides})


def briefly_trained_state(module: pl.LightningModule, epochs: int = 4) -> dict[str, torch.Tensor]:
    """The module's weights after ``epochs`` of training on :func:`shapes_datamodule` (no validation): a random
    classifier's logits hardly depend on the input, so targeted attacks would never succeed on it."""
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, accelerator="cpu", devices=1, num_sanity_val_steps=0,
                         limit_val_batches=0)
    trainer.fit(module, datamodule=shapes_datamodule())
    return {k: v.clone() for k, v in module.state_dict().items()}
