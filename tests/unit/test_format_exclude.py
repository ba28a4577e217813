"""Format stage --exclude-ids: listed PMIDs leave the corpus, are counted, and a changed list redoes the stage."""

import json
from pathlib import Path

import pytest

from data_prep.cli import main as data_prep_main
from data_prep.config import FormatConfig
from data_prep.formatting import run_format
from data_prep.manifest import ConfigError, DataPrepError

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
