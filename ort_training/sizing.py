"""Plan a pretraining run before the data exists: from a corpus size to shards, instances, disk and epochs.

Estimates, labelled as such, with a stated bound. data_prep writes the real counts into each data folder's
manifest.json (`instances`, `sequences`). How the numbers are made:

- HDF5 (NVIDIA's schema, `data_prep hdf5`): the instance count is not tokens / sequence length. BERT's planner
  (`data_prep.instances`) makes at least one instance per document and copy (`--dupe-factor`) however short the
  document, gives a random next segment half of the time and then puts the unused sentences of the chunk back, and
  shortens 10% of its targets (`short_seq_prob`). So the count here comes from running that planner itself on
  simulated documents of the given mean length (gamma-distributed, coefficient of variation DOC_CV) made of
  sentences of SENTENCE_TOKENS tokens (gamma, SENTENCE_CV). Every instance is stored padded to the full sequence
  length with its masked-position arrays (`instance_bytes`), so disk = instances x instance_bytes uncompressed; gzip
  writes less. Measured on the bundled PubMed sample (99 abstracts, 21,324 tokens, bert-base-uncased vocab,
  dupe factor 5): estimate / written = 1,496 / 1,405 instances at 128 and 904 / 881 at 512 (the model before this
  one, tokens / (length - 3), said 852 and 210: 1.6x and 4.2x under). The bound printed is the estimate x
  BOUND_MARGIN: it holds for corpora whose documents and sentences are about as varied as PubMed abstracts.
- packed (`data_prep packed`): documents tokenized once, packed greedily as `[CLS] doc [SEP] doc [SEP] ...` up to
  the sequence length, no copies and no padding: sequences from the real packer (`bundle.packed_schema`) on the same
  simulated documents; disk = 4 bytes per token (+ [CLS] per sequence and [SEP] per document) + 8 per offset.
  Measured on the same sample: 214 / 215 sequences at 128 and 56 / 52 at 512 (and HDF5 with --objective mlm,
  FULL-SENTENCES packing: 1,070 / 1,068 and 234 / 229).

`python -m ort_training.pretrain --recipe R --dry-run --corpus_tokens N` prints this for the recipe's phases.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Optional

import numpy as np

from bundle.hdf5_schema import DATASETS

DUPE_FACTOR = 5
"""data_prep hdf5's default --dupe-factor: each document is masked this many times (NVIDIA's value)."""
SHORT_SEQ_PROB = 0.1
"""data_prep hdf5's default --short-seq-prob (BERT's)."""
TOKENS_PER_SHARD = 25_000_000
"""About 100 MB of text per shard: a shard is data_prep's unit of parallel work and the trainer's unit of reading."""
TOKENS_PER_DOCUMENT = 250
"""Assumed mean document length when only --corpus_tokens is given: a PubMed abstract (215 WordPiece tokens in the
bundled sample). Shorter documents make more HDF5 instances per token: pass --corpus_documents / --tokens_per_document."""
SENTENCE_TOKENS = 32
"""Mean WordPiece tokens per sentence: 31.6 in the bundled PubMed sample (bert-base-uncased vocab; sd 19)."""
SENTENCE_CV = 0.6
DOC_CV = 0.5
"""Spread of sentence and document lengths (standard deviation / mean) in the simulation: PubMed's, about."""
BOUND_MARGIN = 1.2
"""The printed bound is the estimate x this: the estimate was within 0-4% (over) of what data_prep wrote on the
bundled sample; the margin covers corpora somewhat more varied than it."""
SIM_TOKENS = 200_000
"""Tokens simulated per estimate (a fraction of a second of the planner); documents longer than SIM_DOC_TOKENS are
simulated at that length and scaled (instances grow linearly in a document's length past a few sequences)."""
SIM_DOC_TOKENS = 20_000


def default_max_predictions(max_seq_length: int) -> int:
    """data_prep's default masked positions per instance: 20 at 128 and 80 at 512 (NVIDIA's), else 15% rounded up."""
    return {128: 20, 512: 80}.get(max_seq_length, math.ceil(max_seq_length * 0.15))


