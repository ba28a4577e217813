"""The packed-sequence loader (ort_training.data.packed) and the collators that make its batches
(ort_training.data.collate): load-time masking rule and rates, 80/10/10, specials never masked, batch format
identical to the NVIDIA reader's, next-token batches, determinism and exact resume."""

import itertools
import math

import numpy as np
import pytest
import torch

from bundle import hdf5_schema
from bundle import packed_schema as ps
from ort_training.data.hdf5 import IGNORE_INDEX, DataError, PretrainingDataLoader
from ort_training.data.collate import CausalCollator, MaskingCollator, max_predictions
from ort_training.data.packed import PackedDataLoader, is_packed_folder

V, L = 1000, 64
PAD, UNK, CLS, SEP, MASK = range(5)
EXTRA_SPECIAL = (5, 6, 7)  # e.g. [unused0..2]: never masked, never a random replacement
MLM = MaskingCollator(0.15)


def _write(folder, n_files=3, n_docs=120, seed=0, L=L):
    rng = np.random.default_rng(seed)
    attrs = ps.PackedAttrs(L, V, CLS, SEP, PAD, MASK, (UNK, *EXTRA_SPECIAL))
    files = []
    for f in range(n_files):
        p = ps.SequencePacker(L, CLS, SEP)
        seqs = []
        for _ in range(n_docs):
            doc = rng.integers(8, V, size=int(rng.integers(1, 2 * L)))
            doc[rng.random(doc.size) < 0.05] = UNK  # specials inside documents too
            seqs += p.add(doc)
        seqs += p.flush()
        path = folder / f"pubmed_training_{f}.hdf5"
        ps.write_file(path, seqs, attrs)
        files.append(path)
    return files


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("packed"))


def _originals(files):
    out = set()
    for f in files:
        t, o = ps.read_sequences(f)
        out |= {tuple(s.tolist()) for s in ps.iter_sequences(t, o)}
    return out


def _unmasked(ids, mask, pos, lab):
    """A batch row with its labels put back: the sequence as stored."""
    orig = ids[:int(mask.sum())].copy()
    used = lab != IGNORE_INDEX
    orig[pos[used]] = lab[used]
    return tuple(orig.tolist())


