"""BERT's instance algorithm: truncation, pairing, masking statistics, whole-word masking, determinism."""

import random
from pathlib import Path

import numpy as np
import pytest

from data_prep.corpora import Document
from data_prep.corpora.pubmed import read_medline_xml
from data_prep.create_hdf5 import _vocab_arrays
from data_prep.instances import MaskingConfig, Plan, build_instances, document_stream, plan_instances, truncate_pairs
from data_prep.text import make_splitter
from data_prep.tokenizer import WordTokenizer, load_vocab

pytestmark = pytest.mark.stack_free  # no torch/transformers in what it tests: `make test` runs it, `make test-current` does not

ASSETS = Path(__file__).parents[1] / "assets" / "pubmed"
VOCAB = ASSETS / "bert-base-uncased-vocab.txt"


@pytest.fixture(scope="module")
def chunk():
    split = make_splitter("blingfire")
    docs = [split(r.text) for r in read_medline_xml(ASSETS / "pubmed20n0014_sample.xml.gz") if isinstance(r, Document)]
    tokens, sent_lens = WordTokenizer(VOCAB, True).encode([s for d in docs for s in d])
    special, is_subword, replace = _vocab_arrays(load_vocab(VOCAB))
    return tokens, sent_lens, np.array([len(d) for d in docs]), special, is_subword, replace


def _reference_truncate(la, lb, max_num_tokens, rng):
    """Google's truncate_seq_pair on index ranges."""
    a, b = list(range(la)), list(range(lb))
    while len(a) + len(b) > max_num_tokens:
        t = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del t[0]
        else:
            t.pop()
    return len(a), len(b)


def test_truncation_matches_reference_lengths():
    rng = random.Random(0)
    la = np.array([rng.randint(1, 300) for _ in range(3000)])
    lb = np.array([rng.randint(1, 300) for _ in range(3000)])
    plan = Plan(np.zeros_like(la), la, np.full_like(lb, 1000), lb, np.zeros(len(la), np.int8))
    out = truncate_pairs(plan, 125, np.random.default_rng(0))
    ref = np.array([_reference_truncate(a, b, 125, rng) for a, b in zip(la, lb)])
    assert np.array_equal(out.a_len, ref[:, 0]) and np.array_equal(out.b_len, ref[:, 1])
    # The kept range lies inside the original one.
    assert (out.a_start >= 0).all() and (out.a_start + out.a_len <= la).all()
    assert (out.b_start >= 1000).all() and (out.b_start + out.b_len <= 1000 + lb).all()


def test_plan_pairs_are_contiguous_or_from_another_document(chunk):
    tokens, sent_lens, doc_sents, *_ = chunk
    plan = plan_instances(sent_lens, doc_sents, 128, 0.1, 3, random.Random(1))
    doc_of_token = np.repeat(np.repeat(np.arange(len(doc_sents)), doc_sents), sent_lens)
    assert (plan.a_len >= 1).all() and (plan.b_len >= 1).all()
    a_doc = doc_of_token[plan.a_start]
    b_doc = doc_of_token[plan.b_start]
    actual = plan.is_random_next == 0
    assert np.array_equal(plan.b_start[actual], (plan.a_start + plan.a_len)[actual])  # B follows A
    assert (a_doc[actual] == b_doc[actual]).all()
    assert (a_doc[~actual] != b_doc[~actual]).mean() > 0.99
    # Every segment stays inside one document.
    assert (doc_of_token[plan.a_start + plan.a_len - 1] == a_doc).all()
    assert (doc_of_token[plan.b_start + plan.b_len - 1] == b_doc).all()


def _build(chunk, seed, **kw):
    tokens, sent_lens, doc_sents, special, is_subword, replace = chunk
    cfg = MaskingConfig(max_seq_length=kw.get("L", 128), max_predictions_per_seq=kw.get("P", 20),
                        whole_word_mask=kw.get("wwm", False))
    batches = list(build_instances(tokens, sent_lens, doc_sents, cfg, kw.get("dupe", 5), special, replace,
                                   np.random.default_rng(seed), is_subword, batch=1000,
                                   objective=kw.get("objective", "nsp")))
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _unmasked(out, special):
    """Undo the masking using the labels, to compare input tokens with targets."""
    ids = out["input_ids"].copy()
    r, c = np.nonzero(out["masked_lm_positions"] > 0)
    ids[r, out["masked_lm_positions"][r, c]] = out["masked_lm_ids"][r, c]
    return ids


