"""Fine-tuning for a rare positive class (readmission, sepsis: 5-15% positives): AUPRC beside AUROC in the report,
class weights in the training loss (--class_weights balanced / a list, --pos_weight) and the early-stopping metric
as a setting (--early_stopping_metric macro_f1 / auroc / auprc / loss). A tiny BERT on CPU, eager backend."""

import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, roc_auc_score
from transformers import BertConfig

from cli_runs import flags, write_csv
from ort_training import finetune
from ort_training.models.pretraining import PretrainingModel
from ort_training.tasks.sequence import SingleLabel, WeightedSequenceClassification

FILLER = "the a patient was seen today for follow up and her his history is noted with no change in plan".split()
POSITIVE = ["sepsis", "lactate", "hypotension"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
            type_vocab_size=2, hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
            initializer_range=0.02, layer_norm_eps=1e-12)


def rare_rows(n, every=10, seed=0):
    """One row in `every` is positive (readmitted 1) and names two sepsis words; the rest are filler (0)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        positive = i % every == 0
        words = [rng.choice(FILLER) for _ in range(rng.randint(5, 14))]
        if positive:
            for _ in range(2):
                words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE))
        out.append({"note": " ".join(words), "readmitted": int(positive)})
    return out



@pytest.fixture(scope="module")
def rare(tmp_path_factory):
    root = tmp_path_factory.mktemp("rare")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL + sorted(set(FILLER) | set(POSITIVE))) + "\n")
    config = root / "bert_config.json"
    config.write_text(json.dumps({**TINY, "vocab_size": len(vocab.read_text().split())}))
    return {"vocab": str(vocab), "config": str(config),
            "train": write_csv(root / "train.csv", rare_rows(200, seed=1)),
            "dev": write_csv(root / "dev.csv", rare_rows(40, every=5, seed=2)),
            "test": write_csv(root / "test.csv", rare_rows(40, every=5, seed=3)),
            "dev_negatives_only": write_csv(root / "dev_neg.csv", [r for r in rare_rows(40, seed=4) if not r["readmitted"]])}


def args(rare, out, **kw):
    base = {"train_file": rare["train"], "validation_file": rare["dev"], "test_file": rare["test"], "text_column": "note",
            "label_column": "readmitted", "config_file": rare["config"], "vocab_file": rare["vocab"], "output_dir": str(out),
            "max_seq_length": 32, "train_batch_size": 16, "eval_steps": 5, "max_steps": 30, "learning_rate": 3e-3,
            "patience": 0, "disable_progress_bar": True, "backend": "eager"}
    return flags(base | kw)


def test_classification_metrics_report_auprc_as_sklearn_computes_it():
    from ort_training.finetune import classification_metrics

    rng = np.random.default_rng(0)
    y = (rng.random(200) < 0.1).astype(np.int64)
    p1 = np.clip(0.3 * y + 0.7 * rng.random(200), 0, 1)
    m = classification_metrics(y, np.stack([1 - p1, p1], 1), ["0", "1"])
    assert m["auprc_ovr"] == pytest.approx(average_precision_score(y, p1))
    assert m["auroc_ovr"] == pytest.approx(roc_auc_score(y, p1))
    assert m["per_class"]["1"]["auprc"] == pytest.approx(average_precision_score(y, p1))
    assert m["per_class"]["1"]["prevalence"] == pytest.approx(y.mean())
    # three classes: one-vs-rest, macro over the classes present in the true labels
    y3 = rng.integers(0, 3, 300)
    p3 = rng.dirichlet(np.ones(3), 300)
    p3[np.arange(300), y3] += 0.5
    p3 /= p3.sum(1, keepdims=True)
    m3 = classification_metrics(y3, p3, ["a", "b", "c"])
    assert m3["auprc_ovr"] == pytest.approx(np.mean([average_precision_score(y3 == c, p3[:, c]) for c in range(3)]))
    absent = classification_metrics(np.zeros(10, dtype=np.int64), np.full((10, 2), 0.5), ["0", "1"])
    assert absent["auprc_ovr"] is None and absent["auroc_ovr"] is None  # undefined with one class, not 0 or 1


def test_the_weighted_loss_is_cross_entropy_with_the_class_weights():
    config = BertConfig(**TINY, vocab_size=40)
    torch.manual_seed(0)
    model = PretrainingModel(config, objective=WeightedSequenceClassification(["0", "1"], [1.0, 9.0])).eval()
    ids = torch.randint(5, 40, (6, 12))
    segments, mask = torch.zeros_like(ids), torch.ones_like(ids)
    labels = torch.tensor([0, 0, 0, 0, 1, 0])
    loss, stats = model(ids, segments, mask, labels)
    logits = model.hf_model(input_ids=ids, token_type_ids=segments, attention_mask=mask).logits.float()
    assert loss.item() == pytest.approx(F.cross_entropy(logits, labels, weight=torch.tensor([1.0, 9.0])).item(), rel=1e-5)
    assert loss.item() != pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-3)
    assert stats[1].item() == 6


def _task(rare, tmp_path, **kw):
    cfg = finetune.parse_config(args(rare, tmp_path / "x", **kw))
    task = SingleLabel(cfg)
    task.load_splits()
    return task


def test_balanced_explicit_and_positive_class_weights(rare, tmp_path):
    # 200 training notes, 20 positive: sklearn's "balanced" = 200 / (2 x 180) and 200 / (2 x 20)
    assert _task(rare, tmp_path, class_weights="balanced").class_weights == pytest.approx([200 / 360, 200 / 40])
    assert _task(rare, tmp_path, class_weights="1,7.5").class_weights == [1.0, 7.5]
    task = _task(rare, tmp_path, pos_weight=9)
    assert task.labels == ["0", "1"] and task.class_weights == [1.0, 9.0]
    assert type(task.objective(None)).__name__ == "WeightedSequenceClassification"
    assert type(_task(rare, tmp_path).objective(None)).__name__ == "SequenceClassification"  # no weights: the plain loss


def test_auprc_early_stopping_and_class_weights_end_to_end(rare, tmp_path, capsys):
    out = tmp_path / "run"
    assert finetune.main(args(rare, out, class_weights="balanced", early_stopping_metric="auprc")) == 0
    report = json.loads((out / "test_report.json").read_text())
    summary = json.loads((out / "finetune_summary.json").read_text())
    history = [json.loads(line) for line in (out / "validation.jsonl").read_text().splitlines()]
    assert summary["metric"] == "auprc_ovr" and summary["direction"] == "maximize"
    assert all("auprc_ovr" in r and "auroc_ovr" in r for r in history)
    best = max(history, key=lambda r: r["auprc_ovr"])  # the first of equal values: an improvement must be strict
    assert report["best_step"] == summary["best_step"] == best["step"]
    assert report["auprc_ovr"] is not None and report["per_class"]["1"]["prevalence"] == pytest.approx(0.2)
    assert summary["test"]["auprc_ovr"] == report["auprc_ovr"]
    config = json.loads((out / "finetune_config.json").read_text())
    assert config["class_weights"] == "balanced" and config["early_stopping_metric"] == "auprc"


def test_loss_as_the_early_stopping_metric_is_minimised(rare, tmp_path):
    out = tmp_path / "run"
    assert finetune.main(args(rare, out, early_stopping_metric="loss", max_steps=15)) == 0
    summary = json.loads((out / "finetune_summary.json").read_text())
    history = [json.loads(line) for line in (out / "validation.jsonl").read_text().splitlines()]
    assert summary["metric"] == "loss" and summary["direction"] == "minimize"
    assert summary["best_step"] == min(history, key=lambda r: r["loss"])["step"]


@pytest.mark.parametrize(("kw", "message"), [
    ({"class_weights": "1,2,3"}, "3 weight(s) for 2 classes ['0', '1']"),
    ({"class_weights": "heavy"}, "--class_weights 'heavy': give 'balanced' or one number per class"),
    ({"class_weights": "1,0"}, "give one weight > 0 per class"),
    ({"pos_weight": -2}, "--pos_weight must be > 0"),
    ({"pos_weight": 5, "class_weights": "balanced"}, "give one (--pos_weight W = --class_weights 1,W)"),
    ({"early_stopping_metric": "auprc", "validation_file": "dev_negatives_only"}, "holds one class only (['0'])"),
    ({"task": "regression", "early_stopping_metric": "auroc"}, "apply to --task single_label"),
])
def test_bad_settings_are_refused_in_one_line(rare, tmp_path, capsys, kw, message):
    if kw.get("validation_file") == "dev_negatives_only":
        kw = {**kw, "validation_file": rare["dev_negatives_only"]}
    try:
        rc = finetune.main(args(rare, tmp_path / "run", **kw))
    except SystemExit as exc:  # refused while parsing the flags
        rc = exc.code
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


@pytest.mark.ort
def test_the_weighted_loss_trains_under_ortmodule(rare, tmp_path):
    """The class weights are a constant of the loss ORTModule exports with the model (no Python-side fallback)."""
    out = tmp_path / "run"
    assert finetune.main(args(rare, out, backend="ort", class_weights="1,9", max_steps=4, eval_steps=2)) == 0
    summary = json.loads((out / "finetune_summary.json").read_text())
    assert summary["global_step"] == 4 and summary["test"]["auprc_ovr"] is not None
