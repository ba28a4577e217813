"""Reader of packed token sequences (``bundle.packed_schema``), split across ranks, resumable, with the batch
made by the objective's collator (``ort_training.data.collate``: masked at load time for masked LM, padded for
next-token prediction). Same interface as ``ort_training.data.hdf5.PretrainingDataLoader`` (the NVIDIA-schema
reader, whose batches arrive made), so the trainer takes either.

Each sequence's random draws (the collator's masks) come from a numpy Generator that is a pure function of
(seed, epoch, file name, sample index in the file), so a resumed run sees bitwise the batches of an
uninterrupted one, on any number of ranks and whatever the prefetch thread's timing.
"""

from __future__ import annotations

import logging
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from bundle import packed_schema
from ort_training.data.hdf5 import DataError, DataState, Shard, ShardedReader

logger = logging.getLogger(__name__)

def is_packed_folder(files: list[Path]) -> bool:
    """True if ``files`` (from ``list_hdf5_files``) are packed token files, False if NVIDIA-schema; a mix is an
    error naming one of each. Reads one attribute per file."""
    try:
        kinds = {bool(packed_schema.is_packed(f)): f for f in files}
    except packed_schema.SchemaError as exc:
        raise DataError(str(exc)) from None
    if len(kinds) > 1:
        raise DataError(f"mixes packed token files ({kinds[True]}) and NVIDIA-schema files ({kinds[False]}); point "
                        f"--input_dir at one data_prep output folder")
    return next(iter(kinds)) if kinds else False


@dataclass(frozen=True)
class PackedShard:
    """One rank's sequences of one file, unmasked, with the file-global index of each."""

    path: Path
    tokens: np.ndarray
    offsets: np.ndarray
    sample_index: np.ndarray
    attrs: packed_schema.PackedAttrs
    sentence_starts: list[np.ndarray] | None = None
    """Each sequence's sentence starts (format version 2), read only for a collator that `needs_sentences`."""

    def __len__(self) -> int:
        return len(self.offsets) - 1


def _read(path: Path, read, *args):
    """``read(path, *args)`` with every failure as a DataError naming the file."""
    try:
        return read(path, *args)
    except packed_schema.SchemaError as exc:
        raise DataError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 -- h5py raises OSError/KeyError flavours for truncated or non-HDF5 files
        raise DataError(f"{path}: cannot read packed file ({exc}); it is corrupt or not HDF5 — regenerate it with "
                        f"`python -m data_prep packed`") from exc


def _checked_attrs(path: Path, vocab_size: int | None) -> packed_schema.PackedAttrs:
    attrs = _read(path, packed_schema.read_attrs)
    if vocab_size is not None and attrs.vocab_size > vocab_size:
        raise DataError(f"{path}: made with a tokenizer of {attrs.vocab_size} ids, more than the model's vocabulary "
                        f"of {vocab_size}; pass the model config made for this tokenizer, or rebuild the data")
    return attrs


def load_packed_shard(shard: Shard, vocab_size: int | None = None, sentences: bool = False) -> PackedShard:
    """Read and validate one file (this rank's stride ``shard.start::shard.step``), with its sentence starts when
    `sentences` (None where the file has none)."""
    attrs = _checked_attrs(shard.path, vocab_size)
    tokens, offsets = _read(shard.path, packed_schema.read_sequences, shard.start, shard.step)
    starts = _read(shard.path, packed_schema.read_sentence_starts, shard.start, shard.step) if sentences else None
    n = len(offsets) - 1
    return PackedShard(shard.path, tokens, offsets, shard.start + shard.step * np.arange(n, dtype=np.int64), attrs, starts)


def sample_rng(seed: int, epoch: int, path: Path, sample_index: int) -> np.random.Generator:
    """The masking draw of one sequence: keyed by the file's name (not its place in a rank's order), so the
    same sample gets the same mask on any number of ranks."""
    return np.random.default_rng([seed, epoch, zlib.crc32(Path(path).name.encode()), int(sample_index)])


