"""What defines a run, and the folder name that follows from it.

Two runs share a folder only when their resolved configs (less the keys below, which say where and how a
run is shown, not what it computes) and their data descriptions are equal. The folder is
``<runs_root>/<name>-<hash>``: a readable name (the config's file name) and the first 8 hex digits of the
SHA-256 of the canonical JSON of the identity.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

#: Dotted config keys that never define a run: where it is written, how it is logged and shown, on what.
NOT_IDENTITY = (
    "config",
    "run_name",
    "run_dir",
    "runs_root",
    "report_dir",
    "prerequisites",
    "ckpt_path",
    "trainer.default_root_dir",
    "trainer.logger",
    # Which and how many devices compute a run, not what it computes: a classifier trained on a GPU serves
    # a run on the CPU, and the other way round.
    "trainer.accelerator",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
)
#: Keys of a callback's ``init_args`` that never define a run (a checkpoint callback's folder, progress bars).
CALLBACK_NOT_IDENTITY = ("dirpath", "progress", "verbose")
HASH_DIGITS = 8
RUNS_MARK = "<runs>"


def _drop(config: dict[str, Any], dotted: str) -> None:
    head, _, rest = dotted.partition(".")
    if head not in config:
        return
    if not rest:
        del config[head]
    elif isinstance(config[head], dict):
        _drop(config[head], rest)


def _plain(value: Any) -> Any:
    """JSON-able copy of a config value (dicts, lists, scalars; anything else as its string)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _runs_relative(value: Any, root: str) -> Any:
    """``value`` with every string that is a path inside the runs folder written relative to it (``<runs>/...``)."""
    if isinstance(value, dict):
        return {k: _runs_relative(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_runs_relative(v, root) for v in value]
    if isinstance(value, str) and os.path.normpath(value).startswith(root + os.sep):
        return RUNS_MARK + os.path.normpath(value)[len(root):]
    return value


def run_identity(
    config: dict[str, Any], data: dict[str, Any] | None = None, subcommand: str = "fit"
) -> dict[str, Any]:
    """The identity of a run: its subcommand, its config without :data:`NOT_IDENTITY` keys, its data description.

    Paths inside the config's ``runs_root`` (the checkpoints of prerequisites) count relative to it, so a run
    has the same identity whichever folder holds the runs.

    Args:
        config: the resolved config of one subcommand as a nested dict (``Namespace.as_dict()``).
        data: :func:`data_description` of the run's datamodule (None when there is none).
        subcommand: ``fit``, ``validate`` or ``test``.
    """
    config = _plain(config)
    config = _runs_relative(config, os.path.normpath(str(config.get("runs_root") or "runs")))
    for key in NOT_IDENTITY:
        _drop(config, key)
    callbacks = (config.get("trainer") or {}).get("callbacks") or []
    for cb in callbacks if isinstance(callbacks, list) else []:
        args = cb.get("init_args") if isinstance(cb, dict) else None
        for key in CALLBACK_NOT_IDENTITY if isinstance(args, dict) else ():
            args.pop(key, None)
    return {"subcommand": subcommand, "config": config, "data": _plain(data)}


def identity_hash(identity: dict[str, Any]) -> str:
    """The first :data:`HASH_DIGITS` hex digits of the SHA-256 of the identity's canonical JSON."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_DIGITS]


def run_folder(runs_root: str | Path, name: str, identity: dict[str, Any]) -> Path:
    """``<runs_root>/<name>-<hash of identity>``."""
    return Path(runs_root) / f"{name}-{identity_hash(identity)}"


def data_description(datamodule: Any) -> dict[str, Any] | None:
    """What a run's data is: the datamodule's ``describe()`` (class names, split sizes, image size) when it
    has one, else its class and ``num_classes`` / ``image_size``; None without a datamodule."""
    if datamodule is None:
        return None
    describe = getattr(datamodule, "describe", None)
    if callable(describe):
        return dict(describe())
    out: dict[str, Any] = {"class": f"{type(datamodule).__module__}.{type(datamodule).__qualname__}"}
    for key in ("num_classes", "image_size"):
        if hasattr(datamodule, key):
            out[key] = getattr(datamodule, key)
    return out
