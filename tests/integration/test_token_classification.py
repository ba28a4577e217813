"""`python -m ort_training.finetune --task token_classification` end to end on real PubMed rows (the chemical task
built from the committed pubmed20n0014 sample): tiny BERT (WordPiece) and tiny ModernBERT (byte-level BPE)
train a few steps, evaluate with seqeval, export a `*ForTokenClassification` that reloads and runs in a
`pipeline("token-classification")`; an HF folder initialises the encoder; the ORT backend runs; bad files are
refused with one line naming file and line (exit 2)."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer, BertConfig, BertForPreTraining, pipeline

from cli_runs import flags
from data_prep.downstream import DownstreamConfig, build_task
from data_prep.tokenizer import train_bpe, write_tokenizer_folder
from ort_training import finetune
from ort_training.data.tagged import TaggedTable, encode_tagged
from ort_training.export import save_tokenizer, wordpiece_tokenizer
from ort_training.tasks.token_classification import entity_metrics, predict_tags

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "pubmed"
VOCAB = ASSETS / "bert-base-uncased-vocab.txt"
TAGS = ["O", "B-CHEMICAL", "I-CHEMICAL"]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("chem")
    manifest = build_task(DownstreamConfig(task="chemicals", inputs=[str(ASSETS / "pubmed20n0014_sample.xml.gz")], out_dir=root / "task",
                                           dev_fraction=0.2, test_fraction=0.2))
    (root / "text.txt").write_text("\n".join(" ".join(json.loads(line)["tokens"]) for line in (root / "task" / "train.jsonl").open()))
    write_tokenizer_folder(root / "bpe", train_bpe([root / "text.txt"], 2000, True, 2))
    return {"root": root, "dir": root / "task", "manifest": manifest, "bpe": root / "bpe"}


def args(task, out, **kw):
    a = {"task": "token_classification", "train_file": task["dir"] / "train.jsonl", "validation_file": task["dir"] / "dev.jsonl",
         "test_file": task["dir"] / "test.jsonl", "output_dir": out, "max_seq_length": 64, "stride": 16, "train_batch_size": 16,
         "max_steps": 12, "eval_steps": 6, "patience": 0, "learning_rate": 3e-3, "backend": "eager", "disable_progress_bar": True}
    return flags(a | kw)


def check_run(task, out, family_class, capsys):
    """The report, validation record, predictions and export of a finished run agree with each other."""
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    report = json.loads((out / "test_report.json").read_text())
    test_rows = [json.loads(line) for line in (task["dir"] / "test.jsonl").read_text().splitlines()]
    assert report["documents"] == len(test_rows) == task["manifest"]["abstracts"]["test"]
    assert report["entities"] == task["manifest"]["mentions"]["test"] and report["per_type"]["CHEMICAL"]["support"] == report["entities"]
    assert report["mode"] == "strict" and report["scheme"] == "IOB2" and report["words_not_read"] == 0
    predictions = [json.loads(line) for line in (out / "test_predictions.jsonl").read_text().splitlines()]
    assert [p["tags"] for p in predictions] == [r["tags"] for r in test_rows]
    recomputed = entity_metrics([p["tags"] for p in predictions], [p["predicted"] for p in predictions])
    assert recomputed["entity_f1"] == report["entity_f1"] and recomputed["token_accuracy"] == report["token_accuracy"]
    history = [json.loads(line) for line in (out / "validation.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == [6, 12]
    assert report["best_step"] == max(history, key=lambda r: r["entity_f1"])["step"] == printed["best_step"]
    assert printed["test"]["entity_f1"] == report["entity_f1"]
    # The export: the family's token classifier with its tokenizer and tag names; it predicts what the report says.
    model = AutoModelForTokenClassification.from_pretrained(out / "hf_model").eval()
    tok = AutoTokenizer.from_pretrained(out / "hf_model")
    assert type(model).__name__ == family_class
    assert model.config.id2label == dict(enumerate(TAGS)) and model.config.label2id == {t: i for i, t in enumerate(TAGS)}
    table = TaggedTable(Path("test"), [r["tokens"] for r in test_rows], [r["tags"] for r in test_rows], list(range(len(test_rows))))
    predicted, _ = predict_tags(model, encode_tagged("test", table, TAGS, tok, 64, "window", 16), 32, torch.device("cpu"))
    assert predicted == [p["predicted"] for p in predictions]
    tagger = pipeline("token-classification", model=str(out / "hf_model"), aggregation_strategy="simple", device=-1)
    text = " ".join(test_rows[0]["tokens"][:60])
    entities = tagger(text)
    assert isinstance(entities, list) and all(e["entity_group"] == "CHEMICAL" and text[e["start"]:e["end"]] for e in entities)
    return report


def test_tiny_bert_from_random_init(task, tmp_path, capsys):
    out = tmp_path / "bert"
    assert finetune.main(args(task, out, config_file="tiny", vocab_file=VOCAB)) == 0
    report = check_run(task, out, "BertForTokenClassification", capsys)
    assert report["init_checkpoint"] is None
    assert json.loads((out / "finetune_config.json").read_text())["labels"] == TAGS


def test_tiny_modernbert_with_bpe(task, tmp_path, capsys):
    out = tmp_path / "modernbert"
    assert finetune.main(args(task, out, config_file="modernbert_tiny", vocab_file=task["bpe"], label_all_subtokens=True)) == 0
    check_run(task, out, "ModernBertForTokenClassification", capsys)


def test_hf_folder_initialises_the_encoder(task, tmp_path, capsys):
    """A pretrained folder (BERT with a pooler) starts a token classifier (no pooler); the encoder's weights arrive."""
    folder = tmp_path / "init"
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=30522,
                        max_position_embeddings=128)
    torch.manual_seed(0)
    source = BertForPreTraining(config)
    source.save_pretrained(folder)
    save_tokenizer(wordpiece_tokenizer(VOCAB), folder)
    out = tmp_path / "run"
    assert finetune.main(args(task, out, init_checkpoint=folder, max_steps=1, eval_steps=1, learning_rate=1e-12, test_file=None,
                              test_fraction=0)) == 0
    capsys.readouterr()
    model = AutoModelForTokenClassification.from_pretrained(out / "hf_model")
    assert torch.allclose(model.bert.encoder.layer[1].output.dense.weight, source.bert.encoder.layer[1].output.dense.weight, atol=1e-6)
    assert model.bert.pooler is None and not (out / "test_report.json").exists()


