"""The "packed token sequences" HDF5 format, defined once: data_prep's ``packed`` stage writes it,
``ort_training.data.packed`` reads it and masks at load time, the tests build it from here.

One file holds N variable-length sequences, tokenized once, with no padding, masks or segment ids:

| dataset   | shape   | dtype | values                                                            |
| --------- | ------- | ----- | ----------------------------------------------------------------- |
| `tokens`  | [T]     | int32 | every sequence's token ids, concatenated; each in [0, vocab_size) |
| `offsets` | [N + 1] | int64 | offsets[0] = 0, ascending; sequence i = tokens[offsets[i]:offsets[i+1]] |
| `sentence_starts` | [S] | int64 | optional (format version 2): ascending positions in `tokens` where a sentence begins |

Format version 2 adds the optional `sentence_starts` dataset (sentence-level objectives, DEPTH's un-shuffling:
``read_sentence_starts``); a file without it, and every version-1 file, reads as before.

File attributes: ``format`` = "packed_tokens", ``format_version``, ``max_seq_length``, ``vocab_size``,
``cls_id``, ``sep_id``, ``pad_id``, ``mask_id`` and ``special_ids`` (ids a loader never masks and never
draws as random replacements).

A sequence is ``[CLS] doc [SEP] doc [SEP] ...``: whole documents packed greedily up to
``max_seq_length`` (``SequencePacker``). A document too long for an empty sequence is cut into
chunks, each starting a new sequence; only the chunk holding the document's end carries its
``[SEP]``, so a ``[SEP]`` always means "a document ended here". HDF5 through h5py rather than a new
format: the bundle already depends on it, and files named like NVIDIA's (``<name>_training_<i>.hdf5``)
go through ``ort_training.data.hdf5.list_hdf5_files`` and data_prep's manifests unchanged.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from bundle import hdf5_schema
from bundle.atomic import atomic_path

# The folder naming rule (``packed_seq_len_<L>/<dataset>/``) lives with data_prep's other folder names in
# bundle.layout; re-exported here, where the format's readers and writers have always found it.
from bundle.layout import packed_data_dir, packed_dir_name  # noqa: F401

FORMAT = "packed_tokens"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
"""Version 1: tokens and offsets; version 2: the same plus the optional ``sentence_starts`` dataset."""
MAX_SEQ_LENGTH = 8192
"""The longest sequence the format and its writer accept (ModernBERT's context)."""
DEFAULT_MAX_SEQ_LENGTH = 1024
"""data_prep's default for the ``packed`` stage (ModernBERT's first phase)."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    dtype: type


TOKENS = DatasetSpec("tokens", np.int32)
OFFSETS = DatasetSpec("offsets", np.int64)
DATASETS: tuple[DatasetSpec, ...] = (TOKENS, OFFSETS)
SENTENCE_STARTS = DatasetSpec("sentence_starts", np.int64)
"""Optional (version 2): where sentences begin, as positions in ``tokens``."""


class SchemaError(hdf5_schema.SchemaError):
    """A packed file does not follow the format; the message names the file and the dataset or attribute."""


@dataclass(frozen=True)
class PackedAttrs:
    """A file's attributes: what a loader needs to pad, mask and range-check without the tokenizer."""

    max_seq_length: int
    vocab_size: int
    cls_id: int
    sep_id: int
    pad_id: int
    mask_id: int
    special_ids: tuple[int, ...]

    def __post_init__(self):
        if not 3 <= self.max_seq_length <= MAX_SEQ_LENGTH:
            raise SchemaError(f"max_seq_length {self.max_seq_length}: must be in [3, {MAX_SEQ_LENGTH}]")
        ids = {"cls_id": self.cls_id, "sep_id": self.sep_id, "pad_id": self.pad_id, "mask_id": self.mask_id}
        bad = {k: v for k, v in ids.items() if not 0 <= v < self.vocab_size}
        if bad:
            raise SchemaError(f"special ids {bad} outside the vocabulary [0, {self.vocab_size})")
        # The four structural ids are never masked, whatever the caller listed.
        object.__setattr__(self, "special_ids", tuple(sorted({int(i) for i in self.special_ids} | set(ids.values()))))

    def to_h5(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "max_seq_length": self.max_seq_length,
                "vocab_size": self.vocab_size, "cls_id": self.cls_id, "sep_id": self.sep_id, "pad_id": self.pad_id,
                "mask_id": self.mask_id, "special_ids": np.asarray(self.special_ids, dtype=np.int64)}

    @classmethod
    def from_h5(cls, attrs, path: str | os.PathLike) -> "PackedAttrs":
        if _text(attrs.get("format")) != FORMAT:
            raise SchemaError(f"{path}: attribute format is {_text(attrs.get('format'))!r}, not {FORMAT!r}: not a "
                              f"packed token file (NVIDIA-schema files are read by ort_training.data.hdf5)")
        version = int(attrs.get("format_version", -1))
        if version not in READABLE_VERSIONS:
            raise SchemaError(f"{path}: format_version {version}; this reader knows {', '.join(map(str, READABLE_VERSIONS))}: regenerate it "
                              f"with `python -m data_prep packed`")
        missing = [k for k in ATTR_NAMES if k not in attrs]
        if missing:
            raise SchemaError(f"{path}: missing attribute {missing[0]!r} (a packed file has {list(ATTR_NAMES)})")
        try:
            return cls(int(attrs["max_seq_length"]), int(attrs["vocab_size"]), int(attrs["cls_id"]),
                       int(attrs["sep_id"]), int(attrs["pad_id"]), int(attrs["mask_id"]),
                       tuple(int(i) for i in np.asarray(attrs["special_ids"]).reshape(-1)))
        except SchemaError as e:
            raise SchemaError(f"{path}: {e}") from None


ATTR_NAMES: tuple[str, ...] = ("max_seq_length", "vocab_size", "cls_id", "sep_id", "pad_id", "mask_id", "special_ids")


def _text(v) -> str | None:
    return v.decode() if isinstance(v, bytes) else (None if v is None else str(v))


def read_attrs(path: str | os.PathLike) -> PackedAttrs:
    """A file's attributes (no data read)."""
    import h5py

    with h5py.File(path, "r") as f:
        return PackedAttrs.from_h5(f.attrs, path)


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def is_packed(path: str | os.PathLike) -> bool:
    """True for a packed token file; False for NVIDIA-schema files and files that are not HDF5 at all (cheap: one
    attribute). An HDF5 file that h5py cannot open (truncated by a killed copy, corrupt) is a SchemaError naming it:
    telling its format apart is impossible, and calling it NVIDIA-schema would report a folder "mixing formats"."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return _text(f.attrs.get("format")) == FORMAT
    except OSError as exc:
        try:
            with open(path, "rb") as fh:
                signed = fh.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE
        except OSError:
            return False
        if signed:
            raise SchemaError(f"{path}: truncated or corrupt HDF5 file ({str(exc).splitlines()[0][:200]}); regenerate it with "
                              "data_prep (or copy it again)") from None
        return False


def read_sequences(path: str | os.PathLike, start: int = 0, step: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Sequences ``start::step`` of a file (one rank's stride) as (tokens, offsets), re-based so that
    offsets[0] = 0; validated against the file's attributes."""
    import h5py

    with h5py.File(path, "r") as f:
        attrs = PackedAttrs.from_h5(f.attrs, path)
        missing = [d.name for d in DATASETS if d.name not in f]
        if missing:
            raise SchemaError(f"{path}: missing datasets {missing}; expected {[d.name for d in DATASETS]}")
        offsets = np.asarray(f[OFFSETS.name][:])
        tokens = np.asarray(f[TOKENS.name][:])
    validate(tokens, offsets, attrs, path)
    if (start, step) == (0, 1):
        return tokens, offsets
    lo, hi = offsets[:-1][start::step], offsets[1:][start::step]
    lengths = hi - lo
    new_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    gather = np.repeat(lo - new_offsets[:-1], lengths) + np.arange(int(new_offsets[-1]), dtype=np.int64)
    return tokens[gather], new_offsets


def read_sentence_starts(path: str | os.PathLike, start: int = 0, step: int = 1) -> list[np.ndarray] | None:
    """Sentence starts of sequences ``start::step`` (as ``read_sequences`` selects them), each relative to its
    sequence; None for a file without sentence boundaries (version 1, or written without them)."""
    import h5py

    with h5py.File(path, "r") as f:
        if SENTENCE_STARTS.name not in f:
            return None
        offsets = np.asarray(f[OFFSETS.name][:])
        starts = np.asarray(f[SENTENCE_STARTS.name][:])
    if starts.ndim != 1 or (starts.size and (np.any(np.diff(starts) <= 0) or starts[0] < 0 or starts[-1] >= offsets[-1])):
        raise SchemaError(f"{path}: {SENTENCE_STARTS.name} must be ascending positions in [0, {int(offsets[-1])})")
    bounds = np.searchsorted(starts, offsets)
    return [starts[bounds[i]:bounds[i + 1]] - offsets[i] for i in range(start, len(offsets) - 1, step)]


def validate(tokens: np.ndarray, offsets: np.ndarray, attrs: PackedAttrs, path: str | os.PathLike) -> int:
    """Check dtypes, offsets and value ranges; returns the number of sequences. Each check names the file
    and the dataset, because the alternative is an IndexError from deep inside a training step."""
    for name, a in ((TOKENS.name, tokens), (OFFSETS.name, offsets)):
        if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
            raise SchemaError(f"{path}: {name} must be a 1-D integer array, got shape {a.shape} dtype {a.dtype}")
    if len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(tokens):
        raise SchemaError(f"{path}: offsets must start at 0 and end at len(tokens) = {len(tokens)} (got "
                          f"{offsets[:1].tolist()} ... {offsets[-1:].tolist()})")
    lengths = np.diff(offsets)
    if lengths.size and (lengths.min() < 1 or lengths.max() > attrs.max_seq_length):
        i = int(np.argmax((lengths < 1) | (lengths > attrs.max_seq_length)))
        raise SchemaError(f"{path}: offsets give sequence {i} length {int(lengths[i])}; lengths must be in "
                          f"[1, max_seq_length {attrs.max_seq_length}] and offsets ascending")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= attrs.vocab_size):
        i = int(np.argmax((tokens < 0) | (tokens >= attrs.vocab_size)))
        raise SchemaError(f"{path}: tokens holds {int(tokens[i])} at {i}; token ids must be in [0, "
                          f"{attrs.vocab_size}) for vocab_size {attrs.vocab_size}: the file is damaged or was made "
                          f"with another tokenizer")
    return len(lengths)


