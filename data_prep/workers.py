"""Worker-process settings every multi-process data_prep stage shares (hdf5, packed)."""

from __future__ import annotations

import os
import time


def quiet_worker(parent: int) -> None:
    """Pool initializer: a worker stopped by SIGTERM (the pool's terminate, or a signal to the process group) or
    orphaned by its parent's death exits at once and says nothing; the parent reports the stop in one line
    (data_prep.cli: exit 143). Without it an orphaned worker printed a BrokenPipeError traceback per result it could
    not send, and a worker that inherited the parent's handler would print a traceback of its own. (Not
    PR_SET_PDEATHSIG: it fires when the *thread* that forked the worker ends, and the pool forks replacements from a
    helper thread that ends at every terminate.)"""
    import signal
    import threading

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which stops the pool

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(128 + signal.SIGTERM)  # the parent is gone: nobody reads this worker's results

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
