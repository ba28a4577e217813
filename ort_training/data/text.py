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


MAX_FIELD_CHARS = 16 << 20
"""The longest value read from any table (a CSV field or physical line, a parquet cell, a JSON-lines value), in
characters: 16 Mi, so a 10 MB note is read (and then cut before tokenizing, `cut_text`), while memory per row stays
bounded by the setting, not by the file. A longer value is refused naming the file and row."""
MAX_JSON_LINE_CHARS = 2 * MAX_FIELD_CHARS + (1 << 20)
"""A JSON line longer than this is refused unparsed (escaping can double a text; 1 MiB for the other fields)."""
PARQUET_BATCH_ROWS = 256
"""Rows per parquet record batch: with cells of at most MAX_FIELD_CHARS, the memory of one batch is bounded."""


def _decode_error(path: Path, exc: UnicodeDecodeError) -> TextDataError:
    return TextDataError(f"{path}: invalid UTF-8 near byte {exc.start} ({exc.reason}); re-encode it (e.g. iconv -f latin1 -t utf-8)")


def _lines(fh, limit: int, path: Path, counter: list[int]) -> Iterator[str]:
    """The lines of a text file, each at most `limit` characters (a longer one is refused after reading at most that
    much); counter[0] holds the physical line number."""
    while line := fh.readline(limit + 1):
        counter[0] += 1
        if len(line) > limit and not line.endswith("\n"):
            raise TextDataError(f"{path}: line {counter[0]}: longer than {limit:,} characters; a row must hold at most "
                                f"{MAX_FIELD_CHARS:,} characters per value (split that text)")
        yield line


def cell_value(value, path: Path, where: str, column: str, flag: str, allow_list: bool = False):
    """One rule for every format's cell: None / NaN stay None (missing); text as it is; bytes (a parquet binary
    column) decoded as UTF-8, never shown as b'...'; numbers written out as a CSV holds them (1.0 -> "1"); a bool
    as true / false; a list only where `allow_list` (multi-label), its items by the same rule; anything else
    (an object, a nested struct) refused naming the file, row and column. A value over MAX_FIELD_CHARS is refused."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TextDataError(f"{path}: {where}: column {column!r} ({flag}) holds bytes that are not UTF-8 text "
                                f"(near byte {exc.start}); store the text as a string column") from None
    if isinstance(value, str):
        if len(value) > MAX_FIELD_CHARS:
            raise TextDataError(f"{path}: {where}: column {column!r} ({flag}) holds {len(value):,} characters, over the "
                                f"{MAX_FIELD_CHARS:,} a value may hold; split that text")
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)) and allow_list:
        return [cell_value(v, path, where, column, flag) for v in value]
    raise TextDataError(f"{path}: {where}: column {column!r} ({flag}) holds a {type(value).__name__}, not "
                        f"{'text, a number or a list' if allow_list else 'text or a number'}; pick the column that holds it")


def iter_json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, record) of a JSON-lines file, one line in memory at a time (at most MAX_JSON_LINE_CHARS); blank
    lines are skipped and a line that is not a JSON object is a TextDataError naming the file and line (every JSONL
    reader here)."""
    counter = [0]
    with open(path, encoding="utf-8-sig", errors="strict") as fh:
        for line in _lines(fh, MAX_JSON_LINE_CHARS, path, counter):
            number = counter[0]
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
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        return fh.read(4096).lstrip().startswith("[")


def _check_columns(path: Path, columns: list, wanted: dict[str, str]) -> None:
    for col, flag in wanted.items():
        if col not in columns:
            raise TextDataError(f"{path}: no column {col!r} ({flag}); the file has columns {list(columns)}")


