"""`python -m ort_training.finetune` end to end on a handmade task (tiny BERT, CPU): random init learns a
keyword rule, an HF folder and a bundle checkpoint are fine-tuning starts, the ORT backend runs, a
killed-and-resumed run equals an uninterrupted one, and bad input is refused naming file and column."""

import json
import random
import signal

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForPreTraining

from cli_runs import flags, write_csv
from ort_training import finetune
from ort_training.export import save_tokenizer, wordpiece_tokenizer
from ort_training.loop.checkpoint import list_checkpoints, save_checkpoint
from ort_training.loop.metrics import read_metrics
from ort_training.models import load_model_config
from ort_training.models.pretraining import PretrainingModel

FILLER = "the a patient was seen today for follow up and her his history is noted with no change in plan".split()
KEYS = {"infection": ["fever", "cough", "sputum"], "cardiac": ["chest", "palpitations", "syncope"],
        "renal": ["kidney", "dialysis", "creatinine"]}
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
            type_vocab_size=2, hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
            initializer_range=0.02, layer_norm_eps=1e-12)


def rows(n, classes, seed=0, long=False):
    """Filler words with two keywords of the row's class: a rule a tiny BERT learns in a few dozen steps."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = classes[i % len(classes)]
        words = [rng.choice(FILLER) for _ in range(rng.randint(30, 50) if long else rng.randint(5, 14))]
        for _ in range(2):
            words.insert(rng.randrange(len(words) + 1), rng.choice(KEYS[label]))
        out.append({"note": " ".join(words), "dx": label})
    return out



@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("task")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL + sorted(set(FILLER) | {k for v in KEYS.values() for k in v})) + "\n")
    n_vocab = len(vocab.read_text().split())
    config = root / "bert_config.json"
    config.write_text(json.dumps({**TINY, "vocab_size": n_vocab}))
    return {"root": root, "vocab": str(vocab), "config": str(config), "n_vocab": n_vocab,
            "binary": write_csv(root / "binary.csv", rows(240, ["infection", "cardiac"]))}


def base_args(out, **kw):
    args = {"text_column": "note", "label_column": "dx", "output_dir": str(out), "max_seq_length": 32,
            "train_batch_size": 16, "eval_steps": 10, "disable_progress_bar": True, "backend": "eager"}
    return flags(args | kw)


def test_random_init_learns_the_rule(task, tmp_path, capsys):
    out = tmp_path / "run"
    argv = base_args(out, train_file=task["binary"], config_file=task["config"], vocab_file=task["vocab"], max_steps=40,
                     learning_rate=3e-3, dropout=0.0, patience=0)
    assert finetune.main(argv) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    report = json.loads((out / "test_report.json").read_text())
    assert report["accuracy"] > 0.9 and report["macro_f1"] > 0.9 and report["auroc_ovr"] > 0.9, report
    assert report["labels"] == ["cardiac", "infection"] and report["documents"] == 24  # 10% stratified split
    assert sum(map(sum, report["confusion_matrix"])) == 24
    assert printed["test"]["accuracy"] == report["accuracy"] and printed["best_step"] == report["best_step"]
    assert (out / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert len((out / "test_predictions.csv").read_text().splitlines()) == 25
    # The export: a Hugging Face classifier with its tokenizer and class names, giving the report's predictions.
    model = AutoModelForSequenceClassification.from_pretrained(out / "hf_model").eval()
    tok = AutoTokenizer.from_pretrained(out / "hf_model")
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.id2label == {0: "cardiac", 1: "infection"} and model.config.label2id == {"cardiac": 0, "infection": 1}
    assert model.config.vocab_size == len(tok) == task["n_vocab"]
    with torch.no_grad():
        logits = model(**tok(["was seen for fever and cough today", "chest pain and syncope noted"], return_tensors="pt",
                             padding=True)).logits
    assert [model.config.id2label[i] for i in logits.argmax(-1).tolist()] == ["infection", "cardiac"]
    history = [json.loads(line) for line in (out / "validation.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == [10, 20, 30, 40]
    assert report["best_step"] == max(history, key=lambda r: r["macro_f1"])["step"]


def tiny_hf_folder(task, path):
    config = BertConfig(**TINY, vocab_size=task["n_vocab"])
    torch.manual_seed(0)
    BertForPreTraining(config).save_pretrained(path)
    save_tokenizer(wordpiece_tokenizer(task["vocab"]), path)
    return path


def test_from_hf_folder_multiclass_given_files_windows(task, tmp_path):
    """HF folder (config and tokenizer from it), three classes from three jsonl files, long texts windowed."""
    hf = tiny_hf_folder(task, tmp_path / "hf")
    files = {}
    for name, n, seed in (("train", 90, 1), ("validation", 15, 2), ("test", 15, 3)):
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(r) + "\n" for r in rows(n, list(KEYS), seed, long=True)))
    out = tmp_path / "run"
    argv = base_args(out, train_file=files["train"], validation_file=files["validation"], test_file=files["test"],
                     init_checkpoint=hf, long_text="window", stride=4, max_seq_length=16, max_steps=6, eval_steps=3,
                     learning_rate=1e-3)
    assert finetune.main(argv) == 0
    report = json.loads((out / "test_report.json").read_text())
    assert report["labels"] == ["cardiac", "infection", "renal"] and report["documents"] == 15
    assert report["sequences"] > 15 and report["long_text"] == "window"  # several windows per document
    assert set(report["per_class"]) == {"cardiac", "infection", "renal"} and 0 <= report["auroc_ovr"] <= 1
    exported = AutoModelForSequenceClassification.from_pretrained(out / "hf_model")
    assert exported.config.num_labels == 3
    # The encoder started from the folder's weights (one training step later, close to them; the classifier is new).
    src = BertForPreTraining.from_pretrained(hf)
    assert (out / "hf_model" / "vocab.txt").is_file()
    settings = json.loads((out / "finetune_config.json").read_text())
    assert settings["train_sequence_length"] == 16 and settings["labels"] == report["labels"]
    assert src.config.hidden_size == exported.config.hidden_size


def test_from_bundle_checkpoint(task, tmp_path):
    """A pretraining checkpoint of this bundle (its BERT config inside): encoder weights loaded exactly."""
    config = load_model_config(task["config"])
    torch.manual_seed(1)
    model = PretrainingModel(config, objective="mlm")
    save_checkpoint(tmp_path / "pre", 5, {"model": model.state_dict(), "train_state": {"global_step": 5, "phase": 1},
                                          "bert_config": config.to_dict()}, keep=1)
    out = tmp_path / "run"
    argv = base_args(out, train_file=task["binary"], init_checkpoint=tmp_path / "pre", vocab_file=task["vocab"], max_steps=1,
                     eval_steps=1, learning_rate=1e-9, warmup_proportion=0.0)
    assert finetune.main(argv) == 0
    exported = AutoModelForSequenceClassification.from_pretrained(out / "hf_model")
    src = model.hf_model.bert.embeddings.word_embeddings.weight[:task["n_vocab"]]
    assert torch.allclose(exported.bert.embeddings.word_embeddings.weight, src, atol=1e-6)  # lr 1e-9: one negligible step


# torch.compile's first step compiles forward and backward (35 s to minutes on 2 busy cores): `slow`.
@pytest.mark.parametrize("backend,precision", [pytest.param("ort", "fp32", marks=pytest.mark.ort), ("eager", "bf16"),
                                               pytest.param("compile", "fp32", marks=pytest.mark.slow)])
def test_backends_run(task, tmp_path, backend, precision):
    out = tmp_path / "run"
    argv = base_args(out, train_file=task["binary"], config_file=task["config"], vocab_file=task["vocab"], max_steps=2,
                     eval_steps=1, backend=backend, precision=precision, learning_rate=3e-3, gradient_accumulation_steps=2)
    assert finetune.main(argv) == 0
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [2]
    assert json.loads((out / "test_report.json").read_text())["documents"] == 24
    assert (out / "hf_model" / "model.safetensors").is_file()


def test_kill_and_resume_equals_uninterrupted(task, tmp_path, monkeypatch):
    """SIGTERM at step 7 (checkpoint, exit 143), rerun with --resume_from_checkpoint: the losses, the
    validation record, the best step and the test report equal those of an uninterrupted run; dropout on,
    gradient accumulation on."""
    common = dict(train_file=task["binary"], config_file=task["config"], vocab_file=task["vocab"], max_steps=12, eval_steps=3,
                  num_steps_per_checkpoint=5, learning_rate=3e-3, gradient_accumulation_steps=2, patience=0, log_freq=1)
    assert finetune.main(base_args(tmp_path / "ref", **common)) == 0

    original = finetune.EarlyStopping.__call__

    def kill_at_7(self, trainer, record):
        original(self, trainer, record)
        if trainer.global_step == 7:
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(finetune.EarlyStopping, "__call__", kill_at_7)
    assert finetune.main(base_args(tmp_path / "job", **common)) == 143
    assert [s for s, _ in list_checkpoints(tmp_path / "job")] == [5, 7]
    assert not (tmp_path / "job" / "test_report.json").exists()
    monkeypatch.setattr(finetune.EarlyStopping, "__call__", original)
    assert finetune.main(base_args(tmp_path / "job", resume_from_checkpoint=True, **common)) == 0

    ref, job = tmp_path / "ref", tmp_path / "job"
    assert [r["loss"] for r in read_metrics(job / "metrics.jsonl")] == [r["loss"] for r in read_metrics(ref / "metrics.jsonl")]
    assert (job / "validation.jsonl").read_text() == (ref / "validation.jsonl").read_text()
    a, b = (json.loads((d / "test_report.json").read_text()) for d in (ref, job))
    assert a == b


def test_early_stopping_stops_and_a_rerun_keeps_the_result(task, tmp_path):
    """lr so small nothing improves: patience 2 stops at the third evaluation; rerunning with
    --resume_from_checkpoint does not train further."""
    common = dict(train_file=task["binary"], config_file=task["config"], vocab_file=task["vocab"], max_steps=50, eval_steps=2,
                  learning_rate=1e-9, patience=2, dropout=0.0)
    out = tmp_path / "run"
    assert finetune.main(base_args(out, **common)) == 0
    summary = json.loads((out / "finetune_summary.json").read_text())
    assert summary["finished_early"] is True and summary["global_step"] == 6 and summary["best_step"] == 2
    assert [s for s, _ in list_checkpoints(out)][-1] == 6
    assert finetune.main(base_args(out, resume_from_checkpoint=True, **common)) == 0
    assert json.loads((out / "finetune_summary.json").read_text())["global_step"] == 6


@pytest.mark.parametrize("case,message", [
    ("missing_column", r"train\.csv: no column 'dx' \(--label_column\)"),
    ("one_class", r"train\.csv: column 'dx' \(--label_column\) holds one class only"),
    ("unknown_test_label", r"test\.csv: column 'dx' \(--label_column\) has label value\(s\) the training data lacks: \{'renal': 5\}"),
    ("unknown_validation_label", r"dev\.csv: column 'dx' .* lacks: \{'renal': 5\}"),
])
def test_bad_input_names_file_and_column(task, tmp_path, capsys, case, message):
    train = rows(40, ["infection", "cardiac"])
    extra = {}
    if case == "missing_column":
        train = [{"note": r["note"], "diagnosis": r["dx"]} for r in train]
    elif case == "one_class":
        train = rows(40, ["infection"])
    elif case == "unknown_test_label":
        extra["test_file"] = write_csv(tmp_path / "test.csv", rows(15, ["infection", "cardiac", "renal"]))
    else:
        extra["validation_file"] = write_csv(tmp_path / "dev.csv", rows(15, ["infection", "cardiac", "renal"]))
    argv = base_args(tmp_path / "run", train_file=write_csv(tmp_path / "train.csv", train), config_file=task["config"],
                     vocab_file=task["vocab"], max_steps=2, **extra)
    assert finetune.main(argv) == 2
    import re

    err = capsys.readouterr().err
    assert re.search(message, err), err


def test_random_init_needs_config_and_vocab(task, tmp_path):
    with pytest.raises(SystemExit):
        finetune.parse_config(["--train_file", task["binary"], "--vocab_file", task["vocab"]])
    with pytest.raises(SystemExit):
        finetune.parse_config(["--train_file", task["binary"], "--config_file", task["config"]])
