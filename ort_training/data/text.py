"""Text-classification data for fine-tuning: CSV / TSV / parquet / jsonl files -> tokenized, resumable batches.

`read_table` reads one file's text and label columns; `LabelSet` fixes the classes from the training file
and refuses labels the training file lacks; `split_rows` is a seeded, stratified split of one file;
`encode_split` tokenizes with a Hugging Face fast tokenizer, truncating each text or cutting it into
overlapping windows (`long_text="window"`; every window carries its document's label, and predictions
are averaged per document by the caller); `TextClassificationLoader` yields micro-batches with the same
resume contract as `PretrainingDataLoader` (`state_dict` / `load_state_dict`: the exact next batch).

Every error names the file and, where it applies, the column (`TextDataError`, a ValueError).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np
import torch

from bundle.digest import file_sha256
from ort_training.data.hdf5 import DataError
from ort_training.errors import UsageError

logger = logging.getLogger(__name__)

LongText = Literal["truncate", "window"]
SUFFIXES = (".csv", ".tsv", ".parquet", ".pq", ".jsonl", ".ndjson", ".json")


class TextDataError(DataError):
    """A text-classification file is missing, unreadable, lacks a column or holds bad labels."""


# ----------------------------------------------------------------------------- reading
@dataclass
class Table:
    """The two columns of one file, as strings (labels too: "1" and 1 are the same class)."""

    path: Path
    texts: list[str]
    labels: list[str]
    text_column: str
    label_column: str
    groups: list[str] | None = None
    """A subgroup per row (fine-tuning's --group_column), carried through splits."""

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: Sequence[int], name: str) -> "Table":
        return Table(Path(f"{self.path} ({name})"), [self.texts[i] for i in index], [self.labels[i] for i in index],
                     self.text_column, self.label_column, None if self.groups is None else [self.groups[i] for i in index])


def _rows_csv(path: Path, delimiter: str) -> tuple[list[str], Iterator[dict]]:
    fh = open(path, newline="", encoding="utf-8-sig")
    reader = csv.DictReader(fh, delimiter=delimiter)
    columns = list(reader.fieldnames or [])

    def rows():
        with fh:
            yield from reader

    return columns, rows()


def iter_json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, record) of a JSON-lines file, one line in memory at a time; blank lines are skipped and a
    line that is not a JSON object is a TextDataError naming the file and line (every JSONL reader here)."""
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise TextDataError(f"{path}: line {number} is not a JSON record ({exc}); expected one JSON object per line") from None
            if not isinstance(record, dict):
                raise TextDataError(f"{path}: line {number}: expected a JSON object, found {type(record).__name__}")
            yield number, record


def is_json_array(path: Path) -> bool:
    """A .json file holding one JSON array of records (read whole) rather than JSON lines."""
    if path.suffix.lower() != ".json":
        return False
    with open(path, encoding="utf-8") as fh:
        return fh.read(4096).lstrip().startswith("[")


def _rows_jsonl(path: Path) -> tuple[list[str], list[dict]]:
    if is_json_array(path):
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise TextDataError(f"{path}: not valid JSON ({exc})") from None
        if any(not isinstance(r, dict) for r in rows):
            raise TextDataError(f"{path}: expected a JSON array of objects, found {type(rows[0]).__name__}")
    else:
        rows = [record for _, record in iter_json_lines(path)]
    columns: list[str] = []
    for r in rows:
        columns += [c for c in r if c not in columns]
    return columns, rows


def _columns_parquet(path: Path, text_column: str, label_column: str) -> tuple[list[str], list[dict]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 -- pyarrow raises several types for corrupt files
        raise TextDataError(f"{path}: cannot read parquet file ({exc})") from None
    columns = list(table.column_names)
    wanted = [c for c in (text_column, label_column) if c in columns]
    data = {c: table.column(c).to_pylist() for c in wanted}
    rows = [{c: data[c][i] for c in wanted} for i in range(table.num_rows)]
    return columns, rows


MISSING_LABELS = ("", "nan", "na", "n/a", "null", "none", "<na>", "#n/a")
"""Label cells that mean "no label" in every format: empty, or (case-insensitive) what pandas, R and spreadsheets
write for a missing value. A CSV holds only strings, so `NaN` there is the null of parquet and jsonl; the same
rule applies to string cells of every format, so a file converted from one format to another reads the same."""


def is_missing(value, markers: tuple[str, ...] = ("",)) -> bool:
    """None, a float NaN, or a string that is (stripped, case-insensitive) one of `markers`."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return isinstance(value, str) and value.strip().lower() in markers


