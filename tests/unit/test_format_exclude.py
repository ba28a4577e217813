"""Format stage --exclude-ids: listed PMIDs leave the corpus, are counted, and a changed list redoes the stage."""

import json
from pathlib import Path

import pytest

from data_prep.cli import main as data_prep_main
from data_prep.config import FormatConfig
from data_prep.formatting import run_format
from data_prep.manifest import ConfigError, DataPrepError

pytestmark = pytest.mark.stack_free  # no torch/transformers in what it tests: `make test` runs it, `make test-current` does not

ASSETS = Path(__file__).parents[1] / "assets" / "pubmed"
SAMPLE = ASSETS / "pubmed20n0014_sample.xml.gz"


def _ids(out: Path) -> list[str]:
    parsed = sorted((out / "parsed").glob("*.ids"))
    return [line for p in parsed for line in p.read_text(encoding="utf-8").splitlines()]


def _docs(out: Path, summary: dict) -> list[str]:
    return [line for f in summary["files"] for line in (out / f).read_text(encoding="utf-8").splitlines()]


def test_excluded_pmids_leave_the_corpus_and_are_counted(tmp_path):
    full = run_format(FormatConfig(inputs=[SAMPLE], out_dir=tmp_path / "full"))
    ids = _ids(tmp_path / "full")
    drop = ids[1:6]
    listing = tmp_path / "test_pmids.txt"
    listing.write_text("# held-out PMIDs\n" + "\n".join(drop) + "\n\n99999999\n")  # a PMID not in the corpus is harmless
    out = tmp_path / "ex"
    s = run_format(FormatConfig(inputs=[SAMPLE], out_dir=out, exclude_ids=listing))
    assert s["documents"] == full["documents"] - len(drop)
    assert s["skipped"]["excluded_pmid"] == len(drop)
    assert not set(drop) & set(_ids(out))
    kept = _docs(out, s)
    all_docs = _docs(tmp_path / "full", full)
    assert kept == [d for i, d in zip(ids, all_docs) if i not in drop]  # order and the rest untouched
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped"]["excluded_pmid"] == len(drop) and len(manifest["exclude_ids"]) == 64


def test_changed_list_invalidates_resume_and_same_list_resumes(tmp_path, caplog):
    listing = tmp_path / "ids.txt"
    first = run_format(FormatConfig(inputs=[SAMPLE], out_dir=tmp_path / "probe"))
    ids = _ids(tmp_path / "probe")
    listing.write_text("\n".join(ids[:3]) + "\n")
    out = tmp_path / "t"
    cfg = FormatConfig(inputs=[SAMPLE], out_dir=out, exclude_ids=listing)
    s1 = run_format(cfg)
    assert s1["documents"] == first["documents"] - 3
    # Same PMIDs in another order and with a comment: same fingerprint, the finished stage is skipped.
    listing.write_text("# reordered\n" + "\n".join(reversed(ids[:3])) + "\n")
    caplog.set_level("INFO")
    s2 = run_format(cfg)
    assert "skipping" in caplog.text and s2["documents"] == s1["documents"]
    # One more PMID: the parse and the resolve step run again.
    listing.write_text("\n".join(ids[:4]) + "\n")
    s3 = run_format(cfg)
    assert s3["documents"] == first["documents"] - 4 and s3["skipped"]["excluded_pmid"] == 4
    assert ids[3] not in _ids(out)
    # Without the list: everything is back.
    s4 = run_format(FormatConfig(inputs=[SAMPLE], out_dir=out))
    assert s4["documents"] == first["documents"] and "excluded_pmid" not in s4["skipped"]


def test_bad_lists_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        FormatConfig(inputs=[SAMPLE], out_dir=tmp_path / "a", exclude_ids=tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("12345\nnot-a-pmid\n")
    with pytest.raises(DataPrepError, match="not PMIDs"):
        run_format(FormatConfig(inputs=[SAMPLE], out_dir=tmp_path / "b", exclude_ids=bad))


def test_cli_flag_reaches_the_format_stage(tmp_path):
    run_format(FormatConfig(inputs=[SAMPLE], out_dir=tmp_path / "probe"))
    ids = _ids(tmp_path / "probe")
    listing = tmp_path / "ids.txt"
    listing.write_text("\n".join(ids[:2]) + "\n")
    out = tmp_path / "text"
    assert data_prep_main(["format", "--corpus", "pubmed", "--input", str(SAMPLE), "--out-dir", str(out),
                           "--exclude-ids", str(listing)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped"]["excluded_pmid"] == 2


NOTES = [("N-001", "P7", "Patient admitted with chest pain, troponin negative, discharged home on aspirin."),
         ("N-002", "P8", "Follow-up visit for type 2 diabetes, metformin dose increased after review."),
         ("N-003", "P9", "Readmitted with heart failure exacerbation, diuresed with intravenous furosemide.")]


def _write_notes(tmp_path: Path, kind: str) -> Path:
    import csv

    rows = [{"note_id": n, "patient": p, "body": t} for n, p, t in NOTES]
    path = tmp_path / f"notes.{kind}"
    if kind == "csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    elif kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        pq = pytest.importorskip("pyarrow.parquet")
        import pyarrow as pa

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_id_column_keeps_held_out_notes_out_of_a_table_corpus(tmp_path, kind):
    notes = _write_notes(tmp_path, kind)
    held_out = tmp_path / "held_out_notes.txt"
    held_out.write_text("N-002\n", encoding="utf-8")  # clinical ids need not be digits
    s = run_format(FormatConfig(corpus=kind, inputs=[notes], out_dir=tmp_path / "out", text_column="body", id_column="note_id",
                                exclude_ids=held_out))
    assert s["documents"] == 2 and s["skipped"]["excluded_pmid"] == 1
    assert _ids(tmp_path / "out") == ["N-001", "N-003"]
    assert "metformin" not in " ".join(_docs(tmp_path / "out", s))


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_exclude_ids_without_an_id_column_is_refused_not_silently_ignored(tmp_path, kind):
    notes = _write_notes(tmp_path, kind)
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("N-002\n", encoding="utf-8")
    with pytest.raises(DataPrepError, match="no id column 'id'.*--id-column"):
        run_format(FormatConfig(corpus=kind, inputs=[notes], out_dir=tmp_path / "out", text_column="body", exclude_ids=held_out))
    with pytest.raises(DataPrepError, match="no id column 'mrn'"):
        run_format(FormatConfig(corpus=kind, inputs=[notes], out_dir=tmp_path / "o2", text_column="body", id_column="mrn"))
