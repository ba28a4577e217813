"""Sequence-task pieces without training: multi-label label reading (list column, separator, 0/1 columns),
thresholds and metrics against scikit-learn, regression targets and metrics, ECE and temperature scaling,
the HPO search-space file, and the MeSH topic-indexing task built from real MEDLINE records."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data_prep.downstream import DownstreamConfig, build_mesh_task, main as downstream_main, read_pmids
from ort_training.data.text import TextDataError
from ort_training.tasks import calibration, hpo, multilabel, regression

ASSET = Path(__file__).resolve().parents[1] / "assets" / "pubmed" / "pubmed20n0014_sample.xml.gz"


def test_multilabel_reads_lists_separators_and_01_columns(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"t": "x", "y": ["b", "a"]}\n{"t": "z", "y": []}\n')
    (tmp_path / "b.csv").write_text('t,y\nx,"b|a"\nz,[]\nw,"[""c""]"\n')
    (tmp_path / "c.csv").write_text("t,a,b\nx,1,0\nz,0,0\nw,1,1\n")
    a = multilabel.read_multilabel(tmp_path / "a.jsonl", "t", "y", "|")
    b = multilabel.read_multilabel(tmp_path / "b.csv", "t", "y", "|")
    c = multilabel.read_multilabel(tmp_path / "c.csv", "t", "a,b", "|")
    assert a.labels == ['["a", "b"]', "[]"]
    assert b.labels == ['["a", "b"]', "[]", '["c"]']
    assert c.labels == ['["a"]', "[]", '["a", "b"]']
    ls = multilabel.MultiLabelSet.from_table(b, "y")
    assert ls.labels == ["a", "b", "c"]
    assert ls.encode(b).tolist() == [[1, 1, 0], [0, 0, 0], [0, 0, 1]]
    assert multilabel.MultiLabelSet.from_table(c, "a,b").labels == ["a", "b"]
    with pytest.raises(TextDataError, match=r"b.csv.*lacks.*'c'"):
        multilabel.MultiLabelSet.from_table(a, "y").encode(b)
    (tmp_path / "d.csv").write_text("t,a,b\nx,1,2\n")
    with pytest.raises(TextDataError, match=r"d.csv: row 1 has '2' in column 'b'"):
        multilabel.read_multilabel(tmp_path / "d.csv", "t", "a,b", "|")


def test_thresholds_maximise_each_labels_f1_and_metrics_match_sklearn():
    from sklearn.metrics import f1_score, roc_auc_score

    rng = np.random.default_rng(0)
    y = (rng.random((200, 3)) < [0.1, 0.3, 0.5]).astype(np.float32)
    probs = np.clip(0.35 * y + rng.random((200, 3)) * 0.6, 0, 1)
    thr = multilabel.choose_thresholds(y, probs)
    for j in range(3):  # no other cut gives a better F1 for that label (every cut's F1 at once; sklearn scores the chosen one)
        cuts = np.unique(probs[:, j])[:, None]
        pred, pos = probs[None, :, j] >= cuts, y[None, :, j] > 0
        tp = (pred & pos).sum(1)
        best = (2 * tp / np.maximum(2 * tp + (pred & ~pos).sum(1) + (~pred & pos).sum(1), 1)).max()
        assert f1_score(y[:, j], probs[:, j] >= thr[j]) == pytest.approx(best)
    m = multilabel.multilabel_metrics(y, probs, thr, ["a", "b", "c"])
    assert m["micro_f1"] == pytest.approx(f1_score(y, probs >= thr, average="micro"))
    assert m["per_label"]["b"]["auroc"] == pytest.approx(roc_auc_score(y[:, 1], probs[:, 1]))
    assert multilabel.choose_thresholds(np.zeros((4, 1)), np.full((4, 1), 0.9)).tolist() == [multilabel.DEFAULT_THRESHOLD]


def test_regression_targets_standardizer_and_metrics(tmp_path):
    from ort_training.data.text import read_table
    from scipy.stats import spearmanr

    (tmp_path / "r.csv").write_text("t,y\na,1\nb,2.5\nc,x\n")
    with pytest.raises(TextDataError, match=r"r.csv: row 3 has 'x' in column 'y'"):
        regression.read_targets(read_table(tmp_path / "r.csv", "t", "y"))
    y = np.array([1.0, 4.0, 9.0, 16.0])
    s = regression.Standardizer.fit(y)
    assert s.decode(s.encode(y)) == pytest.approx(y)
    layer = torch.nn.Linear(3, 1)

    class M(torch.nn.Module):
        classifier = layer

    x = torch.randn(5, 3)
    z = layer(x).detach().numpy().reshape(-1)
    s.fold_into(M())
    assert layer(x).detach().numpy().reshape(-1) == pytest.approx(s.decode(z), rel=1e-5)
    m = regression.regression_metrics(y, y + [1, -1, 1, -1])
    assert (m["mae"], m["rmse"]) == (1.0, 1.0)
    assert m["spearman"] == pytest.approx(spearmanr(y, y + [1, -1, 1, -1]).statistic)


def test_ece_and_temperature():
    conf = np.array([0.9, 0.9, 0.9, 0.9, 0.6, 0.6])
    outcome = np.array([1, 1, 1, 0, 1, 0], dtype=float)
    rel = calibration.reliability(conf, outcome)
    assert rel["ece"] == pytest.approx(4 / 6 * abs(0.75 - 0.9) + 2 / 6 * abs(0.5 - 0.6))
    assert sum(b["count"] for b in rel["bins"]) == 6
    # over-confident logits (true model: logits / 3): the fitted temperature is near 3
    g = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 3, generator=g)
    y = torch.multinomial(torch.softmax(true_logits, -1), 1, generator=g).reshape(-1).numpy()
    t = calibration.fit_temperature(true_logits * 3, torch.arange(4000), y, multi_label=False)
    assert t == pytest.approx(3.0, rel=0.1)


def test_hpo_space_file(tmp_path):
    good = tmp_path / "space.yaml"
    good.write_text("hpo:\n  learning_rate: {low: 1e-5, high: 1e-3, log: true}\n  train_batch_size: {choices: [8, 16]}\n")
    assert hpo.load_space(str(good)) == {"learning_rate": {"low": 1e-5, "high": 1e-3, "log": True},
                                         "train_batch_size": {"choices": [8, 16]}}
    default = hpo.load_space(None)
    assert default.keys() == hpo.DEFAULT_SPACE.keys() and all("log" in v or "choices" in v for v in default.values())
    assert "num_train_epochs" not in hpo.load_space(None, max_steps=60)  # the steps are fixed: epochs are never read
    for text, message in (("hpo:\n  momentum: {low: 0, high: 1}\n", "'momentum' cannot be searched"),
                          ("hpo:\n  learning_rate: {low: 1, high: 0.1}\n", "need low < high"),
                          ("hpo: [1, 2]\n", "expected a mapping"),
                          ("hpo:\n  num_train_epochs: {low: 1, high: 3}\n  max_steps: {choices: [10, 20]}\n", "epochs are never read")):
        good.write_text(text)
        with pytest.raises(ValueError, match=message):
            hpo.load_space(str(good))


@pytest.mark.parametrize("space_file", [None, "space.yaml"])
def test_every_space_draws_typed_values(tmp_path, space_file):
    """A trial drawn from the default space (what `--hpo_trials N` alone searches) or a file's: every parameter a
    value of FinetuneConfig's type, inside its range."""
    import optuna

    from ort_training.finetune import FinetuneConfig

    if space_file:
        (tmp_path / space_file).write_text("hpo:\n  warmup_proportion: {low: 0, high: 0.2}\n  num_train_epochs: {low: 1, high: 4, step: 1}\n"
                                           "  gradient_accumulation_steps: {low: 1, high: 4}\n")
    space = hpo.load_space(str(tmp_path / space_file) if space_file else None)
    cfg = FinetuneConfig(train_file=str(tmp_path / "train.csv"), output_dir=str(tmp_path / "out"), config_file="tiny",
                         vocab_file=str(tmp_path / "vocab.txt"))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        params = hpo.suggest(study.ask(), space, cfg)
        assert params.keys() == space.keys()
        for name, value in params.items():
            spec = space[name]
            assert value in spec["choices"] if "choices" in spec else spec["low"] <= value <= spec["high"], (name, value)
        if "gradient_accumulation_steps" in params:
            assert isinstance(params["gradient_accumulation_steps"], int)