class SequencePacker:
    """Documents in, packed sequences out: ``[CLS] doc [SEP] doc [SEP] ...`` up to ``max_seq_length``.

    Greedy and streaming: the open sequence carries over between ``add`` calls, so packing does not
    depend on how the caller chunks its documents. ``add`` returns the sequences it closed."""

    def __init__(self, max_seq_length: int, cls_id: int, sep_id: int):
        if not 3 <= max_seq_length <= MAX_SEQ_LENGTH:
            raise SchemaError(f"max_seq_length {max_seq_length}: must be in [3, {MAX_SEQ_LENGTH}]")
        self.L, self.cls, self.sep = max_seq_length, cls_id, sep_id
        self.open: list[np.ndarray] = []
        self.open_len = 1  # the [CLS]

    def _close(self) -> np.ndarray:
        seq = np.concatenate([np.asarray([self.cls], dtype=np.int32), *self.open])
        self.open, self.open_len = [], 1
        return seq

    def add(self, doc: np.ndarray) -> list[np.ndarray]:
        """Pack one document's token ids (no specials); returns the sequences completed by it."""
        doc = np.asarray(doc, dtype=np.int32)
        out: list[np.ndarray] = []
        if doc.size == 0:
            return out
        if self.open_len + doc.size + 1 > self.L and self.open:
            out.append(self._close())  # the document does not fit behind the others: it starts a new sequence
        # A document too long for one sequence: full chunks of L - 1 tokens, no [SEP] (it has not ended).
        while 1 + doc.size + 1 > self.L:
            cut = min(self.L - 1, doc.size - 1)  # at least one token left for the chunk that carries the [SEP]
            self.open, self.open_len = [doc[:cut]], self.L
            out.append(self._close())
            doc = doc[cut:]
        self.open += [doc, np.asarray([self.sep], dtype=np.int32)]
        self.open_len += doc.size + 1
        if self.open_len == self.L:
            out.append(self._close())
        return out

    def flush(self) -> list[np.ndarray]:
        """The last, partly filled sequence (if any)."""
        return [self._close()] if self.open else []