@pytest.mark.parametrize("L,P", [(128, 20), (512, 80)])
def test_masking_statistics_and_structure(chunk, L, P):
    special = chunk[3]
    out = _build(chunk, 7, L=L, P=P)
    ids, pos, lab = out["input_ids"], out["masked_lm_positions"], out["masked_lm_ids"]
    length = out["input_mask"].sum(1).astype(int)
    n = len(ids)
    assert n > 300 and ids.shape == (n, L) and pos.shape == (n, P)
    assert (ids[:, 0] == special.cls).all()
    assert (ids[np.arange(n), length - 1] == special.sep).all()
    assert (ids[np.arange(L)[None, :] >= length[:, None]] == special.pad).all()  # zero padding
    seg_b = out["segment_ids"].astype(bool)
    assert (~seg_b[np.arange(L)[None, :] >= length[:, None]]).all()
    n_masked = (pos > 0).sum(1)
    expect = np.minimum(P, np.maximum(1, np.rint(length * 0.15)))
    assert np.array_equal(n_masked, expect)
    assert 0.13 < n_masked.sum() / length.sum() < 0.16
    assert (np.diff(np.where(pos > 0, pos, L + 1 + np.arange(P)), axis=1) > 0).all()  # ascending, then zeros
    r, c = np.nonzero(pos > 0)
    targets = lab[r, c]
    assert not np.isin(targets, [special.pad, special.cls, special.sep, special.mask]).any()
    now = ids[r, pos[r, c]]
    frac_mask = (now == special.mask).mean()
    frac_same = (now == targets).mean()
    assert abs(frac_mask - 0.8) < 0.02 and abs(frac_same - 0.1) < 0.02 and abs(1 - frac_mask - frac_same - 0.1) < 0.02
    assert (lab[pos == 0] == 0).all()
    nsp = out["next_sentence_labels"].mean()
    # BERT's algorithm forces a random B for one-sentence chunks, so abstracts give a bit over 50%.
    assert 0.45 < nsp < 0.65


def test_deterministic_for_a_seed(chunk):
    a, b, c = _build(chunk, 3), _build(chunk, 3), _build(chunk, 4)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["input_ids"], c["input_ids"])


def test_whole_word_masking_masks_whole_words(chunk):
    special, is_subword = chunk[3], chunk[4]
    out = _build(chunk, 5, wwm=True)
    orig = _unmasked(out, special)
    masked = np.zeros(orig.shape, dtype=bool)
    r, c = np.nonzero(out["masked_lm_positions"] > 0)
    masked[r, out["masked_lm_positions"][r, c]] = True
    cont = is_subword[orig]
    cont[:, 1:] &= ~np.isin(orig[:, :-1], [special.cls, special.sep])  # a cut segment may start with "##"
    # A "##" piece is masked exactly when the piece before it is.
    assert np.array_equal(masked[:, 1:][cont[:, 1:]], masked[:, :-1][cont[:, 1:]])
    assert cont[masked].sum() > 0  # multi-piece words were masked at all
    length = out["input_mask"].sum(1)
    n_masked = masked.sum(1)
    budget = np.minimum(20, np.maximum(1, np.rint(length * 0.15))).astype(int)
    assert (n_masked <= budget).all()
    assert n_masked.sum() / length.sum() > 0.13
    # BERT's greedy rule: a word left unmasked did not fit in what was left of the budget.
    for r in range(0, len(orig), 7):
        bounds = np.flatnonzero(~cont[r][: length[r]])  # word starts and the specials between words
        sizes = np.diff(np.append(bounds, length[r]))
        is_word = ~np.isin(orig[r, bounds], [special.cls, special.sep])
        free = [z for b, z, w in zip(bounds, sizes, is_word) if w and not masked[r, b]]
        assert not free or min(free) > budget[r] - n_masked[r], r


@pytest.mark.parametrize("L,P", [(128, 20), (512, 80)])
def test_mlm_only_full_sentences(chunk, L, P):
    """Issue 9's second objective: contiguous whole sentences packed across documents ([SEP] between them),
    one segment, no random next segment, still NVIDIA's schema and BERT's masking."""
    tokens, sent_lens, doc_sents, special = chunk[:4]
    out = _build(chunk, 3, L=L, P=P, objective="mlm", dupe=1)
    assert (out["next_sentence_labels"] == 0).all() and (out["segment_ids"] == 0).all()
    ids = _unmasked(out, special)
    length = out["input_mask"].sum(1)
    assert (ids[:, 0] == special.cls).all() and (ids[np.arange(len(ids)), length - 1] == special.sep).all()
    assert (ids[np.arange(ids.shape[1])[None, :] >= length[:, None]] == special.pad).all()
    # Every instance is a contiguous slice of the documents with one [SEP] at each document end ...
    stream = document_stream(tokens, sent_lens, doc_sents, special.sep)
    text = stream.tobytes()
    for r in range(0, len(ids), 5):
        body = ids[r, 1:length[r] - 1].astype(np.int32)
        assert body[0] != special.sep and text.find(body.tobytes()) % 4 == 0, r
    # ... and with one pass every document token appears once (sentences longer than a sequence are cut),
    # in instances that are nearly full.
    n_sep_inside = int((ids[:, 1:] == special.sep).sum() - len(ids))
    cut = int(np.maximum(sent_lens - (L - 2), 0).sum())
    assert int(length.sum()) - 2 * len(ids) - n_sep_inside == len(tokens) - cut
    assert n_sep_inside > 0  # packing crossed document ends
    fill = length.mean() / L
    assert fill > 0.75, fill  # whole sentences + 10% short targets; within-document packing would fill ~half of 512
    masked = (out["masked_lm_positions"] > 0).sum(1)
    assert (masked == np.minimum(P, np.rint(length * 0.15))).mean() > 0.95
