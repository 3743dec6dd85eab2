"""Adversarial examples and benign maps shared by the evaluation callbacks of one evaluation round.

The ADV² evaluation, transferability, squeezing and image-grid callbacks need the same adversarial
inputs; the cache lives on the trainer and is cleared whenever the global step or the trainer's
function changes, so a round never reuses examples made against an older interpreter; keys hold the
attack's and the interpreter's settings, so callbacks that configure them differently never share.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import pytorch_lightning as pl

_ATTR = "_aid_eval_cache"


def cached(trainer: pl.Trainer, key: tuple[Hashable, ...], compute: Callable[[], Any]) -> Any:
    """Return the cached value for ``key`` in this evaluation round, computing it on a miss."""
    stamp = (trainer.global_step, str(trainer.state.fn))
    cache = getattr(trainer, _ATTR, None)
    if cache is None or cache.get("__stamp__") != stamp:
        cache = {"__stamp__": stamp}
        setattr(trainer, _ATTR, cache)
    if key not in cache:
        cache[key] = compute()
    return cache[key]


def batch_key(batch: Any) -> tuple[Hashable, ...]:
    """A hashable identity of an evaluation batch: its split, dataset indices and target classes."""
    return (batch.split, tuple(batch.index.tolist()), tuple(batch.target.tolist()))


def settings_key(settings: dict[str, Any]) -> str:
    """A hashable identity of keyword settings (an attack's or an interpreter's)."""
    return repr(sorted(settings.items()))


def interpreter_key(interp: Any) -> str:
    """The settings an interpreter was built with (``cache_tag``, set by ``resolve_interpreters``), so that
    callbacks that build the same interpreter differently never share its maps or attacks."""
    return getattr(interp, "cache_tag", "")
