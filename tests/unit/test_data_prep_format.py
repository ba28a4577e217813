"""Format stage: updates replace, DeleteCitation removes, summary counts, resume, --skip-bad."""

import json
from pathlib import Path

import pytest

from data_prep.config import FormatConfig
from data_prep.formatting import run_format
from data_prep.manifest import DataPrepError

pytestmark = pytest.mark.stack_free  # no torch/transformers in what it tests: `make test` runs it, `make test-current` does not

ASSETS = Path(__file__).parents[1] / "assets" / "pubmed"
SAMPLE = ASSETS / "pubmed20n0014_sample.xml.gz"
UPDATE = ASSETS / "update_sample.xml"


def _lines(d: Path, name: str) -> list[str]:
    return (d / name).read_text(encoding="utf-8").splitlines()


def test_update_replaces_and_delete_removes(tmp_path):
    out = tmp_path / "text"
    base_only = run_format(FormatConfig(inputs=[SAMPLE], out_dir=tmp_path / "base"))
    s = run_format(FormatConfig(inputs=[SAMPLE, UPDATE], out_dir=out, processes=2))
    base, upd = _lines(out, "pubmed20n0014_sample.txt"), _lines(out, "update_sample.txt")
    assert s["files"] == ["pubmed20n0014_sample.txt", "update_sample.txt"]
    # Two PMIDs revised by the update, one deleted: three fewer in the baseline file, the update has 3.
    assert len(base) == base_only["documents"] - 3
    assert len(upd) == 3 and sum(line.count("REVISED: ") for line in upd) == 2
    assert not any("REVISED" in line for line in base)
    assert s["superseded_by_update"] == 2 and s["deleted_by_delete_citation"] == 1
    assert s["skipped"]["no_abstract"] > 50
    assert s["documents"] == len(base) + len(upd)
    assert json.loads((out / "manifest.json").read_text())["documents"] == s["documents"]


def test_resume_skips_and_max_documents(tmp_path, caplog):
    full = run_format(FormatConfig(inputs=[SAMPLE, UPDATE], out_dir=tmp_path / "full"))
    cfg = FormatConfig(inputs=[SAMPLE, UPDATE], out_dir=tmp_path / "t", max_documents=10)
    s1 = run_format(cfg)
    # The cap applies after updates and DeleteCitation (at the end of the update file) are resolved:
    # the first ten of the full result, not the first ten read from each file.
    first10 = [line for f in full["files"] for line in _lines(tmp_path / "full", f)][:10]
    assert s1["documents"] == 10 and [line for f in s1["files"] for line in _lines(tmp_path / "t", f)] == first10
    assert s1["deleted_by_delete_citation"] == 1 and s1["superseded_by_update"] == 2
    mtime = (tmp_path / "t" / "pubmed20n0014_sample.txt").stat().st_mtime_ns
    caplog.set_level("INFO")
    s2 = run_format(cfg)
    assert "skipping" in caplog.text and s2["documents"] == 10
    assert (tmp_path / "t" / "pubmed20n0014_sample.txt").stat().st_mtime_ns == mtime
    assert not list((tmp_path / "t").rglob(".*tmp*"))


def test_bad_inputs_error_or_listed_with_skip_bad(tmp_path):
    trunc = tmp_path / "pubmed99n0002.xml.gz"
    trunc.write_bytes(SAMPLE.read_bytes()[:20000])
    empty = tmp_path / "pubmed99n0003.xml"
    empty.write_text("<?xml version='1.0'?><PubmedArticleSet></PubmedArticleSet>")
    with pytest.raises(DataPrepError, match="pubmed99n0002.xml.gz"):
        run_format(FormatConfig(inputs=[SAMPLE, trunc], out_dir=tmp_path / "a"))
    with pytest.raises(DataPrepError, match="pubmed99n0003.xml: empty input"):
        run_format(FormatConfig(inputs=[empty], out_dir=tmp_path / "b"))
    s = run_format(FormatConfig(inputs=[SAMPLE, trunc, empty], out_dir=tmp_path / "c", skip_bad=True))
    assert sorted(Path(b["path"]).name for b in s["bad_inputs"]) == ["pubmed99n0002.xml.gz", "pubmed99n0003.xml"]
    assert s["files"] == ["pubmed20n0014_sample.txt"]


def test_missing_input_is_a_clear_error(tmp_path):
    with pytest.raises(DataPrepError, match="no such file"):
        run_format(FormatConfig(inputs=[tmp_path / "nope.xml.gz"], out_dir=tmp_path / "t"))