class PackedWriter:
    """``with PackedWriter(path, attrs) as w: w.write(sequences)``; renamed onto ``path`` only if the block
    completes (``bundle.atomic``). Appends to resizable datasets in buffers of ``buffer_tokens``, so memory
    is bounded by that setting, not by the file."""

    def __init__(self, path: str | os.PathLike, attrs: PackedAttrs, buffer_tokens: int = 1 << 20,
                 compression_level: int = 1, sentences: bool = False):
        self.path, self.attrs = Path(path), attrs
        self.sentences = sentences
        """Whether the file stores ``sentence_starts``: each ``write`` then passes every sequence's starts."""
        self._buf_starts: list[np.ndarray] = []
        self.buffer_tokens = buffer_tokens
        # gzip 1 + shuffle, as data_prep's NVIDIA-schema writer: cheap to write, any h5py reads it.
        self.compression_level = compression_level
        self.sequences = self.tokens = 0
        self._buf: list[np.ndarray] = []
        self._buf_tokens = 0
        self._f = None
        self._atomic: contextlib.AbstractContextManager | None = None

    def __enter__(self) -> "PackedWriter":
        import h5py

        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        try:
            self._f = h5py.File(tmp, "w")
            for k, v in self.attrs.to_h5().items():
                self._f.attrs[k] = v
            kw = dict(compression="gzip", compression_opts=self.compression_level, shuffle=True)
            self._f.create_dataset(TOKENS.name, shape=(0,), maxshape=(None,), dtype=TOKENS.dtype, chunks=(1 << 16,), **kw)
            self._f.create_dataset(OFFSETS.name, data=np.zeros(1, dtype=OFFSETS.dtype), maxshape=(None,),
                                   chunks=(1 << 14,), **kw)
            if self.sentences:
                self._f.create_dataset(SENTENCE_STARTS.name, shape=(0,), maxshape=(None,), dtype=SENTENCE_STARTS.dtype,
                                       chunks=(1 << 14,), **kw)
        except BaseException as e:
            self.__exit__(type(e), e, e.__traceback__)
            raise
        return self

    def write(self, sequences: list[np.ndarray], sentence_starts: list[np.ndarray] | None = None) -> None:
        """Append sequences; with ``sentences=True`` also each one's sentence starts (positions in the sequence)."""
        if self.sentences != (sentence_starts is not None) or (sentence_starts is not None and len(sentence_starts) != len(sequences)):
            raise SchemaError(f"{self.path}: a writer made with sentences={self.sentences} takes "
                              f"{'one sentence_starts array per sequence' if self.sentences else 'no sentence_starts'}")
        if sentence_starts is not None:
            self._buf_starts += [np.asarray(st, dtype=np.int64) for st in sentence_starts]
        for s in sequences:
            if not 1 <= len(s) <= self.attrs.max_seq_length:
                raise SchemaError(f"{self.path}: a sequence of {len(s)} tokens; lengths must be in "
                                  f"[1, {self.attrs.max_seq_length}]")
        self._buf += sequences
        self._buf_tokens += sum(map(len, sequences))
        if self._buf_tokens >= self.buffer_tokens:
            self._flush()

    def _flush(self) -> None:
        if not self._buf:
            return
        lengths = np.fromiter(map(len, self._buf), dtype=np.int64, count=len(self._buf))
        toks = np.concatenate(self._buf).astype(TOKENS.dtype, copy=False)
        if toks.min() < 0 or toks.max() >= self.attrs.vocab_size:
            raise SchemaError(f"{self.path}: token id outside [0, {self.attrs.vocab_size}) written to {TOKENS.name}")
        t, o = self._f[TOKENS.name], self._f[OFFSETS.name]
        t.resize(self.tokens + len(toks), axis=0)
        t[self.tokens:] = toks
        o.resize(self.sequences + 1 + len(lengths), axis=0)
        o[self.sequences + 1:] = self.tokens + np.cumsum(lengths)
        if self.sentences:
            seq_starts = self.tokens + np.concatenate([[0], np.cumsum(lengths)[:-1]])
            absolute = np.concatenate([st + at for st, at in zip(self._buf_starts, seq_starts)]).astype(np.int64)
            d = self._f[SENTENCE_STARTS.name]
            n = d.shape[0]
            d.resize(n + len(absolute), axis=0)
            d[n:] = absolute
            self._buf_starts = []
        self.tokens += len(toks)
        self.sequences += len(lengths)
        self._buf, self._buf_tokens = [], 0

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._atomic is None:  # never opened
            return False
        atomic, self._atomic = self._atomic, None
        try:
            if self._f is not None:
                try:
                    if exc_type is None:
                        self._flush()
                finally:
                    self._f.close()
                    self._f = None
        except BaseException as e:  # a failed last flush must not rename a half-written file into place
            atomic.__exit__(type(e), e, e.__traceback__)
            raise
        atomic.__exit__(exc_type, exc, tb)  # renames onto ``path`` only if the block finished
        return False