def read_table(path: str | Path, text_column: str, label_column: str, label_flag: str = "--label_column") -> Table:
    """The text and label columns of a .csv / .tsv / .parquet / .jsonl (.json) file.

    A missing file or column, a missing label (null, NaN or a MISSING_LABELS cell, in any format), a missing or
    blank text, or an empty file is a TextDataError naming the file (and the column and row)."""
    path = Path(path)
    if not path.is_file():
        raise TextDataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".gz":
        raise TextDataError(f"{path}: compressed files are not read; decompress it first")
    try:
        if suffix in (".csv", ".tsv"):
            columns, rows = _rows_csv(path, "\t" if suffix == ".tsv" else ",")
        elif suffix in (".parquet", ".pq"):
            columns, rows = _columns_parquet(path, text_column, label_column)
        elif suffix in (".jsonl", ".ndjson", ".json"):
            columns, rows = _rows_jsonl(path)
        else:
            raise TextDataError(f"{path}: unknown file type {suffix!r}; use one of {', '.join(SUFFIXES)}")
        for col, flag in ((text_column, "--text_column"), (label_column, label_flag)):
            if col not in columns:
                raise TextDataError(f"{path}: no column {col!r} ({flag}); the file has columns {columns}")
        texts, labels = [], []
        for i, row in enumerate(rows, 1):
            text, label = row.get(text_column), row.get(label_column)
            where = f"row {i}" + (" (after the header)" if suffix in (".csv", ".tsv") else "")
            if is_missing(label, MISSING_LABELS):
                raise TextDataError(f"{path}: {where} has no value in column {label_column!r} ({label_flag}): {label!r} "
                                    "means a missing label in every format; label the row or remove it")
            if is_missing(text):
                raise TextDataError(f"{path}: {where} has no value in column {text_column!r} (--text_column); fill it or remove the row")
            texts.append(str(text))
            labels.append(_label_str(label))
    except UnicodeDecodeError as exc:
        raise TextDataError(f"{path}: not UTF-8 text ({exc})") from None
    except csv.Error as exc:
        raise TextDataError(f"{path}: malformed CSV ({exc})") from None
    if not texts:
        raise TextDataError(f"{path}: holds no rows")
    return Table(path, texts, labels, text_column, label_column)


def _label_str(value) -> str:
    """1, 1.0 and "1" are one class; a list (multi-label jsonl / parquet) its JSON; anything else its string."""
    if isinstance(value, (list, tuple)):
        return json.dumps([_label_str(v) for v in value], ensure_ascii=False)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def input_identity(path: str | Path, **settings) -> dict:
    """What a fine-tuning run trains on, for its checkpoints: the training file's sha256 and the settings that pick
    and cut its rows. {"digest", "describe"}, compared by the trainer on resume."""
    sha = file_sha256(path)
    chosen = json.dumps(settings, sort_keys=True, default=str)
    digest = hashlib.sha256(f"{sha}\0{chosen}".encode()).hexdigest()[:16]
    shown = ", ".join(f"{k} {v}" for k, v in sorted(settings.items()))
    return {"digest": digest, "describe": f"{path} (sha256 {sha[:12]}{'; ' + shown if shown else ''})"}


