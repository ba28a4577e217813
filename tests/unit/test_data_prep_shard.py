"""Shard stage: NVIDIA's format, split by document, balance by sentences, determinism."""

import dataclasses
import os
from pathlib import Path

import pytest

from data_prep.config import FormatConfig, ShardConfig
from data_prep.create_hdf5 import find_shards
from data_prep.formatting import run_format
from data_prep.manifest import DataPrepError
from data_prep.shard import run_shard, text_files

pytestmark = pytest.mark.stack_free  # no torch/transformers in what it tests: `make test` runs it, `make test-current` does not

ASSETS = Path(__file__).parents[1] / "assets" / "pubmed"


def _docs(path: Path) -> list[list[str]]:
    blocks = path.read_text(encoding="utf-8").split("\n\n")
    return [b.split("\n") for b in blocks if b.strip()]


def test_shards_format_balance_split_and_determinism(tmp_path):
    s = run_format(FormatConfig(inputs=[ASSETS / "pubmed20n0014_sample.xml.gz"], out_dir=tmp_path / "text"))
    m1 = run_shard(ShardConfig(text_dir=tmp_path / "text", out_dir=tmp_path / "s1", num_shards=3,
                               test_fraction=0.2, processes=1))
    m2 = run_shard(ShardConfig(text_dir=tmp_path / "text", out_dir=tmp_path / "s2", num_shards=3,
                               test_fraction=0.2, processes=2))
    names = sorted(p.name for p in (tmp_path / "s1").glob("*.txt"))
    assert names == ["pubmed_test_0.txt", "pubmed_training_0.txt", "pubmed_training_1.txt", "pubmed_training_2.txt"]
    for n in names:  # identical for any process count
        assert (tmp_path / "s1" / n).read_bytes() == (tmp_path / "s2" / n).read_bytes()
    train = [_docs(tmp_path / "s1" / f"pubmed_training_{i}.txt") for i in range(3)]
    test = _docs(tmp_path / "s1" / "pubmed_test_0.txt")
    n_docs = sum(map(len, train)) + len(test)
    assert n_docs == s["documents"]
    assert 0.08 < len(test) / n_docs < 0.35  # 20% of documents, binomial noise on ~100 docs
    sents = [sum(map(len, t)) for t in train]
    longest_doc = max(len(d) for t in train for d in t)
    assert max(sents) - min(sents) <= longest_doc  # greedy balance bound
    assert sents == [c["sentences"] for c in m1["counts"]["training"]]
    # One sentence per line, a blank line between documents, nothing else.
    raw = (tmp_path / "s1" / "pubmed_training_0.txt").read_text(encoding="utf-8")
    assert raw.endswith("\n\n") and "\n\n\n" not in raw
    assert all(line.strip() for d in train[0] for line in d)
    assert m1["counts"] == m2["counts"]


def test_rerun_is_skipped(tmp_path):
    run_format(FormatConfig(inputs=[ASSETS / "update_sample.xml"], out_dir=tmp_path / "text"))
    cfg = ShardConfig(text_dir=tmp_path / "text", out_dir=tmp_path / "s", num_shards=1, test_fraction=0.0)
    run_shard(cfg)
    t = (tmp_path / "s" / "pubmed_training_0.txt").stat().st_mtime_ns
    run_shard(cfg)
    assert (tmp_path / "s" / "pubmed_training_0.txt").stat().st_mtime_ns == t
    assert not (tmp_path / "s" / "pubmed_test_0.txt").exists()


def test_more_shards_than_documents_writes_no_empty_files(tmp_path):
    run_format(FormatConfig(inputs=[ASSETS / "update_sample.xml"], out_dir=tmp_path / "text"))  # 3 documents
    m = run_shard(ShardConfig(text_dir=tmp_path / "text", out_dir=tmp_path / "s", num_shards=5, test_fraction=0.0))
    files = sorted(p.name for p in (tmp_path / "s").glob("*.txt"))
    assert files == sorted(m["files"]["training"]) and len(files) == 3
    assert all((tmp_path / "s" / f).stat().st_size > 0 for f in files)


def _die_after_first(monkeypatch, suffix: str) -> None:
    """Simulate a kill: the first rename of a ``suffix`` output happens, the next one never does."""
    real, done = os.replace, []

    def replace(src, dst):
        if str(dst).endswith(suffix):
            if done:
                raise KeyboardInterrupt("killed between renames")
            done.append(dst)
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def test_kill_between_shard_renames_leaves_no_finished_looking_folder(tmp_path, monkeypatch):
    run_format(FormatConfig(inputs=[ASSETS / "pubmed20n0014_sample.xml.gz"], out_dir=tmp_path / "text"))
    old = ShardConfig(text_dir=tmp_path / "text", out_dir=tmp_path / "s", num_shards=4, test_fraction=0.2, seed=1)
    new = dataclasses.replace(old, num_shards=2, seed=2)
    run_shard(old)
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        _die_after_first(m, ".txt")
        run_shard(new)
    # The old manifest must not describe a mix of old and new shards.
    assert not (tmp_path / "s" / "manifest.json").exists()
    with pytest.raises(DataPrepError, match="interrupted shard run"):
        find_shards(tmp_path / "s", "pubmed")
    m_new = run_shard(new)
    m_clean = run_shard(dataclasses.replace(new, out_dir=tmp_path / "clean"))
    names = sorted(p.name for p in find_shards(tmp_path / "s", "pubmed"))
    assert names == ["pubmed_test_0.txt", "pubmed_training_0.txt", "pubmed_training_1.txt"]
    assert sorted(p.name for p in (tmp_path / "s").glob("*.txt")) == names  # old shards 2 and 3 are gone
    assert m_new["counts"] == m_clean["counts"]
    for n in names:
        assert (tmp_path / "s" / n).read_bytes() == (tmp_path / "clean" / n).read_bytes()
    # A shard changed after its manifest was written is not trusted either.
    with open(tmp_path / "s" / names[1], "a") as f:
        f.write("Appended later.\n\n")
    with pytest.raises(DataPrepError, match="missing or changed"):
        find_shards(tmp_path / "s", "pubmed")


def test_kill_between_format_renames_is_not_taken_for_finished_text(tmp_path, monkeypatch):
    inputs = [ASSETS / "pubmed20n0014_sample.xml.gz", ASSETS / "update_sample.xml"]
    run_format(FormatConfig(inputs=inputs, out_dir=tmp_path / "text"))
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        _die_after_first(m, ".txt")
        run_format(FormatConfig(inputs=inputs, out_dir=tmp_path / "text", max_documents=50))
    with pytest.raises(DataPrepError, match="format stage did not finish"):
        text_files(tmp_path / "text")
    s = run_format(FormatConfig(inputs=inputs, out_dir=tmp_path / "text", max_documents=50))
    assert s["documents"] == 50 and [f.name for f in text_files(tmp_path / "text")] == s["files"]
