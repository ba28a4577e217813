"""Text-classification files -> tables, labels, splits, windows and resumable batches (text_data.py), and
the fine-tuning report's metrics (finetune.classification_metrics)."""

import csv
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ort_training.data.text import LabelSet, TextClassificationLoader, TextDataError, encode_split, read_table, split_rows
from ort_training.export import wordpiece_tokenizer
from ort_training.finetune import classification_metrics

WORDS = "the patient was seen for fever cough chest pain and follow up today".split()
ROWS = [{"note": f"{WORDS[i % len(WORDS)]} text {i}", "dx": ["a", "b", "c"][i % 3]} for i in range(30)]


@pytest.fixture
def vocab(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "text", *WORDS, *map(str, range(40))]) + "\n")
    return path


def write_csv(path, rows, columns=("note", "dx")):
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, list(columns))
        w.writeheader()
        w.writerows(rows)
    return path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_parquet(path, rows):
    pq.write_table(pa.table({k: [r[k] for r in rows] for k in rows[0]}), path)
    return path


@pytest.mark.parametrize("writer,suffix", [(write_csv, "csv"), (write_jsonl, "jsonl"), (write_parquet, "parquet")])
def test_every_format_reads_the_same_table(tmp_path, writer, suffix):
    t = read_table(writer(tmp_path / f"d.{suffix}", ROWS), "note", "dx")
    assert t.texts == [r["note"] for r in ROWS] and t.labels == [r["dx"] for r in ROWS]


def test_integer_labels_are_one_class_whatever_their_type(tmp_path):
    rows = [{"note": "x", "dx": v} for v in (1, 0, 1.0, "1", 10, 2)]
    t = read_table(write_jsonl(tmp_path / "d.jsonl", rows), "note", "dx")
    assert t.labels == ["1", "0", "1", "1", "10", "2"]
    assert LabelSet.from_table(t).labels == ["0", "1", "2", "10"]  # numeric order


def test_missing_column_names_file_and_column(tmp_path):
    path = write_csv(tmp_path / "d.csv", ROWS)
    with pytest.raises(TextDataError, match=r"d\.csv: no column 'label' \(--label_column\); the file has columns \['note', 'dx'\]"):
        read_table(path, "note", "label")
    with pytest.raises(TextDataError, match=r"d\.parquet: no column 'text' \(--text_column\)"):
        read_table(write_parquet(tmp_path / "d.parquet", ROWS), "text", "dx")


def test_empty_label_and_unknown_type_are_errors(tmp_path):
    path = write_csv(tmp_path / "d.csv", ROWS[:3] + [{"note": "x", "dx": ""}])
    with pytest.raises(TextDataError, match=r"d\.csv: row 4 .* no value in column 'dx'"):
        read_table(path, "note", "dx")
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(TextDataError, match="unknown file type"):
        read_table(tmp_path / "d.xlsx", "note", "dx")


def test_one_class_only_and_unknown_labels(tmp_path):
    one = read_table(write_csv(tmp_path / "one.csv", [{"note": "x", "dx": "a"}] * 5), "note", "dx")
    with pytest.raises(TextDataError, match=r"one\.csv: column 'dx' \(--label_column\) holds one class only"):
        LabelSet.from_table(one)
    labels = LabelSet.from_table(read_table(write_csv(tmp_path / "train.csv", ROWS), "note", "dx"))
    test = read_table(write_csv(tmp_path / "test.csv", ROWS[:4] + [{"note": "y", "dx": "zzz"}]), "note", "dx")
    with pytest.raises(TextDataError, match=r"test\.csv: column 'dx' .* the training data lacks: \{'zzz': 1\}"):
        labels.encode(test)


def test_split_is_seeded_stratified_and_disjoint(tmp_path):
    t = read_table(write_csv(tmp_path / "d.csv", ROWS), "note", "dx")
    train, held = split_rows(t, {"validation": 0.2, "test": 0.2}, seed=7)
    again, held2 = split_rows(t, {"validation": 0.2, "test": 0.2}, seed=7)
    assert train.texts == again.texts and held["test"].texts == held2["test"].texts
    assert sorted(train.texts + held["validation"].texts + held["test"].texts) == sorted(t.texts)
    for part in (train, held["validation"], held["test"]):
        assert sorted(set(part.labels)) == ["a", "b", "c"]  # every class in every split
    assert len(held["validation"]) == len(held["test"]) == 6
    assert split_rows(t, {"validation": 0.2, "test": 0.2}, seed=8)[0].texts != train.texts