@pytest.mark.ort
def test_ort_backend(task, tmp_path, capfd):
    """capfd, not capsys: ORTModule redirects the stdout file descriptor while it exports."""
    out = tmp_path / "ort"
    assert finetune.main(args(task, out, config_file="tiny", vocab_file=VOCAB, backend="ort")) == 0
    check_run(task, out, "BertForTokenClassification", capfd)


def test_hpo_search_follows_entity_f1(task, tmp_path, capsys):
    """--hpo_trials on the tagging task: the study maximises the validation entity F1 early stopping keeps, and the
    best trial's token classifier is exported to OUTPUT_DIR."""
    space = tmp_path / "space.yaml"
    space.write_text("hpo:\n  learning_rate: {low: 1.0e-3, high: 1.0e-2, log: true}\n")
    out = tmp_path / "hpo"
    assert finetune.main(args(task, out, config_file="tiny", vocab_file=VOCAB, hpo_trials=2, hpo_space=space, max_steps=2, eval_steps=1,
                              test_file=None, test_fraction=0)) == 0
    capsys.readouterr()
    report = json.loads((out / "hpo_report.json").read_text())
    assert report["objective"]["metric"] == "entity_f1" and report["objective"]["direction"] == "maximize"
    done = [t for t in report["trials"] if t["state"] == "COMPLETE"]
    assert len(done) == 2 and report["best_trial"]["number"] == max(done, key=lambda t: t["value"])["number"]
    for t in done:  # each trial's value is the best validation entity F1 of its run
        history = [json.loads(line) for line in (Path(t["output_dir"]) / "validation.jsonl").read_text().splitlines()]
        assert t["value"] == max(r["entity_f1"] for r in history)
    assert type(AutoModelForTokenClassification.from_pretrained(out / "hf_model")).__name__ == "BertForTokenClassification"


@pytest.mark.parametrize("name,body,message", [
    ("train.conll", "Aspirin\tB-CHEMICAL\nwas\tO\ngiven\n", "train.conll: line 3: expected a word and its tag"),
    ("train.jsonl", '{"tokens": ["Aspirin", "was", "given"], "tags": ["B-CHEMICAL", "O"]}\n', "train.jsonl: line 1: 3 tokens but 2 tags"),
    ("train.conll", "Aspirin\tCHEMICAL\n", "train.conll: line 1: tag 'CHEMICAL' is not IOB2"),
    ("train.jsonl", '{"tokens": ["a"], "tags": ["O"]}\n', "every tag is O"),
])
def test_bad_files_exit_2_with_one_line(task, tmp_path, capsys, name, body, message):
    (tmp_path / name).write_text(body)
    rc = finetune.main(args(task, tmp_path / "out", train_file=tmp_path / name, config_file="tiny", vocab_file=VOCAB))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("finetune: error: ") and message in err[0] and str(tmp_path) in err[0]


def test_unknown_tag_in_the_test_file(task, tmp_path, capsys):
    (tmp_path / "test.jsonl").write_text('{"tokens": ["BRCA1"], "tags": ["B-GENE"]}\n')
    rc = finetune.main(args(task, tmp_path / "out", test_file=tmp_path / "test.jsonl", config_file="tiny", vocab_file=VOCAB))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "test.jsonl: document at line 1: tag 'B-GENE' does not occur in the training data" in err