class PackedDataLoader(ShardedReader):
    """Infinite iterator of micro-batches for one rank, over packed token files, made by `collator` (epochs roll
    over; the trainer stops at max_steps). Incomplete trailing batches of a file are dropped, as the NVIDIA reader
    does."""

    def __init__(self, files: list[Path], batch_size: int, seed: int, collator, rank: int = 0, world_size: int = 1,
                 max_seq_length: int | None = None, prefetch: bool = True, vocab_size: int | None = None):
        if not files:
            raise DataError("no input files")
        self.files, self.batch_size, self.seed = list(files), batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.vocab_size = vocab_size
        self.attrs = _checked_attrs(self.files[0], vocab_size)
        self.max_seq_length = max_seq_length or self.attrs.max_seq_length
        if self.max_seq_length < self.attrs.max_seq_length:
            raise DataError(f"{self.files[0]}: holds sequences of up to {self.attrs.max_seq_length} tokens; "
                            f"max_seq_length {self.max_seq_length} would cut them. Pass at least that, or rebuild the data")
        self.collator = collator
        self._sentences = bool(getattr(collator, "needs_sentences", False))
        self.collate = collator.bind(self.attrs, self.max_seq_length)
        self.state = DataState()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="packed-prefetch") if prefetch else None
        self._pending: dict[Shard, Future] = {}

    def _get(self, shard: Shard) -> PackedShard:
        fut = self._pending.pop(shard, None)
        data = fut.result() if fut is not None else load_packed_shard(shard, self.vocab_size, self._sentences)
        if data.attrs != self.attrs:
            raise DataError(f"{shard.path}: made with another tokenizer or length than {self.files[0]} ({data.attrs} vs "
                            f"{self.attrs}); point --input_dir at one data_prep output folder")
        return data

    def _prefetch(self, shard: Shard) -> None:
        if self._pool is not None and shard not in self._pending:
            self._pending[shard] = self._pool.submit(load_packed_shard, shard, self.vocab_size, self._sentences)

    def make_batch(self, data: PackedShard, rows: np.ndarray, epoch: int) -> dict[str, torch.Tensor]:
        """The collator's batch of the sequences ``rows`` of ``data``: a pure function of its arguments and the seed."""
        seqs = [data.tokens[data.offsets[i]:data.offsets[i + 1]] for i in rows]
        rngs = [sample_rng(self.seed, epoch, data.path, data.sample_index[i]) for i in rows] if self.collator.needs_rng else None
        if self._sentences:  # sentence-level objectives (DEPTH) also get each sequence's sentence starts (None: the file has none)
            return self.collate(seqs, rngs, sentences=None if data.sentence_starts is None else [data.sentence_starts[i] for i in rows],
                                where=data.path)
        return self.collate(seqs, rngs)

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
            n = len(data)
            order = np.random.default_rng([self.seed, self.state.epoch, self.state.file_index, self.rank]).permutation(n)
            n_batches = n // self.batch_size
            if n_batches == 0:
                logger.warning("%s: %d sequences < micro-batch %d on rank %d; skipped", shard.path, n, self.batch_size, self.rank)
            empty_epochs = empty_epochs + 1 if n_batches == 0 else 0
            if empty_epochs > len(shards):
                raise DataError(f"{self.files[0].parent}: no file holds a full micro-batch of {self.batch_size} sequences for "
                                f"rank {self.rank}")
            while self.state.batch_index < n_batches:
                b = self.state.batch_index
                rows = order[b * self.batch_size:(b + 1) * self.batch_size]
                epoch = self.state.epoch
                self.state.batch_index += 1  # advanced before yielding: a checkpoint taken now resumes after this batch
                yield self.make_batch(data, rows, epoch)
            self.state = DataState(self.state.epoch, self.state.file_index + 1, 0)


def held_out_packed_batches(files: list[Path], batch_size: int, max_sequences: int | None, seed: int, collator,
                            vocab_size: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Evaluation batches of packed held-out files: each sequence at most once (no cycling), in file order,
    collated as the training loader collates epoch 0 of `seed` (the same masks at every evaluation)."""
    loader = PackedDataLoader(files, batch_size, seed, collator, prefetch=False, vocab_size=vocab_size)
    left = max_sequences if max_sequences is not None else float("inf")
    for path in files:
        data = loader._get(Shard(path))
        for start in range(0, len(data), batch_size):
            if left <= 0:
                return
            rows = np.arange(start, min(start + batch_size, len(data), start + int(min(left, batch_size))))
            left -= len(rows)
            yield loader.make_batch(data, rows, epoch=0)
