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


class RunLock:
    """`with RunLock(folder, "training"):` ... raises RunLockedError naming the holder."""

    def __init__(self, folder: str | os.PathLike, what: str):
        self.path = Path(folder) / LOCK_FILE
        self.what = what
        self._fh = None

    def acquire(self) -> "RunLock":
        folder = self.path.parent
        file_in_the_way = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        if file_in_the_way is not None:  # mkdir's bare "[Errno 17] File exists: 'train.csv'" named neither flag nor fix
            where = "is a file" if file_in_the_way == folder else f"is inside {file_in_the_way}, which is a file"
            raise FileExistsError(f"output folder {folder}: {where}, not a folder; pass a folder for the {self.what} run's "
                                  "output (it is created)")
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