def write_file(path: str | os.PathLike, sequences: list[np.ndarray], attrs: PackedAttrs,
               sentence_starts: list[np.ndarray] | None = None) -> None:
    """One complete file from a list of sequences (tests and small tools), with sentence starts when given."""
    with PackedWriter(path, attrs, sentences=sentence_starts is not None) as w:
        w.write(list(sequences), None if sentence_starts is None else list(sentence_starts))


class SentencePacker:
    """``SequencePacker`` that also carries sentence boundaries: ``add(doc, starts)`` takes a document's token ids
    and the positions where its sentences begin, and returns (sequence, sentence starts in the sequence) pairs.
    The boundaries ride through a second packer fed 0/1 flags of the same lengths, so the sequences are exactly
    ``SequencePacker``'s."""

    def __init__(self, max_seq_length: int, cls_id: int, sep_id: int):
        self.tokens = SequencePacker(max_seq_length, cls_id, sep_id)
        self.flags = SequencePacker(max_seq_length, 0, 0)

    @staticmethod
    def _pairs(seqs: list[np.ndarray], flags: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(s, np.flatnonzero(f).astype(np.int64)) for s, f in zip(seqs, flags)]

    def add(self, doc: np.ndarray, starts: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        flags = np.zeros(len(doc), dtype=np.int32)
        flags[np.asarray(starts, dtype=np.int64)] = 1
        return self._pairs(self.tokens.add(doc), self.flags.add(flags))

    def flush(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return self._pairs(self.tokens.flush(), self.flags.flush())


def iter_sequences(tokens: np.ndarray, offsets: np.ndarray) -> Iterator[np.ndarray]:
    for i in range(len(offsets) - 1):
        yield tokens[offsets[i]:offsets[i + 1]]
