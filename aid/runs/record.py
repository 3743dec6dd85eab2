"""The completion record: ``complete.json``, written last, after a run finished without error.

A run folder without it is unfinished (killed, failed, still running) and is never reused as finished.
The record holds the run's identity (config and data description), its checkpoints (``best`` / ``last``,
relative to the folder) and when it finished.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

RECORD = "complete.json"


def write_json_atomic(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as JSON to ``path`` through a temporary file of this process, then rename it in place.

    The temporary name is unique per process and call, so concurrent writers never share one; the rename is
    atomic, so a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_json(path: str | Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when the file is missing or not a readable JSON object."""
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_record(run_dir: str | Path, identity: dict[str, Any], checkpoints: dict[str, str | None]) -> Path:
    """Write the completion record of ``run_dir``.

    Args:
        run_dir: the run's folder.
        identity: :func:`aid.runs.identity.run_identity` of the run.
        checkpoints: ``{"best": path or None, "last": path or None}``; stored relative to ``run_dir`` when
            they lie inside it.
    """
    run_dir = Path(run_dir)
    stored = {}
    for kind, path in checkpoints.items():
        if path:
            p = Path(path)
            stored[kind] = str(p.resolve().relative_to(run_dir.resolve())) if p.resolve().is_relative_to(
                run_dir.resolve()) else str(p)
    payload = {
        "identity": identity,
        "checkpoints": stored,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": socket.gethostname(),
    }
    return write_json_atomic(run_dir / RECORD, payload)


def read_record(run_dir: str | Path) -> dict[str, Any] | None:
    """The completion record of ``run_dir``, or None when the run never finished (or the record is unreadable)."""
    record = read_json(Path(run_dir) / RECORD)
    return record if record is not None and "identity" in record else None


def remove_record(run_dir: str | Path) -> None:
    """Mark ``run_dir`` as unfinished (a new run in it has started to change its checkpoints)."""
    (Path(run_dir) / RECORD).unlink(missing_ok=True)


def record_matches(record: dict[str, Any] | None, identity: dict[str, Any]) -> tuple[bool, str]:
    """(True, "") when ``record`` is a completion record of a run with ``identity``; else (False, why)."""
    if record is None:
        return False, "no completion record (never finished, killed or failed)"
    theirs = record.get("identity", {})
    for part in ("subcommand", "data", "config"):
        if theirs.get(part) != identity.get(part):
            diff = _first_difference(theirs.get(part), identity.get(part))
            return False, f"its record's {part} differs from this run's ({diff})"
    return True, ""


def record_checkpoint(run_dir: str | Path, record: dict[str, Any], kind: str) -> Path:
    """The ``kind`` (``best`` or ``last``) checkpoint of a finished run; ValueError when it has none."""
    stored = record.get("checkpoints", {}).get(kind)
    if not stored:
        have = ", ".join(sorted(record.get("checkpoints", {}))) or "none"
        raise ValueError(f"run {run_dir} has no {kind!r} checkpoint (it has: {have})")
    path = Path(stored)
    return path if path.is_absolute() else Path(run_dir) / path


def _first_difference(a: Any, b: Any, where: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{where}.{key}" if where else str(key))
    return f"{where or 'value'}: {a!r} there, {b!r} here"
