"""Plan a pretraining run before the data exists: from a corpus size to shards, instances, disk and epochs.

Estimates, not measurements: data_prep writes the real instance counts into each data folder's manifest.json
(`instances`), and the HDF5 files are gzip-compressed (the disk figure is the uncompressed upper bound).
`python -m ort_training.pretrain --recipe R --dry-run --corpus_tokens N` prints this for the recipe's phases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from bundle.hdf5_schema import DATASETS

DUPE_FACTOR = 5
"""data_prep hdf5's default --dupe-factor: each document is masked this many times (NVIDIA's value)."""
SPECIAL_TOKENS = 3
"""[CLS] and two [SEP] per BERT instance."""
TOKENS_PER_SHARD = 25_000_000
"""About 100 MB of text per shard: a shard is data_prep's unit of parallel work and the trainer's unit of reading."""


@dataclass
class CorpusSize:
    """How big the corpus is (flags of `pretrain --dry-run`); either tokens, or documents x tokens per document."""

    corpus_tokens: Optional[int] = None
    """Sizing estimate: WordPiece tokens in the training corpus (e.g. 3000000000 for 2 million notes of 1,500 tokens)."""
    corpus_documents: Optional[int] = None
    """Sizing estimate: documents in the corpus (with --tokens_per_document, instead of --corpus_tokens)."""
    tokens_per_document: Optional[int] = None
    """Sizing estimate: mean tokens per document (with --corpus_documents)."""

    def tokens(self) -> Optional[int]:
        """The corpus size in tokens, or None when not given; ValueError names a half-given or bad pair."""
        if self.corpus_tokens is not None:
            if self.corpus_tokens < 1:
                raise ValueError(f"--corpus_tokens must be >= 1, got {self.corpus_tokens}")
            return self.corpus_tokens
        if (self.corpus_documents is None) != (self.tokens_per_document is None):
            raise ValueError("give --corpus_documents and --tokens_per_document together (or --corpus_tokens)")
        if self.corpus_documents is None:
            return None
        if self.corpus_documents < 1 or self.tokens_per_document < 1:
            raise ValueError("--corpus_documents and --tokens_per_document must be >= 1")
        return self.corpus_documents * self.tokens_per_document


@dataclass(frozen=True)
class PhaseSize:
    phase: str
    max_seq_length: int
    instances: int
    """Training sequences data_prep makes from the corpus at this length (dupe factor included)."""
    sequences_trained: int
    """global batch x max_steps."""
    disk_bytes: int
    """Uncompressed HDF5 size (gzip makes the files smaller)."""

    @property
    def epochs(self) -> float:
        return self.sequences_trained / self.instances

    def describe(self) -> str:
        return (f"{self.phase}: seq {self.max_seq_length}: ~{self.instances:,} instances (dupe factor {DUPE_FACTOR}), "
                f"HDF5 <= {self.disk_bytes / 1e9:,.1f} GB uncompressed; trains {self.sequences_trained:,} sequences "
                f"= {self.epochs:,.3g} epochs of that data")


def instance_bytes(max_seq_length: int, max_predictions: int) -> int:
    """Bytes of one instance in data_prep's HDF5 schema (bundle/hdf5_schema.py), uncompressed."""
    width = {"L": max_seq_length, "P": max_predictions, None: 1}
    return sum(width[d.width] * d.dtype().itemsize for d in DATASETS)


def phase_size(phase: str, corpus_tokens: int, max_seq_length: int, max_predictions: int, global_batch: int, max_steps: int,
               dupe_factor: int = DUPE_FACTOR) -> PhaseSize:
    instances = max(1, math.ceil(dupe_factor * corpus_tokens / (max_seq_length - SPECIAL_TOKENS)))
    return PhaseSize(phase, max_seq_length, instances, global_batch * max_steps,
                     instances * instance_bytes(max_seq_length, max_predictions))


def recommended_shards(corpus_tokens: int, ranks: int) -> int:
    """Training shards for data_prep shard --num-shards: one per ~25M tokens, at least one per GPU process (each rank
    then reads whole files), rounded up to a multiple of the processes so every rank gets as many."""
    shards = max(ranks, math.ceil(corpus_tokens / TOKENS_PER_SHARD))
    return math.ceil(shards / ranks) * ranks