# ----------------------------------------------------------------------------- labels and splits
class LabelSet:
    """The classes, fixed by the training file: sorted (numerically when every label is an integer)."""

    def __init__(self, labels: Sequence[str]):
        self.labels = list(labels)
        self.index = {label: i for i, label in enumerate(self.labels)}

    @classmethod
    def from_table(cls, table: Table) -> "LabelSet":
        values = sorted(set(table.labels))
        if all(_is_int(v) for v in values):
            values = sorted(values, key=int)
        if len(values) < 2:
            raise TextDataError(f"{table.path}: column {table.label_column!r} (--label_column) holds one class only "
                                f"({values[0]!r} in all {len(table)} rows); a classifier needs at least two")
        return cls(values)

    def __len__(self) -> int:
        return len(self.labels)

    def encode(self, table: Table) -> np.ndarray:
        unknown = sorted(set(table.labels) - set(self.index))
        if unknown:
            counts = {u: table.labels.count(u) for u in unknown[:10]}
            raise TextDataError(f"{table.path}: column {table.label_column!r} (--label_column) has label value(s) the "
                                f"training data lacks: {counts} (value: rows); the model knows only {self.labels}. "
                                "Fix the labels or add examples of them to the training file")
        return np.asarray([self.index[v] for v in table.labels], dtype=np.int64)


def _is_int(v: str) -> bool:
    try:
        int(v, 10)
        return True
    except ValueError:
        return False


def split_rows(table: Table, fractions: dict[str, float], seed: int) -> tuple[Table, dict[str, Table]]:
    """Seeded split stratified by label: the rest of `table`, and a table per name with about that fraction
    of each class (at least one row of a class with >= 2 rows more than the splits take, so each split
    sees every class where the data allows)."""
    total = sum(fractions.values())
    if not 0 <= total < 1:
        raise TextDataError(f"{table.path}: split fractions {fractions} must add up to less than 1")
    rng = np.random.default_rng(seed)
    labels = np.asarray(table.labels)
    taken: dict[str, list[int]] = {name: [] for name in fractions}
    rest: list[int] = []
    for label in sorted(set(table.labels)):
        idx = np.flatnonzero(labels == label)
        idx = idx[rng.permutation(len(idx))]
        start = 0
        for name, frac in fractions.items():
            n = int(round(frac * len(idx)))
            if frac > 0 and n == 0 and len(idx) - start > 1:
                n = 1
            n = min(n, max(len(idx) - start - 1, 0))  # keep one for training
            taken[name] += idx[start:start + n].tolist()
            start += n
        rest += idx[start:].tolist()
    return (table.subset(sorted(rest), "train split"),
            {name: table.subset(sorted(ix), f"{name} split") for name, ix in taken.items()})


def random_split(table, fractions: dict[str, float], seed: int):
    """A seeded random split of a table's documents (a `Table`, a tagged table: anything with `len` and `subset`),
    for labels too many to stratify by (label sets, values, tag sequences): the rest of `table`, and a table per
    name with about that fraction of the documents (at least one)."""
    order = np.random.default_rng(seed).permutation(len(table))
    held, start = {}, 0
    for name, fraction in fractions.items():
        n = max(1, int(round(fraction * len(table))))
        held[name] = table.subset(sorted(order[start:start + n].tolist()), f"{name} split")
        start += n
    if start >= len(table):
        raise TextDataError(f"{table.path}: {len(table)} documents leave none for training after the {', '.join(fractions)} split; "
                            "give a larger file, smaller fractions, or --validation_file / --test_file")
    return table.subset(sorted(order[start:].tolist()), "train split"), held


# ----------------------------------------------------------------------------- tokenizing
@dataclass
class EncodedSplit:
    """Windows (one per document when truncating) and the document each came from."""

    name: str
    path: str
    input_ids: torch.Tensor  # [windows, seq] int64
    input_mask: torch.Tensor
    segment_ids: torch.Tensor
    labels: torch.Tensor  # [windows] the document's label
    doc_index: torch.Tensor  # [windows] -> document
    doc_labels: np.ndarray  # [documents]
    truncated: int = 0  # documents longer than one window (cut off, or split into windows)

    @property
    def num_docs(self) -> int:
        return len(self.doc_labels)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def batch(self, index) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[index], "segment_ids": self.segment_ids[index],
                "input_mask": self.input_mask[index], "labels": self.labels[index]}


