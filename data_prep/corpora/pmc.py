"""PubMed Central open-access full text (JATS ``.nxml``) -> one document per article: title, abstract, body.

Reads single ``.nxml`` files and the ``.tar.gz`` bundles that ``download --dataset pmc-oa`` fetches,
member by member straight from the archive (nothing is extracted, so nothing can be written anywhere;
an archive holding links, absolute paths or ``..`` is still refused: a genuine PMC bundle has none).
The text is taken with lxml rather than ``pubmed_parser.parse_pubmed_xml``, which needs a path (not
an archive member), parses each file twice, and raises ``KeyError: 'year'`` on articles without a
publication date; the date is of no use to pretraining text anyway.
"""

from __future__ import annotations

import logging
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Iterator

from lxml import etree

from ..manifest import DataPrepError
from ..text import clean_text
from . import TOO_LONG, Document, Record, Skip

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def xml_byte_limit(max_document_chars: int | None) -> int | None:
    """An article file larger than this is skipped as TOO_LONG unread: JATS markup (tables, MathML, references)
    runs to a few bytes per character of text, so its text would be over --max-document-chars, and reading it
    whole (lxml parses a tree) would make memory follow the input."""
    return None if max_document_chars is None else 16 * max_document_chars + (16 << 20)


def read_pmc_nxml(path: Path, include_title: bool = True, skip_bad: bool = False, max_document_chars: int | None = None,
                  **_unused) -> Iterator[Record]:
    """One record per article of a ``.nxml`` file or of a PMC OA ``.tar.gz`` bundle."""
    path = Path(path)
    limit = xml_byte_limit(max_document_chars)
    if path.name.endswith(ARCHIVE_SUFFIXES):
        yield from _read_archive(path, include_title, skip_bad, limit)
        return
    try:
        if limit is not None and path.stat().st_size > limit:
            yield Skip(TOO_LONG)
            return
        data = path.read_bytes()
    except OSError as e:
        raise DataPrepError(f"{path}: cannot read ({e})") from e
    yield article_record(data, str(path), path.stem, include_title)


def _unsafe(member: tarfile.TarInfo) -> str | None:
    """Why a member could write outside an extraction folder (or is not a plain file), or None."""
    name = member.name
    if member.issym() or member.islnk():
        return f"is a link (to {member.linkname!r})"
    if name.startswith(("/", "\\")) or PurePosixPath(name).is_absolute() or (len(name) > 1 and name[1] == ":"):
        return "has an absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "climbs out of the archive with '..'"
    if not (member.isfile() or member.isdir()):
        return "is a device or pipe"
    return None


def _read_archive(path: Path, include_title: bool, skip_bad: bool, limit: int | None) -> Iterator[Record]:
    try:
        with tarfile.open(path, "r|*") as tar:  # streamed: one member in memory at a time
            for member in tar:
                why = _unsafe(member)
                if why:
                    raise DataPrepError(f"{path}: member {member.name!r} {why}; a PMC OA bundle has none, so this "
                                        f"archive is refused (nothing was extracted); pass --skip-bad to go on without it")
                if not member.isfile() or not member.name.endswith((".nxml", ".xml")):
                    continue
                if limit is not None and member.size > limit:  # the stream reads past its bytes, never holds them
                    yield Skip(TOO_LONG)
                    continue
                fh = tar.extractfile(member)
                data = fh.read() if fh is not None else b""
                where = f"{path}:{member.name}"
                try:
                    yield article_record(data, where, PurePosixPath(member.name).stem, include_title)
                except DataPrepError as e:
                    if not skip_bad:
                        raise
                    log.warning("skipping bad article: %s", e)
                    yield Skip("bad_article")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataPrepError(f"{path}: truncated or not a tar.gz archive ({e}); download it again "
                            f"(`python -m data_prep download --dataset pmc-oa` resumes) or pass --skip-bad") from e


def _local(tag) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _text(elem) -> str:
    """All text inside, inline markup (<italic>, <sub>, MathML) flattened in place: H<sub>2</sub>O -> H2O."""
    return clean_text("".join(elem.itertext())) if elem is not None else ""


def _blocks(elem) -> str:
    """A structured abstract's section titles and paragraphs, one space between blocks."""
    blocks = [b for b in elem.iter("title", "p") if not any(a.tag == "p" for a in b.iterancestors())]
    return " ".join(filter(None, map(_text, blocks))) if blocks else _text(elem)


def article_record(data: bytes, where: str, fallback_id: str, include_title: bool = True) -> Record:
    """One JATS article (bytes) -> Document, or Skip when it holds no text. Malformed XML is a DataPrepError."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=True)
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as e:
        raise DataPrepError(f"{where}: not well-formed JATS XML ({e}); pass --skip-bad to continue without it") from e
    if root is None:
        raise DataPrepError(f"{where}: empty XML document; pass --skip-bad to continue without it")
    for el in root.iter():
        if isinstance(el.tag, str) and "}" in el.tag:
            el.tag = _local(el.tag)  # JATS from some publishers carries a default namespace
    parts = []
    if include_title:
        title = root.find(".//title-group/article-title")
        subtitle = root.find(".//title-group/subtitle")
        parts.append(" ".join(t for t in (_text(title), _text(subtitle)) if t))
    parts.extend(_blocks(a) for a in root.iterfind(".//abstract"))
    body = root.find(".//body")
    if body is not None:
        # Outermost paragraphs only: a <p> inside a list inside a <p> is already part of its parent's text.
        parts.extend(_text(p) for p in body.iter("p") if not any(a.tag == "p" for a in p.iterancestors()))
    parts = [p for p in parts if p]
    if not parts:
        return Skip("no_text")
    meta = root.find(".//article-meta")
    ids = {}
    if meta is not None:
        for aid in meta.iterfind("article-id"):
            ids.setdefault(aid.get("pub-id-type"), (aid.text or "").strip())
    if ids.get("pmc"):
        doc_id = ids["pmc"] if ids["pmc"].startswith("PMC") else f"PMC{ids['pmc']}"
    else:
        doc_id = ids.get("pmid") or fallback_id
    return Document(doc_id, " ".join(parts))
