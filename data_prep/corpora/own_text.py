"""The user's own corpus: ``.txt`` (blank-line separated documents), ``.jsonl``, ``.csv``, ``.parquet``.

``.csv`` / ``.parquet`` / ``.jsonl`` take a named text column (clinical notes exported from a warehouse,
as NYUTron does). Bad UTF-8 is an error naming the file and byte offset, never silently replaced.
"""

from __future__ import annotations

import csv
import gzip
import json
import sys
from pathlib import Path
from typing import Iterator

from ..manifest import DataPrepError
from ..text import clean_text
from . import TOO_LONG, Document, Record, Skip


def _lines(f, limit: int | None):
    """The lines of a text file as iteration gives them, except that a line longer than ``limit`` characters is
    read through in bounded pieces and given as None: memory follows ``limit``, not the longest line."""
    if limit is None:
        yield from f
        return
    while line := f.readline(limit + 1):
        if len(line) > limit and not line.endswith("\n"):
            while line and not line.endswith("\n"):
                line = f.readline(limit + 1)
            yield None
        else:
            yield line


def _json_line_limit(max_document_chars: int | None) -> int | None:
    """A .jsonl line longer than this holds a text over the limit even at JSON's worst escaping (\\uXXXX, 6 characters
    per character) plus 1 MiB of other fields: skipped unparsed."""
    return None if max_document_chars is None else 6 * max_document_chars + (1 << 20)


def _decode_error(path: Path, e: UnicodeDecodeError) -> DataPrepError:
    return DataPrepError(f"{path}: invalid UTF-8 near byte {e.start} ({e.reason}); re-encode it "
                         f"(e.g. iconv -f latin1 -t utf-8) or pass --skip-bad")


def _as_text(raw, where: str):
    """A cell / JSON value as text: strings as they are, numbers written out, a list of strings (paragraphs)
    joined with spaces. Objects are refused rather than stored as their Python repr."""
    if raw is None or (isinstance(raw, float) and raw != raw):  # None or NaN cell
        return None
    if isinstance(raw, str):
        return raw
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return str(raw)
    if isinstance(raw, (list, tuple)):
        parts = [_as_text(x, where) for x in raw]
        return " ".join(p for p in parts if p)
    raise DataPrepError(f"{where}: the text value is a {type(raw).__name__}, not text or a list of texts; pick the "
                        f"field that holds the text with --text-column (nested keys are not followed)")


def _text_record(doc_id: str, raw, where: str = "") -> Record:
    value = _as_text(raw, where)
    text = clean_text(value) if value else ""
    return Document(doc_id, text) if text else Skip("empty")


def read_txt(path: Path, max_document_chars: int | None = None, **_unused) -> Iterator[Record]:
    path = Path(path)
    stem = path.stem
    lines: list[str] = []
    chars, too_long = 0, False  # a document past max_document_chars stops collecting and is skipped as TOO_LONG
    n = 0
    try:
        with open(path, encoding="utf-8", errors="strict") as f:
            for line in _lines(f, max_document_chars):
                if line is None or line.strip():
                    chars += len(line) if line is not None else 0
                    too_long = too_long or line is None or (max_document_chars is not None and chars > max_document_chars)
                    if not too_long:
                        lines.append(line)
                    continue
                if lines or too_long:
                    yield Skip(TOO_LONG) if too_long else _text_record(f"{stem}:{n}", " ".join(lines))
                    n += 1
                    lines, chars, too_long = [], 0, False
            if lines or too_long:
                yield Skip(TOO_LONG) if too_long else _text_record(f"{stem}:{n}", " ".join(lines))
    except UnicodeDecodeError as e:
        raise _decode_error(path, e) from e


def _id_key(names, id_column: str | None, need_ids: bool, path: Path) -> str | None:
    """The id column of a table corpus: --id-column (must exist), else 'id' where present. With --exclude-ids an id
    column is required: without one nothing would be excluded, silently."""
    key = id_column or "id"
    if key in names:
        return key
    if id_column is not None or need_ids:
        raise DataPrepError(f"{path}: no id column {key!r} (columns: {list(names)}); name the column holding patient or note ids "
                            "with --id-column (--exclude-ids matches its values)")
    return None


def read_jsonl(path: Path, text_column: str = "text", id_column: str | None = None, need_ids: bool = False,
               max_document_chars: int | None = None, **_unused) -> Iterator[Record]:
    path = Path(path)
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="strict") as f:
            for i, line in enumerate(_lines(f, _json_line_limit(max_document_chars))):
                if line is None:
                    yield Skip(TOO_LONG)
                    continue
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as e:
                    raise DataPrepError(f"{path}:{i + 1}: not valid JSON ({e})") from e
                if not isinstance(obj, dict) or text_column not in obj:
                    raise DataPrepError(f"{path}:{i + 1}: no key {text_column!r}; choose it with --text-column")
                key = _id_key(obj, id_column, need_ids, Path(f"{path}:{i + 1}"))
                yield _text_record(str(obj[key]) if key else f"{path.stem}:{i}", obj[text_column], f"{path}:{i + 1}")
    except UnicodeDecodeError as e:
        raise _decode_error(path, e) from e


def read_csv(path: Path, text_column: str = "text", id_column: str | None = None, need_ids: bool = False,
             **_unused) -> Iterator[Record]:
    path = Path(path)
    csv.field_size_limit(sys.maxsize)  # clinical notes exceed the 128 KB default
    try:
        with open(path, encoding="utf-8", errors="strict", newline="") as f:
            # strict: an unterminated quote is an error at the end of the file, instead of a field that silently
            # swallows every line after it.
            reader = csv.DictReader(f, strict=True)
            start = 1
            try:
                if reader.fieldnames is None or text_column not in reader.fieldnames:
                    raise DataPrepError(f"{path}: no column {text_column!r} (columns: {reader.fieldnames}); "
                                        f"choose it with --text-column")
                key = _id_key(reader.fieldnames, id_column, need_ids, path)
                for i, row in enumerate(reader):
                    yield _text_record((row[key] if key else None) or f"{path.stem}:{i}", row[text_column], f"{path}:{start}")
                    start = reader.line_num + 1
            except csv.Error as e:
                raise DataPrepError(f"{path}: line {start}: malformed CSV ({e}); most likely a quote opened in the "
                                    f"record starting on that line is never closed. Fix the quoting or pass "
                                    f"--skip-bad") from e
    except UnicodeDecodeError as e:
        raise _decode_error(path, e) from e


def read_parquet(path: Path, text_column: str = "text", id_column: str | None = None, need_ids: bool = False,
                 **_unused) -> Iterator[Record]:
    path = Path(path)
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise DataPrepError("reading .parquet needs pyarrow: pip install pyarrow") from e
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own ArrowInvalid for non-parquet bytes
        raise DataPrepError(f"{path}: not a readable parquet file ({e})") from e
    names = pf.schema_arrow.names
    if text_column not in names:
        raise DataPrepError(f"{path}: no column {text_column!r} (columns: {names}); choose it with --text-column")
    key = _id_key(names, id_column, need_ids, path)
    cols = [text_column] + ([key] if key and key != text_column else [])
    i = 0
    for batch in pf.iter_batches(columns=cols, batch_size=4096):  # streamed, never the whole file
        data = batch.to_pydict()
        ids = data.get(key) if key else None
        for j, raw in enumerate(data[text_column]):
            yield _text_record(str(ids[j]) if ids else f"{path.stem}:{i}", raw, f"{path}: row {i}")
            i += 1
