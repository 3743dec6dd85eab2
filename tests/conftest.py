"""Shared test fixtures: tiny models and the repository root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture
def tiny_classifier():
    """A random slim resnet10t for 32 px inputs, 4 classes, in eval mode."""
    from aid.models import build_classifier

    torch.manual_seed(0)
    return build_classifier("resnet10t", num_classes=4, output_stride=8, channels=[8, 16, 32, 64]).eval()


def run_script(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a repository script (train.py / evaluate.py / a helper) in a child process."""
    env = dict(os.environ, WANDB_MODE="offline", PYTHONPATH=str(ROOT), WANDB_SILENT="true")
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )

# Tiny test models run faster on one thread, and do not fight the CI machine's two cores.
torch.set_num_threads(1)