def iter_records(path: str | Path, wanted: dict[str, str], lists: Sequence[str] = ()) -> Iterator[tuple[str, dict]]:
    """The one table reader (fine-tuning's `read_table` and `ort_training.predict` both read through it):
    (where, {column: value}) per row of a .csv / .tsv / .parquet / .jsonl (.ndjson; .json: JSON lines, or one JSON
    array of objects) file, streamed. `wanted` maps each column to the flag that names it; values follow
    `cell_value` (None: missing; `lists`: columns where a list is allowed). The rules, the same for every caller:

    - encodings: UTF-8 (a leading byte-order mark is dropped); invalid UTF-8 is refused naming the byte;
    - headers: a CSV / TSV has a header row; a column named twice is refused (the csv module would keep the last);
      a missing wanted column is refused naming the flag and the file's columns;
    - quoting: the csv module's, strict: a quote never closed is refused naming the line where its record starts;
      a row with more fields than the header is refused (a row with fewer has missing values);
    - field sizes and memory per row: a value (CSV field, parquet cell, JSON value) over MAX_FIELD_CHARS, a physical
      line over that, a JSON line over MAX_JSON_LINE_CHARS is refused after reading at most that much; parquet is
      read PARQUET_BATCH_ROWS rows at a time;
    - value types: `cell_value`'s.

    `where` is "row N (after the header)" (CSV/TSV, N counting records), "row N" (parquet, a JSON array) or
    "row N (line L)" (JSON lines)."""
    path = Path(path)
    if not path.is_file():
        raise TextDataError(f"{path}: {'a folder, not a file' if path.is_dir() else 'no such file'}")
    suffix = path.suffix.lower()
    if suffix in (".gz", ".bz2", ".xz", ".zst", ".zip"):
        raise TextDataError(f"{path}: compressed files are not read; decompress it first")
    if suffix not in SUFFIXES:
        raise TextDataError(f"{path}: unknown file type {suffix!r}; use one of {', '.join(SUFFIXES)}")

    def norm(row: dict, where: str) -> dict:
        return {c: cell_value(row.get(c), path, where, c, flag, c in lists) for c, flag in wanted.items()}

    try:
        if suffix in (".csv", ".tsv"):
            yield from _records_csv(path, "\t" if suffix == ".tsv" else ",", wanted, norm)
        elif suffix in (".parquet", ".pq"):
            yield from _records_parquet(path, wanted, norm)
        elif is_json_array(path):
            try:
                if path.stat().st_size > MAX_JSON_LINE_CHARS:
                    raise TextDataError(f"{path}: a JSON array of {path.stat().st_size:,} bytes is read whole; over "
                                        f"{MAX_JSON_LINE_CHARS:,} write it as JSON lines (one object per line) instead")
                rows = json.loads(path.read_text(encoding="utf-8-sig"))
            except ValueError as exc:
                if isinstance(exc, (UnicodeDecodeError, TextDataError)):
                    raise
                raise TextDataError(f"{path}: not valid JSON ({exc})") from None
            if not isinstance(rows, list) or any(not isinstance(r, dict) for r in rows):
                raise TextDataError(f"{path}: expected a JSON array of objects")
            if rows:
                _check_columns(path, list({c: None for r in rows for c in r}), wanted)
            for i, r in enumerate(rows, 1):
                yield f"row {i}", norm(r, f"row {i}")
        else:
            for i, (number, record) in enumerate(iter_json_lines(path), 1):
                if i == 1:
                    _check_columns(path, list(record), wanted)
                yield f"row {i} (line {number})", norm(record, f"row {i} (line {number})")
    except UnicodeDecodeError as exc:
        raise _decode_error(path, exc) from None


def _records_csv(path: Path, delimiter: str, wanted: dict[str, str], norm) -> Iterator[tuple[str, dict]]:
    csv.field_size_limit(MAX_FIELD_CHARS)  # module-wide; every reader here (and data_prep's) sets its own before reading
    counter = [0]
    with open(path, newline="", encoding="utf-8-sig", errors="strict") as fh:
        reader = csv.reader(_lines(fh, MAX_FIELD_CHARS, path, counter), delimiter=delimiter, strict=True)
        start = 1
        try:
            header = next(reader, None)
            if header is None:
                raise TextDataError(f"{path}: empty file (no header row)")
            twice = sorted({c for c in header if header.count(c) > 1})
            if twice:
                raise TextDataError(f"{path}: the header names column(s) {twice} more than once; rename them (a reader would "
                                    "silently keep one)")
            _check_columns(path, header, wanted)
            index = {c: header.index(c) for c in wanted}
            n = 0
            start = counter[0] + 1
            for fields in reader:
                if not fields:  # a blank line
                    start = counter[0] + 1
                    continue
                n += 1
                where = f"row {n} (after the header)"
                if len(fields) > len(header):
                    raise TextDataError(f"{path}: line {start} ({where}) has {len(fields)} fields, the header {len(header)}; "
                                        "a delimiter inside an unquoted value? Quote it")
                yield where, norm({c: fields[i] if i < len(fields) else None for c, i in index.items()}, where)
                start = counter[0] + 1
        except csv.Error as exc:
            if "field larger than field limit" in str(exc):
                raise TextDataError(f"{path}: line {start}: a field longer than {MAX_FIELD_CHARS:,} characters; split that text") from None
            raise TextDataError(f"{path}: line {start}: malformed CSV ({exc}); most likely a quote opened in the record "
                                "starting on that line is never closed") from None


