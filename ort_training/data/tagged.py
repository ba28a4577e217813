"""Entity-tagging data for fine-tuning: CoNLL-style or JSONL files of words + IOB2 tags -> labelled windows.

`read_tagged` reads one file: CoNLL-style (a word and its tag per line, the tag in the last column, separated
by a tab or spaces; a blank line between sentences or documents; `-DOCSTART-` lines skipped) or JSON lines
(a list of words and a list of tags per record, columns named by --tokens_column / --tags_column). Tags must
be IOB2 (O, B-TYPE, I-TYPE; an I- continues a B- or I- of its type): anything else, and a record whose word and
tag counts differ, is a `TextDataError` naming the file and line.

`encode_tagged` tokenizes each document as one text (its words joined by single spaces, so a byte-level BPE
sees the spaces a pipeline sees in running text), maps sub-tokens to words by character offsets, and cuts
documents longer than --max_seq_length into windows sharing `stride` sub-tokens. A word's first sub-token
carries its tag; the others carry IGNORE_INDEX, or with `label_all_subtokens` the tag with B- turned into I-.
For prediction every sub-token is read from the window where it has the most context on both sides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ort_training.data.hdf5 import IGNORE_INDEX
from ort_training.data.text import LongText, TextDataError, iter_json_lines

CONLL_SUFFIXES = (".conll", ".conllu", ".iob", ".iob2", ".bio", ".tsv", ".txt")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
_TAG = re.compile(r"^(O|[BI]-\S+)$")


@dataclass
class TaggedTable:
    """Documents (sentences, for CoNLL files) of one file: words, tags, and the line each document starts on."""

    path: Path
    words: list[list[str]]
    tags: list[list[str]]
    lines: list[int]

    def __len__(self) -> int:
        return len(self.words)

    def subset(self, index: Sequence[int], name: str) -> "TaggedTable":
        return TaggedTable(Path(f"{self.path} ({name})"), [self.words[i] for i in index], [self.tags[i] for i in index],
                           [self.lines[i] for i in index])


def _check_tags(path: Path, tags: list[str], lines: list[int]) -> None:
    """IOB2: every tag O / B-TYPE / I-TYPE, and an I-TYPE only after B-TYPE or I-TYPE."""
    previous = "O"
    for tag, line in zip(tags, lines):
        if not _TAG.match(tag):
            raise TextDataError(f"{path}: line {line}: tag {tag!r} is not IOB2 (O, B-TYPE or I-TYPE)")
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            raise TextDataError(f"{path}: line {line}: tag {tag!r} follows {previous!r}; in IOB2 every entity starts with B- "
                                "(IOB1 data: turn each I- that starts an entity into B-)")
        previous = tag


def _read_conll(path: Path) -> TaggedTable:
    words, tags, lines = [], [], []
    doc_words, doc_tags, doc_lines = [], [], []

    def close():
        if doc_words:
            _check_tags(path, doc_tags, doc_lines)
            words.append(list(doc_words)), tags.append(list(doc_tags)), lines.append(doc_lines[0])
            doc_words.clear(), doc_tags.clear(), doc_lines.clear()

    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            fields = line.split("\t") if "\t" in line else line.split()
            fields = [f.strip() for f in fields]
            if not line.strip():
                close()
                continue
            if fields[0] == "-DOCSTART-":
                close()
                continue
            if len(fields) < 2 or not fields[0] or not fields[-1]:
                raise TextDataError(f"{path}: line {number}: expected a word and its tag separated by a tab or spaces, got {line.strip()!r}")
            doc_words.append(fields[0])
            doc_tags.append(fields[-1])
            doc_lines.append(number)
    close()
    return TaggedTable(path, words, tags, lines)


def _read_jsonl(path: Path, tokens_column: str, tags_column: str) -> TaggedTable:
    words, tags, lines = [], [], []
    for number, record in iter_json_lines(path):
        for column, flag in ((tokens_column, "--tokens_column"), (tags_column, "--tags_column")):
            value = record.get(column)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise TextDataError(f"{path}: line {number}: column {column!r} ({flag}) must be a list of strings; the record "
                                    f"has columns {list(record)}")
        doc_words, doc_tags = record[tokens_column], record[tags_column]
        if len(doc_words) != len(doc_tags):
            raise TextDataError(f"{path}: line {number}: {len(doc_words)} tokens but {len(doc_tags)} tags")
        if not doc_words:
            continue
        _check_tags(path, doc_tags, [number] * len(doc_tags))
        words.append(doc_words), tags.append(doc_tags), lines.append(number)
    return TaggedTable(path, words, tags, lines)


def read_tagged(path: str | Path, tokens_column: str = "tokens", tags_column: str = "tags") -> TaggedTable:
    """Words and IOB2 tags of a CoNLL-style (.conll .iob .bio .tsv .txt ...) or JSON-lines (.jsonl .json) file."""
    path = Path(path)
    if not path.is_file():
        raise TextDataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix in JSONL_SUFFIXES:
            table = _read_jsonl(path, tokens_column, tags_column)
        elif suffix in CONLL_SUFFIXES:
            table = _read_conll(path)
        else:
            raise TextDataError(f"{path}: unknown file type {suffix!r} for token classification; use CoNLL-style "
                                f"({', '.join(CONLL_SUFFIXES)}) or JSON lines ({', '.join(JSONL_SUFFIXES)})")
    except UnicodeDecodeError as exc:
        raise TextDataError(f"{path}: not UTF-8 text ({exc})") from None
    if not len(table):
        raise TextDataError(f"{path}: holds no tagged words")
    return table


def tag_set(table: TaggedTable) -> list[str]:
    """The training file's tags: O first, then B-/I- of each type, types sorted (an I- of a type that only ever
    has one-word entities is added: a model may predict it)."""
    types = sorted({t[2:] for doc in table.tags for t in doc if t != "O"})
    if not types:
        raise TextDataError(f"{table.path}: every tag is O; token classification needs at least one entity")
    return ["O"] + [f"{p}-{t}" for t in types for p in "BI"]


def check_known_tags(table: TaggedTable, labels: list[str], train_path) -> None:
    """Every tag of `table` is one the training rows (`train_path`: the training file, or its "train split" when the
    other splits are cut from it) give the model; an unknown one is refused naming this table's file and line,
    the training rows it is missing from, and how often it occurs here."""
    known = set(labels)
    for doc, line in zip(table.tags, table.lines):
        unknown = next((t for t in doc if t not in known), None)
        if unknown is not None:
            count = sum(t == unknown for d in table.tags for t in d)
            raise TextDataError(f"{table.path}: document at line {line}: tag {unknown!r} does not occur in the training data "
                                f"({train_path}), whose tags are {labels}; it occurs {count} time(s) in this file")


# ----------------------------------------------------------------------------- tokenizing
@dataclass
class TaggedSplit:
    """Labelled windows of one split (the batch interface TextClassificationLoader reads) and, for prediction,
    where each document's words are read."""

    name: str
    path: str
    input_ids: torch.Tensor  # [windows, seq]
    input_mask: torch.Tensor
    segment_ids: torch.Tensor
    labels: torch.Tensor  # [windows, seq] tag id or IGNORE_INDEX
    doc_index: torch.Tensor  # [windows] -> document
    word_index: torch.Tensor  # [windows, seq] the word whose first sub-token is read here, else -1
    tags: list[list[str]]  # gold tags per document
    words: list[list[str]]
    truncated: int = 0  # documents longer than one window
    unreadable_words: int = 0  # words with no sub-token (predicted O), or cut off by --long_text truncate

    @property
    def num_docs(self) -> int:
        return len(self.tags)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def batch(self, index) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[index], "segment_ids": self.segment_ids[index],
                "input_mask": self.input_mask[index], "labels": self.labels[index]}


