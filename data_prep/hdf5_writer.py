"""Streaming HDF5 writer in NVIDIA's pretraining schema (``bundle.hdf5_schema``, shared with the reader).

Rows are appended to resizable, gzip-compressed datasets in batches so memory is flat in the shard
size; the file is written under a hidden temporary name (``bundle.atomic``) and renamed on a clean close.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from pathlib import Path

import h5py
import numpy as np

from bundle import hdf5_schema
from bundle.atomic import atomic_path


class Hdf5InstanceWriter:
    """``with Hdf5InstanceWriter(path, L, P) as w: w.write(batch)``; renamed to ``path`` on success."""

    def __init__(self, path: Path, max_seq_length: int, max_predictions_per_seq: int,
                 chunk_rows: int = 1024, compression_level: int = 1):
        self.path = Path(path)
        self.tmp: Path | None = None
        self.seq_len, self.max_pred = max_seq_length, max_predictions_per_seq
        self.chunk_rows = chunk_rows
        # gzip level 1 + shuffle: 1.8x faster to write than NVIDIA's level 4 and slightly smaller
        # (the shuffle filter groups the bytes of the int32s); every gzip level reads the same.
        self.compression_level = compression_level
        self.rows = 0
        self.f = None
        self.ds: dict = {}
        self._atomic: contextlib.AbstractContextManager | None = None

    def __enter__(self) -> "Hdf5InstanceWriter":
        self._atomic = atomic_path(self.path)
        self.tmp = self._atomic.__enter__()
        try:
            self.f = h5py.File(self.tmp, "w")
        except BaseException as e:
            self.__exit__(type(e), e, e.__traceback__)
            raise
        for d in hdf5_schema.DATASETS:
            shape = hdf5_schema.shape(d, 0, self.seq_len, self.max_pred)
            maxshape = hdf5_schema.shape(d, None, self.seq_len, self.max_pred)
            chunks = (self.chunk_rows * 16,) if d.width is None else (self.chunk_rows, shape[1])
            # Held open until close: a dataset handle dropped after each write flushed its chunks from a destructor,
            # where a full disk could only print "Exception ignored" and write on (then HDF5 crashed).
            self.ds[d.name] = self.f.create_dataset(d.name, shape=shape, maxshape=maxshape, dtype=d.dtype, chunks=chunks,
                                  compression="gzip", compression_opts=self.compression_level, shuffle=True)
        return self

    def write(self, batch: dict[str, np.ndarray]) -> None:
        n = len(batch["next_sentence_labels"])
        if n == 0:
            return
        try:
            for d in hdf5_schema.DATASETS:
                ds = self.ds[d.name]
                ds.resize(self.rows + n, axis=0)
                ds[self.rows:self.rows + n] = np.asarray(batch[d.name], dtype=d.dtype)
        except (OSError, RuntimeError) as e:
            raise _as_os_error(e, self.path) from None
        self.rows += n

    def __exit__(self, exc_type, exc, tb) -> bool:
        """Close, then rename the file into place, or remove it after an error. A write error of HDF5 (a full disk)
        is raised as an ``OSError`` with its errno and the output path; the temporary file is emptied before the
        close that follows, so HDF5's own flush cannot fail again (it printed a traceback per open object from
        destructors and then crashed the interpreter, exit 139)."""
        if self._atomic is None:  # never opened
            return False
        atomic, self._atomic = self._atomic, None
        error = exc
        if self.f is not None and error is None:
            try:
                self.f.flush()  # raises here, with every handle still open, rather than in a destructor
            except (OSError, RuntimeError) as e:
                error = _as_os_error(e, self.path)
        if error is not None and self.tmp is not None:
            with contextlib.suppress(OSError):
                os.truncate(self.tmp, 0)  # discarded anyway: frees its space for the flush that closing does
        if self.f is not None:
            f, self.f, self.ds = self.f, None, {}
            try:
                f.close()
            except (OSError, RuntimeError) as e:
                error = error or _as_os_error(e, self.path)
        if error is None:
            atomic.__exit__(None, None, None)  # renames the temporary file onto ``path``
            return False
        atomic.__exit__(type(error), error, error.__traceback__)  # removes it
        if error is not exc:
            raise error
        return False


_ERRNO = re.compile(r"errno = (\d+)")


def _as_os_error(e: BaseException, path: Path) -> BaseException:
    """HDF5's write errors (h5py raises them without an errno, the C errno is inside the message) as an OSError
    carrying that errno and the output path, which the CLI reports in one line (disk full, quota, permissions)."""
    m = _ERRNO.search(str(e))
    if m is None:
        return e
    code = int(m.group(1))
    return OSError(code, os.strerror(code) if code != errno.ENOSPC else "No space left on device", str(path))


def read_hdf5(path: Path) -> dict[str, np.ndarray]:
    """Load every dataset, the way NVIDIA's ``pretraining_dataset`` does."""
    with h5py.File(path, "r") as f:
        return {k: np.asarray(f[k][:]) for k in hdf5_schema.KEYS}
