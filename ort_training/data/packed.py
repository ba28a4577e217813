"""Reader of packed token sequences (``bundle.packed_schema``), masked at load time, split across ranks,
resumable: the loader for ModernBERT-style (30%) and RoBERTa/BERT-style (15%) masked-LM training.

Same interface and batch format as ``ort_training.data.hdf5.PretrainingDataLoader`` (the NVIDIA-schema
reader), so the trainer, objectives and metrics take either: ``input_ids``, ``input_mask``,
``segment_ids`` (0), ``masked_lm_positions`` [B, P] (ascending, unused slots 0), ``masked_lm_labels``
[B, P] (``IGNORE_INDEX`` in unused slots) and ``next_sentence_labels`` (0), all int64, padded to
``max_seq_length`` so shapes are static (ORT and torch.compile never re-export).

Masking (BERT's rule, drawn anew whenever a sequence is read): ``num = round(mask_rate * n)`` of the
sequence's n non-special tokens (at least 1), 80% -> [MASK], 10% -> a random non-special id, 10% kept.
The draw is a pure function of (seed, epoch, file name, sample index in the file), from its own numpy
Generator, so a resumed run sees bitwise the batches of an uninterrupted one, on any number of ranks
and whatever the prefetch thread's timing.
"""

from __future__ import annotations

import logging
import math
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from bundle import packed_schema
from ort_training.data.hdf5 import DataError, DataState, IGNORE_INDEX, Shard, ShardedReader

logger = logging.getLogger(__name__)

MASK_FRACTION, RANDOM_FRACTION = 0.8, 0.1
"""Of the chosen tokens: 80% become [MASK], 10% a random token, the remaining 10% stay (BERT's rule)."""


def max_predictions(max_seq_length: int, mask_rate: float) -> int:
    """P, the width of ``masked_lm_positions`` / ``masked_lm_labels``: ceil(mask_rate * max_seq_length).
    Rounded to 9 decimals first, so 0.15 * 100 (15.000000000000002 in floating point) gives 15, not 16."""
    return max(1, math.ceil(round(mask_rate * max_seq_length, 9)))


def is_packed_folder(files: list[Path]) -> bool:
    """True if ``files`` (from ``list_hdf5_files``) are packed token files, False if NVIDIA-schema; a mix is an
    error naming one of each. Reads one attribute per file."""
    kinds = {bool(packed_schema.is_packed(f)): f for f in files}
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


def load_packed_shard(shard: Shard, vocab_size: int | None = None) -> PackedShard:
    """Read and validate one file (this rank's stride ``shard.start::shard.step``)."""
    attrs = _checked_attrs(shard.path, vocab_size)
    tokens, offsets = _read(shard.path, packed_schema.read_sequences, shard.start, shard.step)
    n = len(offsets) - 1
    return PackedShard(shard.path, tokens, offsets, shard.start + shard.step * np.arange(n, dtype=np.int64), attrs)


