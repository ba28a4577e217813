"""HDF5 reader for NVIDIA's BERT pretraining schema, split across ranks, resumable.

Each file holds `input_ids`, `input_mask`, `segment_ids` [N, seq], `masked_lm_positions`,
`masked_lm_ids` [N, max_pred] (zero-padded; position 0 is [CLS] and is never masked) and
`next_sentence_labels` [N]. A file is small enough to load whole (NVIDIA does the same), so the
reader loads one file into memory while the next one is read in a background thread.

The order of files and of samples inside a file is a pure function of (seed, epoch, rank), so the
resume state is three integers: epoch, file index and micro-batch index.
"""

from __future__ import annotations

import logging
import random
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
import torch

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
SEQ_KEYS = ("input_ids", "input_mask", "segment_ids")
PRED_KEYS = ("masked_lm_positions", "masked_lm_ids")
KEYS = SEQ_KEYS + PRED_KEYS + ("next_sentence_labels",)


class DataError(ValueError):
    """A data file is missing, unreadable or does not follow the schema."""


def list_hdf5_files(input_dir: str | Path, split: str = "training", require_match: bool = False) -> list[Path]:
    """Sorted `*.hdf5` under `input_dir` whose name contains `split`; if none do, all `*.hdf5`, unless
    `require_match` (held-out data: falling back would silently evaluate on training files)."""
    root = Path(input_dir)
    if not root.is_dir():
        raise DataError(f"{root}: input directory does not exist; pass the folder written by data_prep")
    files = sorted(root.rglob("*.hdf5"))
    matching = [f for f in files if split in f.name]
    if require_match and files and not matching:
        raise DataError(f"{root}: no *.hdf5 file has '{split}' in its name ({len(files)} other *.hdf5 files found); "
                        f"pass a folder of held-out shards (data_prep names them *{split}*.hdf5)")
    files = matching or files
    if not files:
        raise DataError(f"{root}: no *.hdf5 files found; run data_prep first or point --input_dir at its output")
    return files


@dataclass(frozen=True)
class Shard:
    """Samples `start::step` of one file, as read by one rank."""

    path: Path
    start: int = 0
    step: int = 1


def rank_shards(files: list[Path], epoch: int, seed: int, rank: int, world_size: int) -> list[Shard]:
    """This rank's shards for an epoch: files shuffled by (seed, epoch), then dealt out round-robin.

    With fewer files than ranks every rank reads every file but a disjoint stride of its samples,
    so ranks never see the same sample in an epoch either way.
    """
    order = list(files)
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    if len(order) >= world_size:
        return [Shard(p) for p in order[rank::world_size]]
    return [Shard(p, rank, world_size) for p in order]


def load_shard(shard: Shard) -> dict[str, torch.Tensor]:
    """Read and validate one file; returns int64 tensors incl. `masked_lm_labels` (ignore index padded)."""
    path = shard.path
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in KEYS if k not in f]
            if missing:
                raise DataError(f"{path}: missing datasets {missing}; expected NVIDIA's schema {list(KEYS)}")
            arrays = {k: np.asarray(f[k][shard.start :: shard.step]) for k in KEYS}
    except DataError:
        raise
    except Exception as exc:  # h5py raises OSError/KeyError flavours for truncated or non-HDF5 files
        raise DataError(f"{path}: cannot read HDF5 file ({exc}); it is corrupt or not HDF5 — regenerate it with data_prep") from exc
    n, seq = arrays["input_ids"].shape if arrays["input_ids"].ndim == 2 else (None, None)
    if n is None:
        raise DataError(f"{path}: input_ids must be 2-D [samples, seq_len], got shape {arrays['input_ids'].shape}")
    for k in SEQ_KEYS:
        if arrays[k].shape != (n, seq):
            raise DataError(f"{path}: {k} has shape {arrays[k].shape}, expected {(n, seq)}")
    if arrays["masked_lm_positions"].ndim != 2 or arrays["masked_lm_ids"].shape != arrays["masked_lm_positions"].shape:
        raise DataError(f"{path}: masked_lm_positions/masked_lm_ids must be equal 2-D shapes")
    if arrays["next_sentence_labels"].reshape(-1).shape[0] != n or arrays["masked_lm_positions"].shape[0] != n:
        raise DataError(f"{path}: datasets disagree on the number of samples ({n})")
    for k in KEYS:
        if not np.issubdtype(arrays[k].dtype, np.integer):
            raise DataError(f"{path}: {k} has dtype {arrays[k].dtype}, expected integers")
    if arrays["masked_lm_positions"].size and arrays["masked_lm_positions"].max() >= seq:
        raise DataError(f"{path}: masked_lm_positions point past seq_len {seq}")
    out = {k: torch.from_numpy(arrays[k].astype(np.int64)) for k in KEYS}
    out["next_sentence_labels"] = out["next_sentence_labels"].reshape(-1)
    # Padding slots have position 0 ([CLS] is never masked): turn them into ignored labels.
    out["masked_lm_labels"] = torch.where(out["masked_lm_positions"] > 0, out["masked_lm_ids"], IGNORE_INDEX)
    del out["masked_lm_ids"]
    return out


