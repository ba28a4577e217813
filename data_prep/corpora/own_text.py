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


def _csv_field_limit(max_document_chars: int | None) -> int:
    """The longest CSV field read, in characters: the document limit plus room for whitespace cleaning removes."""
    return sys.maxsize if max_document_chars is None else 2 * max_document_chars + (1 << 20)


def read_csv(path: Path, text_column: str = "text", id_column: str | None = None, need_ids: bool = False,
             max_document_chars: int | None = None, **_unused) -> Iterator[Record]:
    """Rows of a CSV file with a header. Memory follows --max-document-chars: a field (or a physical line) longer
    than ``_csv_field_limit`` is refused, naming the line, instead of read whole. It cannot be skipped: past that
    point the csv module would resume mid-field and turn the rest of an oversized quoted note into rows."""
    path = Path(path)
    limit = _csv_field_limit(max_document_chars)
    csv.field_size_limit(limit)  # module-wide; each reader sets its own before reading
    too_long = (f"a field longer than {limit:,} characters (twice --max-document-chars {max_document_chars} plus "
                f"1 MiB), so it is refused rather than read into memory; raise --max-document-chars, split that "
                f"note, or pass --skip-bad to leave this file out")
    try:
        with open(path, encoding="utf-8", errors="strict", newline="") as f:
            physical = 0

            def lines():
                nonlocal physical
                for line in _lines(f, None if max_document_chars is None else limit):
                    physical += 1
                    if line is None:
                        raise DataPrepError(f"{path}: line {physical}: {too_long}")
                    yield line

            # strict: an unterminated quote is an error at the end of the file, instead of a field that silently
            # swallows every line after it.
            reader = csv.DictReader(lines(), strict=True)
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
                if "field larger than field limit" in str(e):
                    raise DataPrepError(f"{path}: line {start}: {too_long}") from None
                raise DataPrepError(f"{path}: line {start}: malformed CSV ({e}); most likely a quote opened in the "
                                    f"record starting on that line is never closed. Fix the quoting or pass "
                                    f"--skip-bad") from e
    except UnicodeDecodeError as e:
        raise _decode_error(path, e) from e


def read_parquet(path: Path, text_column: str = "text", id_column: str | None = None, need_ids: bool = False,
                 max_document_chars: int | None = None, **_unused) -> Iterator[Record]:
    """Rows of a parquet file, streamed in record batches. A text over --max-document-chars is skipped as TOO_LONG
    before it becomes a Python string; the unit pyarrow decodes (a page of the column) is the writer's choice, the
    only part of memory that follows the file rather than the settings."""
    path = Path(path)
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
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
    for batch in pf.iter_batches(columns=cols, batch_size=1024):  # streamed, never the whole file
        texts = batch.column(text_column)
        over = [False] * len(texts)
        if max_document_chars is not None and (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
            mask = pc.fill_null(pc.greater(pc.utf8_length(texts), max_document_chars), False)
            over = mask.to_pylist()
            texts = pc.if_else(mask, pa.scalar(None, texts.type), texts)
        ids = batch.column(key).to_pylist() if key else None
        for j, raw in enumerate(texts.to_pylist()):
            yield Skip(TOO_LONG) if over[j] else _text_record(str(ids[j]) if ids else f"{path.stem}:{i}", raw,
                                                              f"{path}: row {i}")
            i += 1