def _records_parquet(path: Path, wanted: dict[str, str], norm) -> Iterator[tuple[str, dict]]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 -- pyarrow raises several types for corrupt files
        raise TextDataError(f"{path}: cannot read parquet file ({exc})") from None
    _check_columns(path, pf.schema_arrow.names, wanted)
    n = 0
    try:
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=list(dict.fromkeys(wanted))):
            for col, flag in wanted.items():  # measured in Arrow, before a value becomes a Python string
                arr = batch.column(col)
                if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
                    lengths = pc.utf8_length(arr)
                elif pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type):
                    lengths = pc.binary_length(arr)
                else:
                    continue
                over = pc.fill_null(pc.greater(lengths, MAX_FIELD_CHARS), False)
                if pc.any(over).as_py():
                    i = pc.index(over, True).as_py()
                    raise TextDataError(f"{path}: row {n + i + 1}: column {col!r} ({flag}) holds {lengths[i].as_py():,} "
                                        f"characters, over the {MAX_FIELD_CHARS:,} a value may hold; split that text")
            for row in batch.to_pylist():
                n += 1
                yield f"row {n}", norm(row, f"row {n}")
    except (OSError, pa.ArrowException) as exc:
        raise TextDataError(f"{path}: cannot read parquet file ({exc})") from None


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
    """The text and label columns of a .csv / .tsv / .parquet / .jsonl (.json) file, read by `iter_records` (the
    reader ort_training.predict uses too).

    A missing file or column, a missing label (null, NaN or a MISSING_LABELS cell, in any format), a missing or
    blank text, or an empty file is a TextDataError naming the file (and the column and row)."""
    path = Path(path)
    texts, labels = [], []
    for where, row in iter_records(path, {text_column: "--text_column", label_column: label_flag}, lists=(label_column,)):
        text, label = row[text_column], row[label_column]
        if is_missing(label, MISSING_LABELS):
            raise TextDataError(f"{path}: {where} has no value in column {label_column!r} ({label_flag}): {label!r} "
                                "means a missing label in every format; label the row or remove it")
        if is_missing(text) or (isinstance(text, str) and not text.strip()):
            raise TextDataError(f"{path}: {where} has no value in column {text_column!r} (--text_column); fill it or remove the row")
        if isinstance(text, list):
            raise TextDataError(f"{path}: {where}: column {text_column!r} (--text_column) holds a list, not text")
        texts.append(text)
        labels.append(_label_str(label))
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
    capped: int = 0  # documents cut at max_windows windows (their tail is not read)

    @property
    def num_docs(self) -> int:
        return len(self.doc_labels)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def batch(self, index) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[index], "segment_ids": self.segment_ids[index],
                "input_mask": self.input_mask[index], "labels": self.labels[index]}


MAX_WINDOWS = 256
"""Windows read per document with --long_text window (fine-tuning and predict alike): a 2 MB note would be 8,000
windows of 128 tokens; past this many its tail is not read (counted as `capped`)."""
MAX_CHARS_PER_TOKEN = 100
"""Characters a text is cut to per token it can use, before tokenizing: WordPiece reads a word of up to 100
characters (BertTokenizer's max_input_chars_per_word; a longer one is one [UNK]), so only runs of whitespace or
such words make a token span more. Bounds the tokenizer's work on a 10 MB text."""


def token_budget(tokenizer, max_seq_length: int, long_text: LongText, stride: int, max_windows: int = MAX_WINDOWS) -> int:
    """Text tokens (special tokens left out) a document can contribute: one window's, or `max_windows` windows
    sharing `stride` tokens."""
    per = max_seq_length - tokenizer.num_special_tokens_to_add(pair=False)
    return per if long_text == "truncate" else per + (max_windows - 1) * (per - stride)


