"""Shared test fixtures: tiny models and the repository root."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# Offline W&B keeps copies of logged tables and artifact files under WANDB_DATA_DIR (default: the home folder).
os.environ.setdefault("WANDB_DATA_DIR", tempfile.mkdtemp(prefix="wandb-data-"))


@pytest.fixture
def tiny_classifier():
    """A random slim resnet10t for 32 px inputs, 4 classes, in eval mode."""
    from aid.models import build_classifier

    torch.manual_seed(0)
    return build_classifier("resnet10t", num_classes=4, output_stride=8, channels=[8, 16, 32, 64]).eval()


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

    from aid.models import build_classifier

    torch.manual_seed(0)
    f = build_classifier("resnet10t", num_classes=4, output_stride=8, channels=[8, 16, 32, 64])
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