@dataclass
class DataState:
    """Where the reader is: enough to resume at the exact next micro-batch."""

    epoch: int = 0
    file_index: int = 0
    batch_index: int = 0


class PretrainingDataLoader:
    """Infinite iterator of micro-batches for one rank (epochs roll over; the trainer stops at max_steps).

    Incomplete trailing batches of a file are dropped so every batch has the same shape (ORT and
    torch.compile then never re-export) and all ranks take the same number of steps.
    """

    def __init__(self, files: list[Path], batch_size: int, seed: int, rank: int = 0, world_size: int = 1, prefetch: bool = True):
        if not files:
            raise DataError("no input files")
        self.files, self.batch_size, self.seed = list(files), batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.state = DataState()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hdf5-prefetch") if prefetch else None
        self._pending: dict[Shard, Future] = {}

    def state_dict(self) -> dict:
        return asdict(self.state)

    def load_state_dict(self, state: dict) -> None:
        self.state = DataState(**state)

    def _shards(self, epoch: int) -> list[Shard]:
        return rank_shards(self.files, epoch, self.seed, self.rank, self.world_size)

    def _next_shard(self, epoch: int, file_index: int) -> Shard:
        shards = self._shards(epoch)
        if file_index + 1 < len(shards):
            return shards[file_index + 1]
        return self._shards(epoch + 1)[0]

    def _get(self, shard: Shard) -> dict[str, torch.Tensor]:
        fut = self._pending.pop(shard, None)
        return fut.result() if fut is not None else load_shard(shard)

    def _prefetch(self, shard: Shard) -> None:
        if self._pool is not None and shard not in self._pending:
            self._pending[shard] = self._pool.submit(load_shard, shard)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        empty_epochs = 0
        while True:
            shards = self._shards(self.state.epoch)
            if self.state.file_index >= len(shards):
                self.state = DataState(self.state.epoch + 1, 0, 0)
                continue
            shard = shards[self.state.file_index]
            data = self._get(shard)
            self._prefetch(self._next_shard(self.state.epoch, self.state.file_index))
            n = data["input_ids"].shape[0]
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.state.epoch * 10_007 + self.state.file_index * 101 + self.rank) % 2**63)
            perm = torch.randperm(n, generator=g)
            n_batches = n // self.batch_size
            if n_batches == 0:
                logger.warning("%s: %d samples < micro-batch %d on rank %d; skipped", shard.path, n, self.batch_size, self.rank)
            empty_epochs = empty_epochs + 1 if n_batches == 0 else 0
            if empty_epochs > len(shards):
                raise DataError(f"{self.files[0].parent}: no file holds a full micro-batch of {self.batch_size} samples for rank {self.rank}")
            while self.state.batch_index < n_batches:
                idx = perm[self.state.batch_index * self.batch_size : (self.state.batch_index + 1) * self.batch_size]
                self.state.batch_index += 1  # advanced before yielding: a checkpoint taken now resumes after this batch
                yield {k: v[idx] for k, v in data.items()}
            self.state = DataState(self.state.epoch, self.state.file_index + 1, 0)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
