"""Typed configuration, one dataclass per stage (STYLE.md: a dataclass per entry point).

The CLI (``data_prep.cli``) builds these from flags; library users build them directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

Corpus = Literal["pubmed", "pmc", "wikipedia", "text", "jsonl", "csv", "parquet"]
Splitter = Literal["punkt", "punkt-trained", "blingfire"]


@dataclass
class DownloadConfig:
    dataset: Literal["pubmed-baseline", "pubmed-updates", "pubmed", "pmc-oa", "wikipedia"] = "pubmed-baseline"
    """Which remote dataset to fetch."""
    out_dir: Path = Path("download")
    """Where downloaded files land (one sub-folder per dataset)."""
    base_url: Optional[str] = None
    """A mirror: the parent folder (e.g. ``.../pubmed`` with ``baseline/`` inside) or the files' folder."""
    max_files: Optional[int] = None
    """Fetch only the first N files of the listing (demos, smoke tests)."""
    workers: int = 4
    """Parallel connections."""
    retries: int = 3
    """Attempts per file; each attempt resumes from the bytes already on disk."""
    timeout_s: float = 60.0
    """Socket timeout per request."""


@dataclass
class FormatConfig:
    corpus: Corpus = "pubmed"
    """Input kind; decides the reader in ``data_prep.corpora``."""
    inputs: list[Path] = field(default_factory=list)
    """Input files or folders (folders are searched for the corpus's file suffixes)."""
    out_dir: Path = Path("text")
    """One ``<input stem>.txt`` per input file: one document per line."""
    text_column: str = "text"
    """Column / JSON key holding the text for csv, parquet and jsonl corpora."""
    abstract_labels: Literal["drop", "keep"] = "drop"
    """Structured abstracts: drop section labels (BACKGROUND, METHODS) or keep them as 'Methods: ...'."""
    include_title: bool = True
    """Prepend the article title to the abstract."""
    min_chars: int = 20
    """Documents shorter than this (after cleaning) are skipped as 'too_short'."""
    max_documents: Optional[int] = None
    """Keep at most this many documents overall (first in input order, after updates and deletions);
    for demos and tests. PubMed / PMC inputs are still parsed in full, as a later record may replace one."""
    processes: int = 1
    """Worker processes, one input file each."""
    skip_bad: bool = False
    """Log and list unreadable inputs instead of stopping at the first."""


@dataclass
class ShardConfig:
    text_dir: Path = Path("text")
    """Output of the format stage (``*.txt``, one document per line)."""
    out_dir: Path = Path("shards")
    """Receives ``<dataset>_training_<i>.txt`` and ``<dataset>_test_<i>.txt``."""
    dataset_name: str = "pubmed"
    """Used in shard and HDF5 file names."""
    num_shards: int = 4
    """Training shards, balanced by sentence count."""
    num_test_shards: int = 1
    """Test shards."""
    test_fraction: float = 0.1
    """Fraction of documents (not sentences) held out for the test shards."""
    splitter: Splitter = "punkt"
    """Sentence splitter: NLTK Punkt with shipped English + biomedical abbreviations, Punkt additionally
    trained on this corpus, or blingfire (fastest)."""
    min_sentences: int = 1
    """Documents with fewer sentences are dropped (BERT needs >= 2 for a pair, but 1 still feeds random-next)."""
    seed: int = 12345
    """Seed for the train/test split."""
    processes: int = 1
    """Worker processes for sentence splitting."""


@dataclass
class VocabConfig:
    shard_dir: Path = Path("shards")
    """Training shards to learn the vocabulary from (``*training*.txt``)."""
    out_dir: Path = Path("vocab")
    """Receives ``vocab.txt`` and ``tokenizer.json``."""
    vocab_file: Optional[Path] = None
    """Use this existing vocab.txt instead of training one."""
    vocab_size: int = 30522
    """Target size of the trained WordPiece vocabulary."""
    lower_case: bool = True
    """Uncased (lower-case and strip accents) or cased."""
    min_frequency: int = 2
    """Pieces seen fewer times are not added."""


@dataclass
class PhaseConfig:
    max_seq_length: int = 128
    """Tokens per instance including [CLS] and two [SEP]."""
    max_predictions_per_seq: int = 20
    """Masked positions stored per instance (the padded width of masked_lm_*)."""


@dataclass
class Hdf5Config:
    shard_dir: Path = Path("shards")
    """Sharded text from the shard stage."""
    vocab_file: Path = Path("vocab/vocab.txt")
    """WordPiece vocabulary (must contain [PAD] [UNK] [CLS] [SEP] [MASK])."""
    out_root: Path = Path(".")
    """Parent of the NVIDIA-named ``hdf5_lower_case_...`` folders."""
    dataset_name: str = "pubmed"
    """Sub-folder and file-name prefix, as in NVIDIA's layout."""
    phases: list[PhaseConfig] = field(default_factory=lambda: [PhaseConfig(128, 20), PhaseConfig(512, 80)])
    """Every phase is built from one tokenization of the shards."""
    lower_case: bool = True
    """Must match the vocabulary."""
    masked_lm_prob: float = 0.15
    """Fraction of tokens masked."""
    dupe_factor: int = 5
    """Passes over each document with different masks and segment cuts."""
    short_seq_prob: float = 0.1
    """Probability of a shorter target length (BERT's trick against train/test length mismatch)."""
    whole_word_mask: bool = False
    """Mask all word pieces of a word together."""
    random_seed: int = 12345
    """Base seed; each shard and phase derives its own stream from it."""
    chunk_documents: int = 2000
    """Documents held in memory at once; random next sentences come from the same chunk."""
    processes: int = 1
    """Worker processes, one (shard, all phases) task each."""
    skip_bad: bool = False
    """Log and list unreadable shards instead of stopping."""