def encode_split(name: str, table: Table, label_ids: np.ndarray, tokenizer, max_seq_length: int,
                 long_text: LongText = "truncate", stride: int = 64, pad_to: int | None = None) -> EncodedSplit:
    """Tokenize `table` ([CLS] text [SEP], padded to `pad_to` or `max_seq_length`).

    truncate: one window per text, cut at `max_seq_length` tokens. window: texts longer than that become
    several windows of `max_seq_length` tokens, consecutive windows sharing `stride` tokens (the HF
    tokenizer's `stride`), each with the document's label."""
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("a Hugging Face fast tokenizer is needed (BertTokenizerFast)")
    if long_text not in ("truncate", "window"):
        raise UsageError(f"--long_text must be truncate or window, got {long_text!r}")
    if long_text == "window" and not 0 <= stride < max_seq_length - 2:
        raise UsageError(f"--stride {stride} must be >= 0 and < --max_seq_length - 2 ({max_seq_length - 2}) with --long_text window")
    pad_to = pad_to or max_seq_length
    enc = tokenizer(table.texts, truncation=True, max_length=max_seq_length, padding="max_length",
                    return_overflowing_tokens=long_text == "window", stride=stride if long_text == "window" else 0,
                    return_token_type_ids=True, return_attention_mask=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)[:, :pad_to]
    mask = np.asarray(enc["attention_mask"], dtype=np.int64)[:, :pad_to]
    types = np.asarray(enc["token_type_ids"], dtype=np.int64)[:, :pad_to]
    if long_text == "window":
        doc_index = np.asarray(enc["overflow_to_sample_mapping"], dtype=np.int64)
        truncated = int((np.bincount(doc_index) > 1).sum())  # documents cut into several windows
    else:
        doc_index = np.arange(len(table), dtype=np.int64)
        truncated = int(sum(1 for m in enc["attention_mask"] if m[-1] == 1))  # filled the window: (probably) cut off
    return EncodedSplit(name, str(table.path), torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(types),
                        torch.from_numpy(label_ids[doc_index]), torch.from_numpy(doc_index), label_ids, truncated)


def longest_tokens(tokenizer, texts: Sequence[str], max_seq_length: int) -> int:
    """Longest tokenized text ([CLS]/[SEP] included), capped at `max_seq_length`."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_seq_length, add_special_tokens=True)
    return max((len(x) for x in enc["input_ids"]), default=2)


# ----------------------------------------------------------------------------- batches
class TextClassificationLoader:
    """Infinite iterator of training micro-batches for one rank (epochs roll over).

    The order in an epoch is a permutation seeded by (seed, epoch), dealt to ranks by stride; incomplete
    last batches are dropped so shapes stay fixed (ORT and torch.compile never re-export). The resume
    state is (epoch, batch index), like `PretrainingDataLoader`'s, plus the number of windows so that a
    checkpoint is not resumed on different data."""

    def __init__(self, split: EncodedSplit, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, identity: dict | None = None):
        self.split, self.batch_size, self.seed = split, batch_size, seed
        self.identity = identity  # what the trainer records in checkpoints and compares on resume (input_identity)
        self.rank, self.world_size = rank, world_size
        self.files = [Path(split.path)]
        self.epoch = self.batch_index = 0
        if self.batches_per_epoch == 0:
            raise TextDataError(f"{split.path}: {len(split)} training examples give no full micro-batch of {batch_size} "
                                f"per rank on {world_size} rank(s); lower --train_batch_size or add data")

    @property
    def batches_per_epoch(self) -> int:
        return (len(self.split) // self.world_size) // self.batch_size

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch_index": self.batch_index, "num_examples": len(self.split)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("num_examples", len(self.split)) != len(self.split):
            raise TextDataError(f"{self.split.path}: the checkpoint was taken on {state['num_examples']} training examples, "
                                f"this data has {len(self.split)}; resume with the same files, --max_seq_length, "
                                "--long_text and split settings, or start in a new --output_dir")
        self.epoch, self.batch_index = int(state["epoch"]), int(state["batch_index"])

    def _order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
        perm = torch.randperm(len(self.split), generator=g)
        per_rank = len(self.split) // self.world_size
        return perm[self.rank::self.world_size][:per_rank]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            order = self._order(self.epoch)
            while self.batch_index < self.batches_per_epoch:
                idx = order[self.batch_index * self.batch_size:(self.batch_index + 1) * self.batch_size]
                self.batch_index += 1  # advanced before yielding: a checkpoint taken now resumes after this batch
                yield self.split.batch(idx)
            self.epoch, self.batch_index = self.epoch + 1, 0

    def close(self) -> None:
        pass
