"""The chemical entity tagging task (`python -m data_prep.downstream --task chemicals`): each abstract's ChemicalList
names found verbatim in its title/abstract become silver CHEMICAL spans; built on real PubMed rows."""

import gzip
import json
from pathlib import Path

import pytest
from lxml import etree

from data_prep.downstream import CHEMICAL_TAGS, DownstreamConfig, build_task, main, read_pmids, split_of, tag_chemicals

pytestmark = pytest.mark.stack_free  # no torch/transformers in what it tests: `make test` runs it, `make test-current` does not

ASSET = Path(__file__).resolve().parents[1] / "assets" / "pubmed" / "pubmed20n0014_sample.xml.gz"


def listed_names() -> dict[str, list[str]]:
    """PMID -> NameOfSubstance values, read independently of the task's code."""
    root = etree.parse(gzip.open(ASSET)).getroot()
    return {a.findtext("MedlineCitation/PMID"): [n.text for n in a.iterfind("MedlineCitation/ChemicalList/Chemical/NameOfSubstance")]
            for a in root.iterfind("PubmedArticle")}


def spans(tokens, tags):
    """(start, end) word spans of the IOB2 entities."""
    out, start = [], None
    for i, tag in enumerate(tags + ["O"]):
        if start is not None and tag != "I-CHEMICAL":
            out.append((start, i))
            start = None
        if tag == "B-CHEMICAL":
            start = i
    return out


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    out = tmp_path_factory.mktemp("chem")
    manifest = build_task(DownstreamConfig(task="chemicals", inputs=[str(ASSET)], out_dir=out, dev_fraction=0.2, test_fraction=0.2))
    rows = {s: [json.loads(line) for line in (out / f"{s}.jsonl").read_text().splitlines()] for s in ("train", "dev", "test")}
    return out, manifest, rows


def test_real_rows_tag_listed_names_verbatim(task):
    out, manifest, rows = task
    names = listed_names()
    with_list = {p for p, n in names.items() if n}
    assert manifest["chemical_list"]["citations_read"] == len(names)
    assert manifest["chemical_list"]["with_chemical_list"] == len(with_list)
    assert 0 < manifest["chemical_list"]["names_found_verbatim"] < manifest["chemical_list"]["names_listed"]
    assert manifest["labels"] == list(CHEMICAL_TAGS) and manifest["tokens_column"] == "tokens"
    checked = 0
    for split, split_rows in rows.items():
        assert len(split_rows) == manifest["abstracts"][split]
        assert sum(r["tags"].count("B-CHEMICAL") for r in split_rows) == manifest["mentions"][split]
        for r in split_rows:
            assert r["pmid"] in with_list and len(r["tokens"]) == len(r["tags"])
            assert set(r["tags"]) <= set(CHEMICAL_TAGS)
            wanted = {tuple(w.lower() for w in tag_chemicals(name, [])[0]) for name in names[r["pmid"]]}
            found = spans(r["tokens"], r["tags"])
            assert found, r["pmid"]  # --min-mentions 1: every kept abstract has a mention
            for s, e in found:  # every span is a listed name, word for word, ignoring case
                assert tuple(w.lower() for w in r["tokens"][s:e]) in wanted
                checked += 1
    assert checked == sum(manifest["mentions"].values()) > 50


def test_split_by_pmid_like_the_sentence_role_task(task):
    out, manifest, rows = task
    cfg = manifest["config"]
    seen = set()
    for split, split_rows in rows.items():
        pmids = read_pmids(out / f"{split}_pmids.txt")
        assert pmids == {r["pmid"] for r in split_rows} and not pmids & seen
        seen |= pmids
        assert all(split_of(p, cfg["seed"], cfg["dev_fraction"], cfg["test_fraction"]) == split for p in pmids)
    assert manifest["test_pmids_file"] == "test_pmids.txt" and all(manifest["abstracts"].values())


