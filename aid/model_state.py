"""Keep models as they were found: eval mode and frozen parameters only for the duration of a call."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def frozen_eval(*models: nn.Module | None) -> Iterator[None]:
    """Put models in eval mode with ``requires_grad=False`` and restore both on exit.

    Attacks and interpreters differentiate with respect to the input only; freezing the parameters
    avoids computing (and, under DDP, reducing) parameter gradients, and restoring them leaves the
    caller's training loop untouched.
    """
    saved = []
    for model in models:
        if model is None:
            continue
        modes = [(m, m.training) for m in model.modules()]
        flags = [(p, p.requires_grad) for p in model.parameters()]
        saved.append((modes, flags))
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
    try:
        yield
    finally:
        # Reverse order: when a module is passed twice (or with one of its children), the first save holds
        # the caller's state and must be restored last.
        for modes, flags in reversed(saved):
            for m, training in modes:
                m.training = training
            for p, flag in flags:
                p.requires_grad_(flag)
