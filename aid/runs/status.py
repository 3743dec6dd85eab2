"""Rank zero's word to the other ranks of a launch while it makes a prerequisite: ``<run>/status.json``.

Rank zero writes ``{"state": "training" | "waiting" | "failed", "heartbeat": time, "error": ...}`` and renews
the heartbeat every few seconds from a thread while it trains (or waits for another process that trains)
the prerequisite. The other ranks wait for the completion record as long as the heartbeat is fresh, and
leave with rank zero's error as soon as it writes a failure: there is no fixed time limit, since a
prerequisite at paper scale trains for days.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from aid.runs.record import read_json, read_record, record_matches, write_json_atomic

STATUS = "status.json"


class RunStatus:
    """Rank zero's status file of one prerequisite run, with a heartbeat thread.

    Args:
        run_dir: the prerequisite's folder.
        every: seconds between heartbeats.

    Example:
        >>> with RunStatus(run_dir).beating("training"):
        ...     train()            # a failure inside writes state "failed" with the error
    """

    def __init__(self, run_dir: str | Path, every: float = 5.0) -> None:
        self.path = Path(run_dir) / STATUS
        self.every = every
        self._state = "training"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def write(self, state: str, error: str | None = None) -> None:
        """Write the status now (with a fresh heartbeat)."""
        self._state = state
        write_json_atomic(self.path, {
            "state": state, "heartbeat": time.time(), "error": error,
            "pid": os.getpid(), "host": socket.gethostname(),
        })

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            self.write(self._state)

    def beating(self, state: str = "training") -> RunStatus:
        """Context manager: write ``state`` and keep the heartbeat going until the block ends; an exception
        inside writes ``failed`` with its message (and propagates)."""
        self._state = state
        return self

    def __enter__(self) -> RunStatus:
        self.write(self._state)
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if exc is not None:
            self.write("failed", error=f"{type(exc).__name__}: {exc}")
        else:
            self.path.unlink(missing_ok=True)


def read_status(run_dir: str | Path) -> dict[str, Any] | None:
    """The status rank zero last wrote in ``run_dir`` (None when there is none)."""
    return read_json(Path(run_dir) / STATUS)


class RankZeroFailed(RuntimeError):
    """Rank zero failed to make a prerequisite, or stopped giving signs of life."""


def wait_for_record(
    run_dir: str | Path,
    identity: dict[str, Any],
    since: float,
    poll: float = 2.0,
    stale_after: float = 60.0,
    start_grace: float = 600.0,
    say: Any = None,
) -> dict[str, Any]:
    """Wait (ranks other than zero) until ``run_dir`` holds a completion record matching ``identity``.

    Only what rank zero wrote after ``since`` (this process's start of the wait, less a few seconds) counts:
    an older failure or heartbeat belongs to an earlier launch.

    Args:
        run_dir: the prerequisite's folder.
        identity: the run identity its record must match.
        since: ``time.time()`` when this rank began to wait.
        poll: seconds between looks.
        stale_after: rank zero counts as gone when its last heartbeat is older than this.
        start_grace: seconds allowed before rank zero's first heartbeat.
        say: ``print``-like callable for a line when the wait starts (default ``print``).

    Raises:
        RankZeroFailed: rank zero wrote a failure (its error is in the message), or its heartbeat stopped.
    """
    run_dir = Path(run_dir)
    fresh_from = since - 5.0
    seen_alive = False
    (say or functools.partial(print, flush=True))(f"waiting for rank zero to make {run_dir}")
    while True:
        ok, _ = record_matches(read_record(run_dir), identity)
        if ok:
            return read_record(run_dir) or {}
        status = read_status(run_dir) or {}
        beat = float(status.get("heartbeat") or 0.0)
        now = time.time()
        if beat >= fresh_from:
            seen_alive = True
            if status.get("state") == "failed":
                raise RankZeroFailed(f"rank zero failed to make {run_dir}: {status.get('error')}")
            if now - beat > stale_after:
                raise RankZeroFailed(
                    f"rank zero stopped its heartbeat while making {run_dir} ({now - beat:.0f} s ago, "
                    f"process {status.get('pid')} on {status.get('host')}): it was killed or lost"
                )
        elif not seen_alive and now - since > start_grace:
            raise RankZeroFailed(f"rank zero gave no sign of making {run_dir} within {start_grace:.0f} s")
        time.sleep(poll)
