"""Span corruption and DEPTH collators (ort_training.data.collate_t5), the packed format's sentence starts
(version 2), and AdamWScale."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bundle import packed_schema
from ort_training.data.collate_t5 import (SENTENCE_TOKENS, SENTINELS, DepthCollator, SpanCorruptionCollator,
                                          compute_input_and_target_lengths, corrupted_lengths, noise_counts,
                                          random_spans_noise_mask, reserved_tokens, split_sentences)
from ort_training.data.hdf5 import DataError

V = 50
ATTRS = packed_schema.PackedAttrs(40, V, 2, 3, 0, 4, (1,))


def seq(n: int, start: int = 10) -> np.ndarray:
    return np.concatenate([[2], np.arange(start, start + n) % 40 + 5, [3]]).astype(np.int32)


@pytest.mark.parametrize("length", [2, 3, 10, 57, 100, 511])
@pytest.mark.parametrize("density,span", [(0.15, 3.0), (0.3, 3.0), (0.5, 1.0)])
def test_noise_mask_counts_and_alternation(length, density, span):
    mask = random_spans_noise_mask(length, density, span, np.random.default_rng(length))
    noise, spans = noise_counts(length, density, span)
    assert mask.shape == (length,) and int(mask.sum()) == noise
    starts = np.flatnonzero(mask & ~np.concatenate([[False], mask[:-1]]))
    assert len(starts) == spans and not mask[0]  # begins with non-noise, as T5's does


def test_hugging_faces_lengths():
    """run_t5_mlm_flax's numbers: 568 raw tokens fill an encoder input of 512 with a 114-token target (0.15, 3)."""
    assert compute_input_and_target_lengths(512, 0.15, 3.0) == (568, 114)
    assert corrupted_lengths(568, 0.15, 3.0)[0] == 512


def test_span_corruption_batch_is_deterministic_and_reconstructs():
    coll = SpanCorruptionCollator().bind(ATTRS, 40)
    seqs = [seq(30), seq(12, 7)]
    a = coll(seqs, [np.random.default_rng([1, i]) for i in range(2)])
    b = coll(seqs, [np.random.default_rng([1, i]) for i in range(2)])
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["input_ids"].shape == (2, coll.encoder_length) and a["labels"].shape == (2, coll.decoder_length)
    for row, s in enumerate(seqs):
        enc = a["input_ids"][row][a["input_mask"][row] == 1].tolist()
        tgt = [t for t in a["labels"][row].tolist() if t != -100]
        assert enc[-1] == tgt[-1] == ATTRS.sep_id
        # Filling each sentinel of the input with its span from the target gives back the text.
        spans, current = {}, None
        for t in tgt[:-1]:
            if V <= t < V + SENTINELS:
                current = t
                spans[t] = []
            else:
                spans[current].append(t)
        restored = [x for t in enc[:-1] for x in (spans[t] if V <= t < V + SENTINELS else [t])]
        assert restored == s[1:-1].tolist()
        assert sorted(spans) == list(range(V, V + len(spans)))  # <extra_id_0>, <extra_id_1>, ... in order
        assert a["decoder_input_ids"][row, 0] == ATTRS.pad_id
        assert a["decoder_input_ids"][row, 1:len(tgt)].tolist() == tgt[:-1]


def test_depth_restores_order_and_spans():
    coll = DepthCollator(shuffle_probability=1.0).bind(packed_schema.PackedAttrs(80, V, 2, 3, 0, 4, (1,)), 80)
    assert coll.max_sentences == 4  # one per 16 tokens
    s = seq(30)
    starts = np.array([1, 8, 15, 22])  # positions in the packed sequence ([CLS] at 0)
    enc, tgt, is_sentence, order = coll.example(s, np.random.default_rng(5), starts)
    sent = coll.layout.sent0
    enc, tgt = enc.tolist(), tgt.tolist()
    assert sorted(order) == [0, 1, 2, 3]
    in_target = [t for t in tgt if sent <= t < sent + SENTENCE_TOKENS]
    assert [t for t, k in zip(tgt, is_sentence.tolist()) if k] == in_target and len(in_target) == 4
    assert enc.count(coll.layout.eosen) == 4
    # The encoder shows the sentences in `order`: their tokens appear there in that order.
    assert [t for t in enc if sent <= t < sent + SENTENCE_TOKENS] == [in_target[i] for i in order]
    # Every sentence's text comes back by filling sentinels, read in the target's (original) order.
    units, spans, current = {}, {}, None
    for t in enc[:-1]:
        if sent <= t < sent + SENTENCE_TOKENS:
            current = units.setdefault(t, [])
        elif t != coll.layout.eosen:
            current.append(t)
    current = None
    for t in tgt[:-1]:
        if V <= t < V + SENTINELS:
            current = spans.setdefault(t, [])
        elif not sent <= t < sent + SENTENCE_TOKENS:
            current.append(t)
    restored = [x for sid in in_target for t in units[sid] for x in (spans[t] if V <= t < V + SENTINELS else [t])]
    assert restored == s[1:-1].tolist()
    batch = coll([s], [np.random.default_rng(5)], sentences=[starts])
    assert batch["input_ids"].shape == (1, coll.encoder_length) and batch["labels_sentence"].shape == (1, coll.decoder_length)


