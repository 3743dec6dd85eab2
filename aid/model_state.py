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
    # Only what has to change is recorded and changed back: a model that is already frozen in eval
    # mode (the common case inside evaluation and attack loops) costs one walk over its modules.
    saved = []
    for model in models:
        if model is None:
            continue
        modes, flags, seen = [], [], set()
        for m in model.modules():
            if m.training:
                modes.append(m)
            for p in m._parameters.values():
                if p is not None and p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    flags.append(p)
        for m in modes:
            m.training = False
        for p in flags:
            p.requires_grad_(False)
        saved.append((modes, flags))
    try:
        yield
    finally:
        # Reverse order: when a module is passed twice (or with one of its children), the first save holds
        # the caller's state and must be restored last.
        for modes, flags in reversed(saved):
            for m in modes:
                m.training = True
            for p in flags:
                p.requires_grad_(True)
