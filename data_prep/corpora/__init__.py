"""Corpus readers. Each reader is a generator over one input file that yields

- ``Document(id, text)`` for a record to keep,
- ``Skip(reason)`` for a record it dropped (counted in the format summary),
- ``Deletion(id)`` for a record a later file withdraws (PubMed ``DeleteCitation``).

Readers raise ``DataPrepError`` naming the file for input they cannot read. A reader given ``max_document_chars``
stops collecting a document's text past that size where its format allows (PubMed abstracts, .txt, .jsonl lines)
and yields ``Skip(TOO_LONG)``, so memory follows the setting rather than the input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Union


TOO_LONG = "over_max_document_chars"
"""The skip reason of a document longer than --max-document-chars (a count in text/manifest.json)."""
MAX_DOCUMENT_CHARS = 1_000_000
"""--max-document-chars' default, also the cap on one abstract in data_prep.downstream: far above any real abstract or
clinical note (a long discharge summary is ~50,000 characters), far below what would strain a worker's memory."""


@dataclass(frozen=True)
class Document:
    id: str
    text: str


@dataclass(frozen=True)
class Skip:
    reason: str


@dataclass(frozen=True)
class Deletion:
    id: str


Record = Union[Document, Skip, Deletion]
Reader = Callable[..., Iterator[Record]]

# File suffixes each corpus kind reads when given a folder.
SUFFIXES: dict[str, tuple[str, ...]] = {
    "pubmed": (".xml.gz", ".xml"),
    "pmc": (".nxml", ".xml", ".tar.gz", ".tgz"),  # single articles, or PMC OA bundles as downloaded
    "wikipedia": (".xml.bz2", ".xml"),
    "text": (".txt",),
    "jsonl": (".jsonl", ".jsonl.gz"),
    "csv": (".csv",),
    "parquet": (".parquet",),
}


def get_reader(corpus: str) -> Reader:
    """The reader generator for a corpus kind (imported lazily so unused readers cost nothing)."""
    if corpus == "pubmed":
        from .pubmed import read_medline_xml
        return read_medline_xml
    if corpus == "pmc":
        from .pmc import read_pmc_nxml
        return read_pmc_nxml
    if corpus == "wikipedia":
        from .wikipedia import read_wikipedia_dump
        return read_wikipedia_dump
    from . import own_text
    return {"text": own_text.read_txt, "jsonl": own_text.read_jsonl, "csv": own_text.read_csv,
            "parquet": own_text.read_parquet}[corpus]


def input_stem(path: Path) -> str:
    """File name without the corpus suffixes: ``pubmed20n0014.xml.gz`` -> ``pubmed20n0014``."""
    name = Path(path).name
    for suf in (".gz", ".bz2", ".tgz", ".tar", ".xml", ".nxml", ".jsonl", ".txt", ".csv", ".parquet"):
        if name.endswith(suf):
            name = name[: -len(suf)]
    return name