def test_truncate_and_window(tmp_path, vocab):
    tok = wordpiece_tokenizer(vocab)
    long = " ".join(WORDS * 3)  # 39 words
    t = read_table(write_jsonl(tmp_path / "d.jsonl", [{"note": long, "dx": "a"}, {"note": "fever", "dx": "b"}]), "note", "dx")
    ids = LabelSet.from_table(t).encode(t)
    cut = encode_split("x", t, ids, tok, max_seq_length=16)
    assert cut.input_ids.shape == (2, 16) and cut.truncated == 1 and cut.doc_index.tolist() == [0, 1]
    win = encode_split("x", t, ids, tok, max_seq_length=16, long_text="window", stride=4)
    # 39 tokens, 14 per window, 10 new per window after the first: 4 windows + the short text's one.
    assert win.doc_index.tolist() == [0, 0, 0, 0, 1] and win.labels.tolist() == [0, 0, 0, 0, 1] and win.truncated == 1
    first, second = win.input_ids[0][1:15].tolist(), win.input_ids[1][1:15].tolist()
    assert first[-4:] == second[:4]  # consecutive windows share `stride` tokens
    padded = encode_split("x", t, ids, tok, max_seq_length=16, pad_to=8)
    assert padded.input_ids.shape == (2, 8)


def make_split(tmp_path, vocab, n=20):
    rows = [{"note": WORDS[i % len(WORDS)], "dx": "ab"[i % 2]} for i in range(n)]
    t = read_table(write_csv(tmp_path / "d.csv", rows), "note", "dx")
    return encode_split("train", t, LabelSet.from_table(t).encode(t), wordpiece_tokenizer(vocab), 8)


def test_loader_resumes_at_the_exact_next_batch(tmp_path, vocab):
    split = make_split(tmp_path, vocab)
    ref = TextClassificationLoader(split, 3, seed=1)
    it = iter(ref)
    batches = [next(it) for _ in range(15)]  # 6 batches per epoch: crosses two epoch boundaries
    first = TextClassificationLoader(split, 3, seed=1)
    it = iter(first)
    for _ in range(8):
        next(it)
    state = first.state_dict()
    assert state == {"epoch": 1, "batch_index": 2, "num_examples": 20}
    resumed = TextClassificationLoader(split, 3, seed=1)
    resumed.load_state_dict(state)
    it = iter(resumed)
    for want in batches[8:]:
        got = next(it)
        assert all(torch.equal(got[k], want[k]) for k in want)
    # each epoch is a new permutation; within an epoch no example repeats
    epoch0 = torch.cat([b["input_ids"][:, 1] for b in batches[:6]])
    assert len(set(epoch0.tolist())) >= 6


def test_loader_ranks_are_disjoint_and_refuses_other_data(tmp_path, vocab):
    split = make_split(tmp_path, vocab)
    orders = [TextClassificationLoader(split, 2, seed=3, rank=r, world_size=2)._order(0).tolist() for r in (0, 1)]
    assert not set(orders[0]) & set(orders[1]) and len(orders[0]) == len(orders[1]) == 10
    loader = TextClassificationLoader(split, 2, seed=3)
    with pytest.raises(TextDataError, match="taken on 99 training examples"):
        loader.load_state_dict({"epoch": 0, "batch_index": 1, "num_examples": 99})
    with pytest.raises(TextDataError, match="no full micro-batch of 32"):
        TextClassificationLoader(split, 32, seed=3)


def test_metrics_by_hand():
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array([[.8, .1, .1], [.4, .5, .1], [.2, .7, .1], [.1, .8, .1], [.1, .1, .8], [.5, .2, .3]])
    m = classification_metrics(y, probs, ["a", "b", "c"])
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    f1 = [2 / 4, 4 / 5, 2 / 3]  # 2tp / (2tp + fp + fn)
    assert m["macro_f1"] == pytest.approx(np.mean(f1))
    b = m["per_class"]["b"]
    assert {k: b[k] for k in ("precision", "recall", "f1", "support")} == {
        "precision": pytest.approx(2 / 3), "recall": 1.0, "f1": pytest.approx(0.8), "support": 2}
    # AUPRC (average precision) one-vs-rest: class b's scores rank its 2 examples 2nd and 1st (0.7, 0.8 above every other),
    # so its precision at each of them is 1; prevalence 2/6.
    assert b["auprc"] == pytest.approx(1.0) and b["prevalence"] == pytest.approx(2 / 6)
    # one-vs-rest AUROC by counting pairs (ties half)
    def pairs(c):
        pos, neg = probs[y == c, c], probs[y != c, c]
        return np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])
    assert m["auroc_ovr"] == pytest.approx(np.mean([pairs(c) for c in range(3)]))
    binary = classification_metrics(np.array([0, 1, 1]), np.array([[.9, .1], [.3, .7], [.6, .4]]), ["no", "yes"])
    assert binary["auroc_ovr"] == 1.0 and binary["accuracy"] == pytest.approx(2 / 3)
