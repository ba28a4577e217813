"""Vocabulary checks and the fast word-cached tokenizer against HF's reference encode_batch."""

from pathlib import Path

import numpy as np
import pytest

from data_prep.config import VocabConfig
from data_prep.manifest import DataPrepError
from data_prep.tokenizer import SPECIAL_TOKENS, WordTokenizer, load_vocab, run_vocab

ASSETS = Path(__file__).parents[1] / "assets" / "pubmed"
VOCAB = ASSETS / "bert-base-uncased-vocab.txt"


def _sentences() -> list[str]:
    from data_prep.corpora import Document
    from data_prep.corpora.pubmed import read_medline_xml
    from data_prep.text import make_splitter
    split = make_splitter("blingfire")
    docs = [r.text for r in read_medline_xml(ASSETS / "pubmed20n0014_sample.xml.gz") if isinstance(r, Document)]
    return [s for d in docs for s in split(d)] + [
        "Ünïcödé café naïve 北京 test—dash “quotes” α-helix ±2 µg/ml", "A_b c~d e|f x^2 {y} @z #1 $5 10%",
        "x" * 150, "C57BL/6J mice (n=12; p<0.05) vs. IL-1β-/-.",
    ]


@pytest.mark.parametrize("lower_case", [True, False])
def test_word_tokenizer_matches_reference(lower_case):
    sents = _sentences()
    wt = WordTokenizer(VOCAB, lower_case)
    ids, lens = wt.encode(sents)
    ref = [e.ids for e in wt.tok.encode_batch(sents, add_special_tokens=False)]
    assert lens.tolist() == [len(r) for r in ref]
    assert np.array_equal(ids, np.concatenate(ref))
    # A second call hits the piece cache and must give the same answer.
    ids2, _ = wt.encode(sents[:50])
    assert np.array_equal(ids2, ids[: lens[:50].sum()])


def test_vocab_without_mask_is_refused(tmp_path):
    bad = tmp_path / "vocab.txt"
    bad.write_text("\n".join(t for t in VOCAB.read_text().splitlines() if t != "[MASK]") + "\n")
    with pytest.raises(DataPrepError, match=r"vocab.txt lacks the special tokens \['\[MASK\]'\]"):
        load_vocab(bad)
    with pytest.raises(DataPrepError, match="does not exist"):
        load_vocab(tmp_path / "missing.txt")


def test_train_vocab_and_adopt_existing(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "pubmed_training_0.txt").write_text("\n".join(_sentences()) + "\n")
    m = run_vocab(VocabConfig(shard_dir=shards, out_dir=tmp_path / "v", vocab_size=600, lower_case=True))
    vocab = load_vocab(tmp_path / "v" / "vocab.txt")
    assert m["vocab_size"] == len(vocab) <= 600 and len(vocab) > 300
    assert all(vocab[t] == i for i, t in enumerate(SPECIAL_TOKENS))
    assert any(t.startswith("##") for t in vocab) and not any(t != t.lower() for t in vocab if t not in SPECIAL_TOKENS)
    m2 = run_vocab(VocabConfig(out_dir=tmp_path / "v2", vocab_file=VOCAB))
    assert (tmp_path / "v2" / "vocab.txt").read_bytes() == VOCAB.read_bytes() and m2["vocab_size"] == 30522


def test_trained_vocab_is_deterministic(tmp_path):
    """Issue 10 #6: HF's trainer numbered '##c' pieces in hash order, so each run gave another vocabulary."""
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "pubmed_training_0.txt").write_text("\n".join(_sentences()) + "\n")
    outs = []
    for i in range(3):
        run_vocab(VocabConfig(shard_dir=shards, out_dir=tmp_path / f"v{i}", vocab_size=700, lower_case=True))
        outs.append(((tmp_path / f"v{i}" / "vocab.txt").read_bytes(), (tmp_path / f"v{i}" / "tokenizer.json").read_bytes()))
    assert outs[0] == outs[1] == outs[2]


def test_vocab_of_only_special_tokens_is_a_clear_error(tmp_path):
    from data_prep.config import Hdf5Config
    from data_prep.create_hdf5 import run_hdf5

    only = tmp_path / "vocab.txt"
    only.write_text("\n".join(SPECIAL_TOKENS + ("[unused0]",)) + "\n")
    with pytest.raises(DataPrepError, match=r"vocab.txt holds only special tokens .*needs word pieces"):
        run_vocab(VocabConfig(out_dir=tmp_path / "v", vocab_file=only))
    with pytest.raises(DataPrepError, match=r"vocab.txt holds only special tokens"):
        run_hdf5(Hdf5Config(shard_dir=tmp_path, vocab_file=only, out_root=tmp_path / "o"))