def test_tagging_longest_first_word_boundaries_and_case():
    text = "Sodium chloride and sodium were given; Ca(2+)rose in the Asodium arm. NaCl-treated rats."
    words, tags, found = tag_chemicals(text, ["Sodium", "Sodium Chloride", "Ca(2+)", "NaCl", "Potassium"])
    tagged = {(w, t) for w, t in zip(words, tags) if t != "O"}
    assert found == 4  # Potassium does not occur
    assert tagged == {("Sodium", "B-CHEMICAL"), ("chloride", "I-CHEMICAL"), ("sodium", "B-CHEMICAL"), ("Ca", "B-CHEMICAL"),
                      ("(", "I-CHEMICAL"), ("2", "I-CHEMICAL"), ("+", "I-CHEMICAL"), (")", "I-CHEMICAL"), ("NaCl", "B-CHEMICAL")}
    assert "Asodium" in words and tags[words.index("Asodium")] == "O"  # not inside a longer word
    assert words[:4] == ["Sodium", "chloride", "and", "sodium"] and tags[:4] == ["B-CHEMICAL", "I-CHEMICAL", "O", "B-CHEMICAL"]


def chem_article(pmid, names, abstract="Aspirin and heparin were compared."):
    chems = "".join(f"<Chemical><RegistryNumber>0</RegistryNumber><NameOfSubstance UI=\"D{i}\">{n}</NameOfSubstance></Chemical>"
                    for i, n in enumerate(names))
    return (f"<PubmedArticle><MedlineCitation><PMID Version=\"1\">{pmid}</PMID><Article><ArticleTitle>Title {pmid}.</ArticleTitle>"
            f"<Abstract><AbstractText>{abstract}</AbstractText></Abstract></Article>"
            + (f"<ChemicalList>{chems}</ChemicalList>" if names else "") + "</MedlineCitation></PubmedArticle>")


def test_deletions_exclusions_min_mentions_and_cli(tmp_path, capsys):
    xml = ('<?xml version="1.0"?><PubmedArticleSet>' + chem_article(1, ["Aspirin"]) + chem_article(2, ["Heparin", "Warfarin"])
           + chem_article(3, ["Insulin"]) + chem_article(4, []) + chem_article(5, ["Aspirin"])
           + "<DeleteCitation><PMID>5</PMID></DeleteCitation></PubmedArticleSet>")
    (tmp_path / "a.xml").write_text(xml)
    (tmp_path / "ex.txt").write_text("2\n")
    rc = main(["--task", "chemicals", "--inputs", str(tmp_path / "a.xml"), "--out-dir", str(tmp_path / "out"), "--dev-fraction", "0",
               "--test-fraction", "0", "--exclude-pmids", str(tmp_path / "ex.txt")])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    rows = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert [r["pmid"] for r in rows] == ["1"]  # 2 excluded, 3: Insulin not in the text, 4: no ChemicalList, 5: deleted
    assert rows[0]["tags"][rows[0]["tokens"].index("Aspirin")] == "B-CHEMICAL"
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["skipped"] == {"deleted_by_delete_citation": 1, "excluded_pmid": 1, "fewer_names_found_than_min_mentions": 1}
    assert printed["chemical_list"]["with_chemical_list"] == 4 and printed["mentions"] == {"train": 1, "dev": 0, "test": 0}
    build_task(DownstreamConfig(task="chemicals", inputs=[str(tmp_path / "a.xml")], out_dir=tmp_path / "all", dev_fraction=0,
                                test_fraction=0, min_mentions=0))
    kept = [json.loads(line)["pmid"] for line in (tmp_path / "all" / "train.jsonl").read_text().splitlines()]
    assert kept == ["1", "2", "3"]  # 3 is kept all O
    assert main(["--task", "chemicals", "--inputs", str(tmp_path / "missing.xml"), "--out-dir", str(tmp_path / "x")]) == 2