@dataclass
class CorpusSize:
    """How big the corpus is (flags of `pretrain --dry-run`); either tokens, or documents x tokens per document."""

    corpus_tokens: Optional[int] = None
    """Sizing estimate: WordPiece tokens in the training corpus (e.g. 3000000000 for 2 million notes of 1,500 tokens)."""
    corpus_documents: Optional[int] = None
    """Sizing estimate: documents in the corpus (with --tokens_per_document, instead of --corpus_tokens)."""
    tokens_per_document: Optional[int] = None
    """Sizing estimate: mean tokens per document (with --corpus_documents; with --corpus_tokens it refines the
    HDF5 estimate, default 250: short documents make more instances per token)."""

    def tokens(self) -> Optional[int]:
        """The corpus size in tokens, or None when not given; ValueError names a half-given or bad pair."""
        if self.corpus_tokens is not None:
            if self.corpus_tokens < 1:
                raise ValueError(f"--corpus_tokens must be >= 1, got {self.corpus_tokens}")
            if self.corpus_documents is not None:
                raise ValueError("give --corpus_tokens or --corpus_documents with --tokens_per_document, not both")
            if self.tokens_per_document is not None and self.tokens_per_document < 1:
                raise ValueError(f"--tokens_per_document must be >= 1, got {self.tokens_per_document}")
            return self.corpus_tokens
        if (self.corpus_documents is None) != (self.tokens_per_document is None):
            raise ValueError("give --corpus_documents and --tokens_per_document together (or --corpus_tokens)")
        if self.corpus_documents is None:
            return None
        if self.corpus_documents < 1 or self.tokens_per_document < 1:
            raise ValueError("--corpus_documents and --tokens_per_document must be >= 1")
        return self.corpus_documents * self.tokens_per_document

    def document_tokens(self) -> int:
        """Mean tokens per document the estimate assumes."""
        return self.tokens_per_document or TOKENS_PER_DOCUMENT


@dataclass(frozen=True)
class PhaseSize:
    phase: str
    max_seq_length: int
    instances: int
    """Training sequences data_prep makes from the corpus at this length (dupe factor included): the estimate."""
    sequences_trained: int
    """global batch x max_steps."""
    disk_bytes: int
    """Uncompressed size of the estimate (gzip makes the files smaller)."""
    fmt: str = "hdf5"
    """hdf5 (NVIDIA's schema, masked copies) or packed (data_prep packed, masked at load time)."""
    dupe_factor: int = DUPE_FACTOR
    tokens_per_document: int = TOKENS_PER_DOCUMENT

    @property
    def instances_bound(self) -> int:
        return math.ceil(self.instances * BOUND_MARGIN)

    @property
    def disk_bound(self) -> int:
        return math.ceil(self.disk_bytes * BOUND_MARGIN)

    @property
    def epochs(self) -> float:
        return self.sequences_trained / self.instances

    def describe(self) -> str:
        what = (f"HDF5: ~{self.instances:,} instances (dupe factor {self.dupe_factor}, padded to {self.max_seq_length})"
                if self.fmt == "hdf5" else f"packed: ~{self.instances:,} sequences (no copies, no padding)")
        return (f"{self.phase}: seq {self.max_seq_length}: {what}, at most {self.instances_bound:,} and "
                f"<= {self.disk_bound / 1e9:,.3g} GB uncompressed (estimate x {BOUND_MARGIN}, documents of "
                f"~{round(self.tokens_per_document):,} tokens); trains {self.sequences_trained:,} sequences = "
                f"~{self.epochs:,.3g} epochs of that data (>= {self.sequences_trained / self.instances_bound:,.3g})")


def instance_bytes(max_seq_length: int, max_predictions: int) -> int:
    """Bytes of one instance in data_prep's HDF5 schema (bundle/hdf5_schema.py), uncompressed."""
    width = {"L": max_seq_length, "P": max_predictions, None: 1}
    return sum(width[d.width] * d.dtype().itemsize for d in DATASETS)