def test_mesh_task_from_real_medline_records(tmp_path):
    out = tmp_path / "mesh"
    m = build_mesh_task(DownstreamConfig(inputs=[str(ASSET)], out_dir=out, task="mesh", top_k=5, output_format="jsonl",
                                         dev_fraction=0.2, test_fraction=0.2))
    rows = {s: [json.loads(line) for line in (out / f"{s}.jsonl").read_text().splitlines()] for s in ("train", "dev", "test")}
    assert sum(m["abstracts"].values()) == 99  # the asset's citations with an abstract (and MeSH headings)
    assert len(m["labels"]) == 5
    train_counts = {lab: sum(lab in r["major_descriptors"] for r in rows["train"]) for lab in m["labels"]}
    assert train_counts == m["train_major_counts"]  # top-k counted on the train split only
    others = {lab for r in rows["train"] for lab in r["major_descriptors"]} - set(m["labels"])
    assert min(train_counts.values()) >= max(sum(lab in r["major_descriptors"] for r in rows["train"]) for lab in others)
    for split in rows.values():
        for r in split:
            assert set(r["labels"]) <= set(r["major_descriptors"]) and set(r["labels"]) <= set(m["labels"])
    assert read_pmids(out / "test_pmids.txt") == {r["pmid"] for r in rows["test"]}
    assert not read_pmids(out / "test_pmids.txt") & read_pmids(out / "train_pmids.txt")
    # CSV output: the label lists are JSON cells that fine-tuning reads back
    assert downstream_main(["--task", "mesh", "--inputs", str(ASSET), "--out-dir", str(tmp_path / "csv"), "--top-k", "5",
                            "--dev-fraction", "0.2", "--test-fraction", "0.2"]) == 0
    table = multilabel.read_multilabel(tmp_path / "csv" / "test.csv", "text", "labels", "|")
    assert [json.loads(v) for v in table.labels] == [r["labels"] for r in rows["test"]]