def special_tokens_around(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text ([CLS] / [SEP]): what each window is wrapped in, as
    the tokenizer's own post-processor (and so a pipeline) does."""
    enc = tokenizer("a", return_special_tokens_mask=True)
    ids, special = enc["input_ids"], enc["special_tokens_mask"]
    first = special.index(0)
    last = len(special) - special[::-1].index(0)
    return ids[:first], ids[last:]


def _windows(n_tokens: int, width: int, stride: int, long_text: LongText) -> list[int]:
    """Start positions of windows of `width` content tokens over `n_tokens`, consecutive ones sharing `stride`."""
    if n_tokens <= width or long_text == "truncate":
        return [0]
    step = width - stride
    starts = list(range(0, n_tokens - width, step))
    return starts + [n_tokens - width] if starts[-1] != n_tokens - width else starts


def encode_tagged(name: str, table: TaggedTable, labels: list[str], tokenizer, max_seq_length: int,
                  long_text: LongText = "window", stride: int = 32, label_all_subtokens: bool = False,
                  pad_to: int | None = None) -> TaggedSplit:
    """Windows of `max_seq_length` tokens (specials included) over every document, padded to `pad_to` (default:
    max_seq_length); see the module docstring for labels and windows."""
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("a Hugging Face fast tokenizer is needed (character offsets)")
    prefix, suffix = special_tokens_around(tokenizer)
    width = max_seq_length - len(prefix) - len(suffix)
    if long_text == "window" and not 0 <= stride < width:
        raise ValueError(f"--stride {stride} must be >= 0 and < --max_seq_length - {len(prefix) + len(suffix)} ({width})")
    index = {label: i for i, label in enumerate(labels)}
    inside = {i: index.get("I-" + lab[2:], i) for i, lab in enumerate(labels) if lab.startswith("B-")}
    pad_to = pad_to or max_seq_length
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    texts = [" ".join(words) for words in table.words]
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False,
                    return_token_type_ids=False, verbose=False)
    rows_ids, rows_labels, rows_words, doc_index = [], [], [], []
    truncated = unreadable = 0
    for d, (words, tags) in enumerate(zip(table.words, table.tags)):
        # character -> word; the single spaces between words map to -1
        char_word = np.full(len(texts[d]), -1, dtype=np.int64)
        pos = 0
        for w, word in enumerate(words):
            char_word[pos:pos + len(word)] = w
            pos += len(word) + 1
        ids = enc["input_ids"][d]
        token_word = np.asarray([char_word[e - 1] if e > s else -1 for s, e in enc["offset_mapping"][d]], dtype=np.int64)
        first = np.zeros(len(ids), dtype=bool)  # the word's first sub-token
        seen = np.zeros(len(words), dtype=bool)
        for t, w in enumerate(token_word):
            if w >= 0 and not seen[w]:
                first[t] = seen[w] = True
        tag_ids = np.asarray([index[t] for t in tags], dtype=np.int64)
        token_labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int64)
        token_labels[first] = tag_ids[token_word[first]]
        if label_all_subtokens:
            rest = (~first) & (token_word >= 0)
            token_labels[rest] = [inside.get(int(i), int(i)) for i in tag_ids[token_word[rest]]]
        starts = _windows(len(ids), width, stride, long_text)
        truncated += len(ids) > width
        # each token is read from the window where it is farthest from an edge
        owner = np.zeros(len(ids), dtype=np.int64)
        best = np.full(len(ids), -1, dtype=np.int64)
        for k, start in enumerate(starts):
            t = np.arange(start, min(start + width, len(ids)))
            context = np.minimum(t - start, start + width - 1 - t)
            better = context > best[t]
            owner[t[better]], best[t[better]] = k, context[better]
        read = first & (best >= 0)
        unreadable += len(words) - int(read.sum())
        for k, start in enumerate(starts):
            end = min(start + width, len(ids))
            window_words = np.where(read[start:end] & (owner[start:end] == k), token_word[start:end], -1)
            rows_ids.append(prefix + list(ids[start:end]) + suffix)
            rows_labels.append([IGNORE_INDEX] * len(prefix) + token_labels[start:end].tolist() + [IGNORE_INDEX] * len(suffix))
            rows_words.append([-1] * len(prefix) + window_words.tolist() + [-1] * len(suffix))
            doc_index.append(d)
    n = len(rows_ids)
    input_ids = torch.full((n, pad_to), pad_id, dtype=torch.int64)
    input_mask = torch.zeros((n, pad_to), dtype=torch.int64)
    label_t = torch.full((n, pad_to), IGNORE_INDEX, dtype=torch.int64)
    word_t = torch.full((n, pad_to), -1, dtype=torch.int64)
    for i, (ids, labs, wds) in enumerate(zip(rows_ids, rows_labels, rows_words)):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        input_mask[i, :len(ids)] = 1
        label_t[i, :len(ids)] = torch.tensor(labs)
        word_t[i, :len(ids)] = torch.tensor(wds)
    return TaggedSplit(name, str(table.path), input_ids, input_mask, torch.zeros_like(input_ids), label_t,
                       torch.tensor(doc_index, dtype=torch.int64), word_t, table.tags, table.words, truncated, unreadable)


def longest_window(tokenizer, table: TaggedTable, max_seq_length: int) -> int:
    """Tokens of the longest document (specials included), capped at `max_seq_length`."""
    prefix, suffix = special_tokens_around(tokenizer)
    enc = tokenizer([" ".join(w) for w in table.words], add_special_tokens=False, verbose=False)
    return min(max_seq_length, max(len(x) for x in enc["input_ids"]) + len(prefix) + len(suffix))