def _batches(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_max_predictions_rule():
    assert max_predictions(128, 0.15) == 20 and max_predictions(512, 0.15) == 77  # ceil(76.8)
    assert max_predictions(1024, 0.3) == 308 and max_predictions(8192, 0.3) == 2458
    assert max_predictions(100, 0.15) == 15  # not 16: 0.15 * 100 is 15.000000000000002 in floating point


def test_batches_have_the_nvidia_readers_keys_dtypes_and_conventions(files, tmp_path):
    b = _batches(PackedDataLoader(files, 8, seed=1, collator=MaskingCollator(0.15), max_seq_length=128, prefetch=False), 1)[0]
    nv = tmp_path / "nv_training_0.hdf5"
    hdf5_schema.write_file(nv, hdf5_schema.zeros(8, 128, 20))
    ref = _batches(PretrainingDataLoader([nv], 8, seed=1, prefetch=False), 1)[0]
    assert list(b) == list(ref)
    assert {k: (v.dtype, v.shape) for k, v in b.items()} == {k: (v.dtype, v.shape) for k, v in ref.items()}
    pos, lab = b["masked_lm_positions"], b["masked_lm_labels"]
    used = lab != IGNORE_INDEX
    assert torch.equal(used, pos > 0)  # unused slots: position 0 ([CLS], never masked) and the ignore index
    for row_pos, row_used in zip(pos, used):
        p = row_pos[row_used]
        assert torch.all(p[1:] > p[:-1])  # ascending
    assert torch.all(b["segment_ids"] == 0) and torch.all(b["next_sentence_labels"] == 0)
    n = b["input_mask"].sum(1)
    assert torch.all(b["input_ids"][b["input_mask"] == 0] == PAD) and torch.all(b["input_ids"][:, 0] == CLS)
    assert torch.all(b["input_mask"].cumsum(1).max(1).values == n)  # 1s then 0s


@pytest.mark.parametrize("rate", [0.15, 0.3])
def test_masking_rate_proportions_and_specials(files, rate):
    loader = PackedDataLoader(files, 16, seed=3, collator=MaskingCollator(rate), prefetch=False)
    originals = _originals(files)
    special = np.zeros(V, dtype=bool)
    special[[PAD, UNK, CLS, SEP, MASK, *EXTRA_SPECIAL]] = True
    counts = {"mask": 0, "random": 0, "kept": 0}
    for b in _batches(loader, 120 if rate < 0.2 else 60):
        for ids, mask, pos, lab in zip(*(b[k].numpy() for k in ("input_ids", "input_mask", "masked_lm_positions",
                                                                "masked_lm_labels"))):
            orig = np.asarray(_unmasked(ids, mask, pos, lab))
            assert tuple(orig.tolist()) in originals  # only masked positions changed
            used = lab != IGNORE_INDEX
            pos, lab = pos[used], lab[used]
            n_candidates = int((~special[orig]).sum())
            want = min(max_predictions(L, rate), max(1, round(rate * n_candidates))) if n_candidates else 0
            assert len(pos) == want
            assert not special[lab].any()  # specials never chosen
            new = ids[pos]
            counts["mask"] += int((new == MASK).sum())
            counts["kept"] += int((new == lab).sum())
            rnd = (new != MASK) & (new != lab)
            counts["random"] += int(rnd.sum())
            assert not special[new[rnd]].any()  # random replacements are never special ids
    total = sum(counts.values())
    assert total > 10_000
    # 80 / 10 / 10 within 5 standard deviations (sd <= 0.004 at this sample size).
    for k, p in (("mask", 0.8), ("random", 0.1), ("kept", 0.1)):
        sd = math.sqrt(p * (1 - p) / total)
        assert abs(counts[k] / total - p) < 5 * sd + 1 / V, (k, counts)


def test_deterministic_and_fresh_each_epoch(files):
    a = _batches(PackedDataLoader(files, 8, seed=5, collator=MaskingCollator(0.3)), 40)
    b = _batches(PackedDataLoader(files, 8, seed=5, collator=MaskingCollator(0.3), prefetch=False), 40)
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)
    c = _batches(PackedDataLoader(files, 8, seed=6, collator=MaskingCollator(0.3)), 1)[0]
    assert not torch.equal(a[0]["input_ids"], c["input_ids"])
    # The same sequence in two epochs gets two different masks (masking at load time, not stored).
    loader = PackedDataLoader(files, 1, seed=5, collator=MaskingCollator(0.3), prefetch=False)
    data = loader._get(loader._shards(0)[0])
    rows = np.asarray([0])
    e0, e1 = loader.make_batch(data, rows, 0), loader.make_batch(data, rows, 1)
    assert not torch.equal(e0["masked_lm_positions"], e1["masked_lm_positions"])
    assert torch.equal(e0["input_ids"], loader.make_batch(data, rows, 0)["input_ids"])


@pytest.mark.parametrize("k", [3, 17, 45])  # inside the first file, past a file boundary, past an epoch
def test_exact_resume(files, k):
    uninterrupted = _batches(PackedDataLoader(files, 8, seed=7, collator=MaskingCollator(0.3)), k + 6)
    first = PackedDataLoader(files, 8, seed=7, collator=MaskingCollator(0.3))
    _batches(first, k)
    state = first.state_dict()
    first.close()
    resumed = PackedDataLoader(files, 8, seed=7, collator=MaskingCollator(0.3))
    resumed.load_state_dict(state)
    after = _batches(resumed, 6)
    resumed.close()
    for x, y in zip(uninterrupted[k:], after):
        assert all(torch.equal(x[key], y[key]) for key in x)


