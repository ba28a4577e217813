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


def test_identifier_pieces_can_be_left_out_of_a_clinical_vocab(tmp_path):
    """Record numbers repeated across notes become vocabulary pieces (min_frequency counts them); the option
    drops digit-heavy pieces, so they tokenize digit by digit and the vocab file carries none of them."""
    from data_prep.tokenizer import WordTokenizer, looks_like_identifier

    assert looks_like_identifier("4471203") and looks_like_identifier("##5512") and looks_like_identifier("mrn123456")
    assert not looks_like_identifier("7") and not looks_like_identifier("##12") and not looks_like_identifier("covid19")
    notes = [f"patient mrn {4471203 + i % 3} seen on 2024-03-{10 + i % 3} for chest pain and shortness of breath" for i in range(60)]
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "notes_training_0.txt").write_text("\n".join(notes + _sentences()) + "\n")
    run_vocab(VocabConfig(shard_dir=shards, out_dir=tmp_path / "v", vocab_size=700))
    kept = load_vocab(tmp_path / "v" / "vocab.txt")
    assert any(looks_like_identifier(t) for t in kept)  # without the option the record numbers are pieces
    m = run_vocab(VocabConfig(shard_dir=shards, out_dir=tmp_path / "clean", vocab_size=700, drop_identifier_pieces=True))
    clean = load_vocab(tmp_path / "clean" / "vocab.txt")
    assert m["params"]["drop_identifier_pieces"] and not any(looks_like_identifier(t) for t in clean)
    ids, _ = WordTokenizer(tmp_path / "clean" / "vocab.txt", True).encode(["mrn 4471203"])
    assert clean["[UNK]"] not in ids.tolist() and len(ids) > 2  # no [UNK]: the number is spelled out in smaller pieces
    with pytest.raises(DataPrepError, match="--drop-identifier-pieces works on WordPiece"):
        VocabConfig(tokenizer_type="bpe", drop_identifier_pieces=True)
