"""One run per output folder: an exclusive `flock` on FOLDER/.lock, held for the run's lifetime.

The kernel drops the lock when the holder dies (SIGKILL included), so a stale lock never blocks a
rerun; the file only says who holds it, for the error message.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK_FILE = ".lock"


class RunLockedError(RuntimeError):
    """Another run holds the folder."""


def file_in_the_way(folder: str | os.PathLike, flag: str = "--output_dir") -> str | None:
    """Why `folder` cannot be created as an output folder (it, or a folder above it, is a file), or None: the one
    wording for the run lock, the trainers' output checks and the two-phase runner."""
    folder = Path(folder)
    hit = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if hit is None:
        return None
    where = "is a file" if hit == folder else f"is inside {hit}, which is a file"
    return f"{flag} {folder}: {where}, not a folder; pass a folder (it is created)"


class RunLock:
    """`with RunLock(folder, "training"):` ... raises RunLockedError naming the holder."""

    def __init__(self, folder: str | os.PathLike, what: str):
        self.path = Path(folder) / LOCK_FILE
        self.what = what
        self._fh = None

    def acquire(self) -> "RunLock":
        folder = self.path.parent
        problem = file_in_the_way(folder, "output folder")
        if problem:  # mkdir's bare "[Errno 17] File exists: 'train.csv'" named neither flag nor fix
            raise FileExistsError(problem)
        folder.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown process"
            fh.close()
            raise RunLockedError(f"{self.path.parent} is in use by another {self.what} run ({holder}); wait for it to "
                                 "finish or stop it, or use another folder") from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                             "command": " ".join(sys.argv)[:500]}))
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing drops the flock; the file stays (removing it would race a new holder)
            self._fh = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