def test_ranks_read_disjoint_sequences(files):
    def seen(rank, world, n):
        out = set()
        for b in _batches(PackedDataLoader(files[:1], 4, seed=1, collator=MLM, rank=rank, world_size=world, prefetch=False), n):
            out |= {_unmasked(*row) for row in zip(*(b[k].numpy() for k in ("input_ids", "input_mask",
                                                                             "masked_lm_positions", "masked_lm_labels")))}
        return out
    # One file, two ranks: each reads a disjoint stride of it, and together all of it (but a dropped last batch).
    n_seqs = len(ps.read_sequences(files[0])[1]) - 1
    r0, r1 = seen(0, 2, n_seqs // 2 // 4), seen(1, 2, n_seqs // 2 // 4)
    assert not r0 & r1 and len(r0 | r1) >= n_seqs - 2 * 4 and r0 | r1 <= _originals(files[:1])


def test_format_detection_and_refusals(files, tmp_path):
    assert is_packed_folder(files)
    nv = tmp_path / "nv_training_0.hdf5"
    hdf5_schema.write_file(nv, hdf5_schema.zeros(2, 8, 2))
    assert not is_packed_folder([nv])
    with pytest.raises(DataError, match="mixes packed token files"):
        is_packed_folder([files[0], nv])
    with pytest.raises(DataError, match=r"holds sequences of up to 64 tokens; max_seq_length 32 would cut them"):
        PackedDataLoader(files, 4, seed=0, collator=MLM, max_seq_length=32)
    with pytest.raises(DataError, match=r"a tokenizer of 1000 ids, more than the model's vocabulary of 500"):
        PackedDataLoader(files, 4, seed=0, collator=MLM, vocab_size=500)
    with pytest.raises(DataError, match="nv_training_0.hdf5: attribute format is None"):
        PackedDataLoader([nv], 4, seed=0, collator=MLM)
    other = _write(tmp_path, n_files=1, L=32)
    loader = PackedDataLoader([files[0], *other], 4, seed=0, collator=MLM, max_seq_length=64, prefetch=False)
    with pytest.raises(DataError, match="made with another tokenizer or length"):
        list(itertools.islice(loader, 200))


def test_causal_batches_are_the_sequences_right_padded(files):
    loader = PackedDataLoader(files, 8, seed=2, collator=CausalCollator(), prefetch=False)
    b = _batches(loader, 1)[0]
    assert set(b) == {"input_ids", "input_mask"} and b["input_ids"].shape == (8, L)
    originals = _originals(files)
    for ids, mask in zip(b["input_ids"].numpy(), b["input_mask"].numpy()):
        n = int(mask.sum())
        assert tuple(ids[:n].tolist()) in originals and np.all(ids[n:] == PAD) and np.all(mask[:n] == 1)
    resumed = PackedDataLoader(files, 8, seed=2, collator=CausalCollator(), prefetch=False)
    resumed.load_state_dict(loader.state_dict())
    assert torch.equal(_batches(resumed, 1)[0]["input_ids"], _batches(loader, 1)[0]["input_ids"])


def test_one_replacement_rule_for_both_halves():
    """data_prep's stored masks and the packed collator take the 80/10/10 decision from bundle.masking."""
    import inspect

    from bundle import masking
    from data_prep import instances
    from ort_training.data import collate

    u = np.linspace(0, 1, 1000, endpoint=False)
    to_mask, to_random = masking.replacement_kinds(u)
    assert to_mask.sum() == 800 and to_random.sum() == 100 and not (to_mask & to_random).any()
    for module in (instances, collate):
        assert "replacement_kinds(" in inspect.getsource(module) and "0.8" not in inspect.getsource(module)


def test_a_truncated_file_is_named_not_called_another_format(files, tmp_path):
    import shutil

    copies = [shutil.copy(f, tmp_path / f.name) for f in files[:2]]
    data = open(copies[1], "rb").read()
    open(copies[1], "wb").write(data[:len(data) // 2])  # a copy killed half-way
    with pytest.raises(DataError, match=r"pubmed_training_1.hdf5: truncated or corrupt HDF5 file"):
        is_packed_folder([tmp_path / f.name for f in files[:2]])