def test_depth_without_sentences_is_refused_and_long_lists_merge():
    coll = DepthCollator().bind(ATTRS, 40)
    with pytest.raises(DataError, match="no sentence boundaries.*data_prep packed"):
        coll([seq(5)], [np.random.default_rng(0)], sentences=None, where="f.hdf5")
    parts = split_sentences(np.arange(30), np.arange(0, 30), limit=4)
    assert [len(p) for p in parts] == [1, 1, 1, 27]


def test_reserved_ids_must_fit_the_model():
    class Owner:
        name, vocab_limit = "span_corruption", V + 8

    with pytest.raises(DataError, match=f"vocab_size >= {V + len(reserved_tokens())}"):
        SpanCorruptionCollator(owner=Owner()).bind(ATTRS, 40)


def test_packed_format_2_sentence_starts_and_version_1(tmp_path):
    seqs = [seq(10), seq(5)]
    starts = [np.array([1, 4]), np.array([1])]
    packed_schema.write_file(tmp_path / "v2.hdf5", seqs, ATTRS, starts)
    got = packed_schema.read_sentence_starts(tmp_path / "v2.hdf5")
    assert [g.tolist() for g in got] == [[1, 4], [1]]
    assert [g.tolist() for g in packed_schema.read_sentence_starts(tmp_path / "v2.hdf5", 1, 2)] == [[1]]
    packed_schema.write_file(tmp_path / "plain.hdf5", seqs, ATTRS)
    assert packed_schema.read_sentence_starts(tmp_path / "plain.hdf5") is None
    import h5py

    with h5py.File(tmp_path / "plain.hdf5", "r+") as f:
        f.attrs["format_version"] = 1  # what the previous writer made
    tokens, offsets = packed_schema.read_sequences(tmp_path / "plain.hdf5")
    assert len(offsets) == 3


def test_sentence_packer_matches_sequence_packer():
    rng = np.random.default_rng(0)
    docs = [rng.integers(5, V, size=int(rng.integers(3, 60))) for _ in range(20)]
    plain, with_starts = packed_schema.SequencePacker(16, 2, 3), packed_schema.SentencePacker(16, 2, 3)
    a, b = [], []
    for d in docs:
        a += plain.add(d)
        b += with_starts.add(d, np.array([0, len(d) // 2]))
    a, b = a + plain.flush(), b + with_starts.flush()
    assert len(a) == len(b) and all(np.array_equal(x, y[0]) for x, y in zip(a, b))
    assert all(((y[1] >= 1) & (y[1] < len(y[0]))).all() for y in b)


def test_data_prep_sentence_starts_from_offsets():
    from data_prep.create_packed import sentence_token_starts

    # "ab cd. ef g." -> tokens ab, cd, ., ef, g, . ; byte-level BPE tokens may start at the space before a sentence
    assert sentence_token_starts(["ab cd.", "ef g."], [(0, 2), (3, 5), (5, 6), (7, 9), (10, 11), (11, 12)]).tolist() == [0, 3]
    assert sentence_token_starts(["ab cd.", "ef g."], [(0, 2), (2, 5), (5, 6), (6, 9), (9, 11), (11, 12)]).tolist() == [0, 3]


def test_adamwscale_scales_steps_by_parameter_rms():
    from ort_training.loop.optim import AdamWScale

    big, small = torch.nn.Parameter(torch.full((4,), 10.0)), torch.nn.Parameter(torch.full((4,), 0.1))
    opt = AdamWScale([big, small], lr=0.1, weight_decay=0.0, max_grad_norm=0.0)
    big.grad, small.grad = torch.ones(4), torch.ones(4)
    opt.step()
    assert float(10.0 - big[0]) == pytest.approx(0.1 * 10.0, rel=1e-4)  # Adam's first step is lr * sign(g), times RMS(w)
    assert float(0.1 - small[0]) == pytest.approx(0.1 * 0.1, rel=1e-4)
