"""PubMed Central open-access full text (``.nxml``, JATS) -> one document per article.

Uses ``pubmed_parser``'s JATS readers (title, abstract, body paragraphs), the library the issue names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ..manifest import DataPrepError
from ..text import clean_text
from . import Document, Record, Skip


def read_pmc_nxml(path: Path, include_title: bool = True, **_unused) -> Iterator[Record]:
    import pubmed_parser as pp
    from lxml import etree

    path = Path(path)
    try:
        meta = pp.parse_pubmed_xml(str(path))
        paragraphs = pp.parse_pubmed_paragraph(str(path), all_paragraph=True)
    except (etree.XMLSyntaxError, OSError, UnicodeDecodeError) as e:
        raise DataPrepError(f"{path}: unreadable PMC .nxml ({e}); pass --skip-bad to continue without it") from e
    if not meta:
        yield Skip("unparseable")
        return
    parts = []
    if include_title and meta.get("full_title"):
        parts.append(clean_text(meta["full_title"]))
    if meta.get("abstract"):
        parts.append(clean_text(meta["abstract"]))
    parts.extend(clean_text(p.get("text", "")) for p in paragraphs or [])
    parts = [p for p in parts if p]
    if not parts:
        yield Skip("no_text")
        return
    doc_id = meta.get("pmc") or meta.get("pmid") or path.stem
    yield Document(f"PMC{doc_id}" if str(doc_id).isdigit() else str(doc_id), " ".join(parts))