class Masker:
    """BERT's 80/10/10 masking of one sequence at a time, from a Generator the caller seeds."""

    def __init__(self, attrs: packed_schema.PackedAttrs, mask_rate: float, max_preds: int):
        self.attrs, self.mask_rate, self.max_preds = attrs, mask_rate, max_preds
        is_special = np.zeros(attrs.vocab_size, dtype=bool)
        is_special[list(attrs.special_ids)] = True
        self.is_special = is_special
        self.replace_ids = np.flatnonzero(~is_special).astype(np.int64)
        if self.replace_ids.size == 0:
            raise DataError("the tokenizer's every id is special: nothing to draw random replacements from")

    def __call__(self, seq: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(masked ids, ascending positions, original ids at those positions)."""
        candidates = np.flatnonzero(~self.is_special[seq])
        if candidates.size == 0:
            return seq.astype(np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        k = min(self.max_preds, max(1, int(round(self.mask_rate * candidates.size))))
        positions = np.sort(rng.choice(candidates, size=k, replace=False))
        u = rng.random(k)
        random_ids = self.replace_ids[rng.integers(0, self.replace_ids.size, size=k)]
        out = seq.astype(np.int64)
        labels = out[positions].copy()
        out[positions[u < MASK_FRACTION]] = self.attrs.mask_id
        rand = (u >= MASK_FRACTION) & (u < MASK_FRACTION + RANDOM_FRACTION)
        out[positions[rand]] = random_ids[rand]
        return out, positions, labels


def sample_rng(seed: int, epoch: int, path: Path, sample_index: int) -> np.random.Generator:
    """The masking draw of one sequence: keyed by the file's name (not its place in a rank's order), so the
    same sample gets the same mask on any number of ranks."""
    return np.random.default_rng([seed, epoch, zlib.crc32(Path(path).name.encode()), int(sample_index)])


class PackedDataLoader(ShardedReader):
    """Infinite iterator of masked micro-batches for one rank, over packed token files (epochs roll over; the
    trainer stops at max_steps). Incomplete trailing batches of a file are dropped, as the NVIDIA reader does."""

    def __init__(self, files: list[Path], batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 max_seq_length: int | None = None, mask_rate: float = 0.15, prefetch: bool = True,
                 vocab_size: int | None = None):
        if not files:
            raise DataError("no input files")
        if not 0 < mask_rate < 1:
            raise DataError(f"mask_rate {mask_rate}: must be in (0, 1)")
        self.files, self.batch_size, self.seed = list(files), batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.mask_rate, self.vocab_size = mask_rate, vocab_size
        self.attrs = _checked_attrs(self.files[0], vocab_size)
        self.max_seq_length = max_seq_length or self.attrs.max_seq_length
        if self.max_seq_length < self.attrs.max_seq_length:
            raise DataError(f"{self.files[0]}: holds sequences of up to {self.attrs.max_seq_length} tokens; "
                            f"max_seq_length {self.max_seq_length} would cut them. Pass at least that, or rebuild the data")
        self.max_preds = max_predictions(self.max_seq_length, mask_rate)
        self.masker = Masker(self.attrs, mask_rate, self.max_preds)
        self.state = DataState()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="packed-prefetch") if prefetch else None
        self._pending: dict[Shard, Future] = {}

    def _get(self, shard: Shard) -> PackedShard:
        fut = self._pending.pop(shard, None)
        data = fut.result() if fut is not None else load_packed_shard(shard, self.vocab_size)
        if data.attrs != self.attrs:
            raise DataError(f"{shard.path}: made with another tokenizer or length than {self.files[0]} ({data.attrs} vs "
                            f"{self.attrs}); point --input_dir at one data_prep output folder")
        return data

    def _prefetch(self, shard: Shard) -> None:
        if self._pool is not None and shard not in self._pending:
            self._pending[shard] = self._pool.submit(load_packed_shard, shard, self.vocab_size)

    def make_batch(self, data: PackedShard, rows: np.ndarray, epoch: int) -> dict[str, torch.Tensor]:
        """Mask and pad the sequences ``rows`` of ``data``: a pure function of its arguments and the seed."""
        B, L, P = len(rows), self.max_seq_length, self.max_preds
        input_ids = np.full((B, L), self.attrs.pad_id, dtype=np.int64)
        input_mask = np.zeros((B, L), dtype=np.int64)
        positions = np.zeros((B, P), dtype=np.int64)
        labels = np.full((B, P), IGNORE_INDEX, dtype=np.int64)
        for b, i in enumerate(rows):
            seq = data.tokens[data.offsets[i]:data.offsets[i + 1]]
            ids, pos, lab = self.masker(seq, sample_rng(self.seed, epoch, data.path, data.sample_index[i]))
            input_ids[b, :len(ids)] = ids
            input_mask[b, :len(ids)] = 1
            positions[b, :len(pos)] = pos
            labels[b, :len(lab)] = lab
        zeros_l = np.zeros((B, L), dtype=np.int64)
        return {"input_ids": torch.from_numpy(input_ids), "input_mask": torch.from_numpy(input_mask),
                "segment_ids": torch.from_numpy(zeros_l), "masked_lm_positions": torch.from_numpy(positions),
                "next_sentence_labels": torch.zeros(B, dtype=torch.int64), "masked_lm_labels": torch.from_numpy(labels)}

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


def held_out_packed_batches(files: list[Path], batch_size: int, max_sequences: int | None, seed: int, mask_rate: float,
                            vocab_size: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Evaluation batches of packed held-out files: each sequence at most once (no cycling), in file order,
    masked as the training loader masks epoch 0 of `seed` (the same masks at every evaluation)."""
    loader = PackedDataLoader(files, batch_size, seed, prefetch=False, mask_rate=mask_rate, vocab_size=vocab_size)
    left = max_sequences if max_sequences is not None else float("inf")
    for path in files:
        data = loader._get(Shard(path))
        for start in range(0, len(data), batch_size):
            if left <= 0:
                return
            rows = np.arange(start, min(start + batch_size, len(data), start + int(min(left, batch_size))))
            left -= len(rows)
            yield loader.make_batch(data, rows, epoch=0)
