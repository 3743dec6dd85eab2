"""One process per run folder: an exclusive lock on ``<run>/.lock``, released when the process ends.

The lock is an OS file lock (``filelock``: ``fcntl`` on POSIX, ``msvcrt`` on Windows), so a killed process
never leaves a stale lock behind. Who holds it (process, host, command, since when) is written beside it
for the error message of a second process.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock, Timeout

from aid.runs.record import read_json, write_json_atomic

LOCK = ".lock"
OWNER = ".lock-owner.json"


class RunLockedError(RuntimeError):
    """Another process holds the run folder's lock."""


class RunLock:
    """Exclusive lock of one run folder.

    Args:
        run_dir: the run's folder (created).

    Example:
        >>> lock = RunLock("runs/classifier-1a2b3c4d"); lock.acquire()   # RunLockedError if it is in use
        >>> ...; lock.release()
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.run_dir / LOCK))

    def owner(self) -> str:
        """Who holds the lock, as far as the owner file says."""
        info = read_json(self.run_dir / OWNER) or {}
        if not info:
            return "another process"
        return (f"process {info.get('pid')} on {info.get('host')} since {info.get('since')} "
                f"({info.get('command', '')})")

    def acquire(self, wait: bool = False, on_wait: Callable[[str], None] | None = None,
                poll: float = 5.0) -> RunLock:
        """Take the lock. ``wait=False``: raise :class:`RunLockedError` naming the holder when it is taken.
        ``wait=True``: block until it is free, calling ``on_wait(holder)`` every ``poll`` seconds."""
        while True:
            try:
                self._lock.acquire(timeout=0 if not wait else poll)
                break
            except Timeout:
                if not wait:
                    raise RunLockedError(
                        f"run folder {self.run_dir} is in use by {self.owner()}; wait for it to finish, or give "
                        "this run another folder (--run_dir DIR) or other settings"
                    ) from None
                if on_wait is not None:
                    on_wait(self.owner())
        write_json_atomic(self.run_dir / OWNER, {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv[:6]),
        })
        return self

    def release(self) -> None:
        """Release the lock (also released by the OS when the process ends)."""
        if self._lock.is_locked:
            (self.run_dir / OWNER).unlink(missing_ok=True)
            self._lock.release()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