def _simulated_documents(doc_tokens: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """(sentence lengths, sentences per document, documents): documents of mean `doc_tokens` tokens (gamma, DOC_CV)
    cut into sentences of mean SENTENCE_TOKENS (gamma, SENTENCE_CV), about SIM_TOKENS tokens in all. Seeded."""
    rng = np.random.default_rng(seed)
    n_docs = int(max(20, min(2000, SIM_TOKENS // doc_tokens)))
    docs = np.maximum(1, np.rint(rng.gamma(1 / DOC_CV**2, doc_tokens * DOC_CV**2, n_docs))).astype(np.int64)
    k = 1 / SENTENCE_CV**2
    sent_lens, doc_sents = [], []
    for total in docs.tolist():
        n = 0
        while total > 0:
            s = min(total, max(1, int(round(rng.gamma(k, SENTENCE_TOKENS / k)))))
            sent_lens.append(s)
            total -= s
            n += 1
        doc_sents.append(n)
    return np.asarray(sent_lens, dtype=np.int64), np.asarray(doc_sents, dtype=np.int64), n_docs


def hdf5_instances_per_document(doc_tokens: int, max_seq_length: int, objective: str = "nsp",
                                short_seq_prob: float = SHORT_SEQ_PROB) -> float:
    """Instances data_prep's planner makes per document per copy, for documents of mean `doc_tokens` tokens:
    BERT's segment pairs (objective nsp) or FULL-SENTENCES packing (mlm), the planner itself on simulated text."""
    from data_prep.instances import plan_full_sentences, plan_instances

    sim_tokens = min(doc_tokens, SIM_DOC_TOKENS)
    sent_lens, doc_sents, n_docs = _simulated_documents(sim_tokens)
    if objective == "mlm":
        starts, _ = plan_full_sentences(sent_lens, doc_sents, max_seq_length, short_seq_prob, 1, random.Random(0))
        count = len(starts)
    else:
        count = len(plan_instances(sent_lens, doc_sents, max_seq_length, short_seq_prob, 1, random.Random(0)).a_len)
    return count / n_docs * doc_tokens / sim_tokens


def packed_per_document(doc_tokens: int, max_seq_length: int) -> tuple[float, float]:
    """(sequences, stored tokens) per document of mean `doc_tokens` tokens, from data_prep packed's own packer."""
    from bundle.packed_schema import SequencePacker

    sim_tokens = min(doc_tokens, SIM_DOC_TOKENS)
    sent_lens, doc_sents, n_docs = _simulated_documents(sim_tokens)
    lengths = np.add.reduceat(sent_lens, np.concatenate([[0], np.cumsum(doc_sents)[:-1]]))
    packer = SequencePacker(max_seq_length, 1, 2)
    seqs = []
    for n in lengths.tolist():
        seqs += packer.add(np.zeros(n, dtype=np.int32))
    seqs += packer.flush()
    scale = doc_tokens / sim_tokens
    return len(seqs) / n_docs * scale, sum(map(len, seqs)) / n_docs * scale


def phase_size(phase: str, corpus_tokens: int, max_seq_length: int, max_predictions: int, global_batch: int, max_steps: int,
               dupe_factor: int = DUPE_FACTOR, tokens_per_document: int | None = None, objective: str = "nsp",
               fmt: str = "hdf5") -> PhaseSize:
    """The estimate for one phase and data format (see the module docstring)."""
    doc_tokens = tokens_per_document or TOKENS_PER_DOCUMENT
    documents = max(1, corpus_tokens / doc_tokens)
    if fmt == "packed":
        sequences, tokens = packed_per_document(doc_tokens, max_seq_length)
        count = max(1, math.ceil(sequences * documents))
        disk = math.ceil(4 * tokens * documents) + 8 * (count + 1)
        return PhaseSize(phase, max_seq_length, count, global_batch * max_steps, disk, "packed", 1, doc_tokens)
    per_doc = hdf5_instances_per_document(doc_tokens, max_seq_length, objective)
    instances = max(1, math.ceil(dupe_factor * per_doc * documents))
    return PhaseSize(phase, max_seq_length, instances, global_batch * max_steps,
                     instances * instance_bytes(max_seq_length, max_predictions), "hdf5", dupe_factor, doc_tokens)


def recommended_shards(corpus_tokens: int, ranks: int) -> int:
    """Training shards for data_prep shard --num-shards: one per ~25M tokens, at least one per GPU process (each rank
    then reads whole files), rounded up to a multiple of the processes so every rank gets as many."""
    shards = max(ranks, math.ceil(corpus_tokens / TOKENS_PER_SHARD))
    return math.ceil(shards / ranks) * ranks