def cut_texts(texts: Sequence[str], tokenizer, budget: int, exact: bool) -> tuple[list[str], int]:
    """Texts cut before tokenizing so that the tokenizer's work and memory follow the settings, not the text:
    first at `budget` x MAX_CHARS_PER_TOKEN characters, then (`exact`) at the end of the `budget`-th token (its
    offset), so a windowed text gives at most the budget's windows. Returns (texts, how many were cut short of a
    token they would have used)."""
    out, capped, hard = [], 0, budget * MAX_CHARS_PER_TOKEN
    for text in texts:
        if len(text) > budget:  # a WordPiece token holds at least one character: shorter texts fit whole
            text = text[:hard]
            if exact:
                enc = tokenizer(text, add_special_tokens=False, truncation=True, max_length=budget + 1, return_offsets_mapping=True)
                offsets = enc["offset_mapping"]
                if len(offsets) > budget:
                    text, capped = text[:offsets[budget - 1][1]], capped + 1
        out.append(text)
    return out, capped


def encode_split(name: str, table: Table, label_ids: np.ndarray, tokenizer, max_seq_length: int,
                 long_text: LongText = "truncate", stride: int = 64, pad_to: int | None = None,
                 max_windows: int = MAX_WINDOWS) -> EncodedSplit:
    """Tokenize `table` ([CLS] text [SEP], padded to `pad_to` or `max_seq_length`).

    truncate: one window per text, cut at `max_seq_length` tokens. window: texts longer than that become
    several windows of `max_seq_length` tokens, consecutive windows sharing `stride` tokens (the HF
    tokenizer's `stride`), each with the document's label, at most `max_windows` per text. Texts are cut by
    characters first (`cut_texts`), so a 10 MB text is never tokenized whole."""
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("a Hugging Face fast tokenizer is needed (BertTokenizerFast)")
    if long_text not in ("truncate", "window"):
        raise UsageError(f"--long_text must be truncate or window, got {long_text!r}")
    if long_text == "window" and not 0 <= stride < max_seq_length - 2:
        raise UsageError(f"--stride {stride} must be >= 0 and < --max_seq_length - 2 ({max_seq_length - 2}) with --long_text window")
    pad_to = pad_to or max_seq_length
    if max_windows < 1:
        raise UsageError(f"--max_windows must be >= 1, got {max_windows}")
    texts, capped = cut_texts(table.texts, tokenizer, token_budget(tokenizer, max_seq_length, long_text, stride, max_windows),
                              exact=long_text == "window")
    enc = tokenizer(texts, truncation=True, max_length=max_seq_length, padding="max_length",
                    return_overflowing_tokens=long_text == "window", stride=stride if long_text == "window" else 0,
                    return_token_type_ids=True, return_attention_mask=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)[:, :pad_to]
    mask = np.asarray(enc["attention_mask"], dtype=np.int64)[:, :pad_to]
    types = np.asarray(enc["token_type_ids"], dtype=np.int64)[:, :pad_to]
    if long_text == "window":
        doc_index = np.asarray(enc["overflow_to_sample_mapping"], dtype=np.int64)
        # a guard for tokenizers whose tokens are shorter than a character (byte-level BPE): never over max_windows
        first = np.searchsorted(doc_index, doc_index, side="left")
        keep = np.arange(len(doc_index)) - first < max_windows
        if not keep.all():
            capped += int(len(np.unique(doc_index[~keep])))
            ids, mask, types, doc_index = ids[keep], mask[keep], types[keep], doc_index[keep]
        truncated = int((np.bincount(doc_index) > 1).sum())  # documents cut into several windows
    else:
        doc_index = np.arange(len(table), dtype=np.int64)
        truncated = int(sum(1 for m in enc["attention_mask"] if m[-1] == 1))  # filled the window: (probably) cut off
    if capped:
        logger.warning("%s: %d document(s) longer than %d windows of %d tokens: their tail is not read", table.path, capped,
                       max_windows, max_seq_length)
    return EncodedSplit(name, str(table.path), torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(types),
                        torch.from_numpy(label_ids[doc_index]), torch.from_numpy(doc_index), label_ids, truncated, capped)


def longest_tokens(tokenizer, texts: Sequence[str], max_seq_length: int) -> int:
    """Longest tokenized text ([CLS]/[SEP] included), capped at `max_seq_length`."""
    texts, _ = cut_texts(texts, tokenizer, max_seq_length, exact=False)
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
