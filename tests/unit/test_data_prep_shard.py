"""Shard stage: NVIDIA's format, split by document, balance by sentences, determinism."""

from pathlib import Path

from data_prep.config import FormatConfig, ShardConfig
from data_prep.formatting import run_format
from data_prep.shard import run_shard

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
