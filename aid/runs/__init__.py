"""Where runs live and when a finished run may be reused.

A run's folder follows from what defines it: ``<runs_root>/<name>-<hash>``, with the hash taken over the
resolved config (data, model, seed, trainer; paths and loggers left out) and a description of the data
(class names, split sizes, image size). A run is finished only when its completion record
(``complete.json``, written last) exists, and it is reused only when that record matches. A lock file
keeps two processes out of one run folder, and a status file with a heartbeat lets the other ranks of a
multi-process launch follow rank zero while it trains a prerequisite.
"""

from aid.runs.identity import data_description, run_folder, run_identity
from aid.runs.lock import RunLock, RunLockedError
from aid.runs.record import read_record, record_matches, write_record
from aid.runs.status import RunStatus, wait_for_record

__all__ = [
    "RunLock",
    "RunLockedError",
    "RunStatus",
    "data_description",
    "read_record",
    "record_matches",
    "run_folder",
    "run_identity",
    "wait_for_record",
    "write_record",
]
