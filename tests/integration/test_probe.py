"""`python -m ort_training.probe`: a linear probe on frozen features, deterministic (the same JSON twice), any family
AutoModel loads (an encoder with mean / cls pooling, a decoder with last-token pooling), refusals in one line (exit 2)."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel

from ort_training import probe

REPO = Path(__file__).resolve().parents[2]
VOCAB = REPO / "tests" / "assets" / "pubmed" / "bert-base-uncased-vocab.txt"
WORDS = {"methods": "we randomly assigned patients to receive the drug or placebo",
         "results": "the mortality was significantly lower in the treated group",
         "background": "heart failure is a common cause of death in older adults"}


def _write(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    rows = []
    for i in range(60):
        label = list(WORDS)[i % 3]
        words = WORDS[label].split()
        rows.append((" ".join(words[i % 4:] + words[: i % 4]), label))
    train = _write(root / "train.csv", rows[:42])
    test = _write(root / "test.csv", rows[42:])
    torch.manual_seed(0)
    bert = root / "bert"
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=64)).save_pretrained(bert)
    shutil.copy(VOCAB, bert / "vocab.txt")
    llama = root / "llama"
    LlamaModel(LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           num_key_value_heads=2, max_position_embeddings=64)).save_pretrained(llama)
    shutil.copy(VOCAB, llama / "vocab.txt")
    return {"root": root, "train": train, "test": test, "bert": bert, "llama": llama}


def _argv(s, model, *extra):
    return ["--model_dir", str(s[model]), "--train_file", str(s["train"]), "--test_file", str(s["test"]), *extra]


def _cli(argv):
    return subprocess.run([sys.executable, "-m", "ort_training.probe", *argv], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_same_json_twice_and_scores(setup, capsys):
    first = _cli(_argv(setup, "bert", "--dev_file", str(setup["test"])))  # the command line once, then in-process
    assert first.returncode == 0, first.stderr
    assert probe.main(_argv(setup, "bert", "--dev_file", str(setup["test"]))) == 0
    lines = [first.stdout.strip().splitlines(), capsys.readouterr().out.strip().splitlines()]
    assert [len(x) for x in lines] == [1, 1]  # one JSON line each
    a, b = (json.loads(x[0]) for x in lines)
    a.pop("seconds"), b.pop("seconds")
    assert a == b
    assert a["model_type"] == "bert" and a["pooling"] == "mean" and a["train_rows"] == 42 and a["features"] == 32
    assert a["test"]["rows"] == 18 and 0 <= a["macro_f1"] <= 1 and a["accuracy"] == a["test"]["accuracy"]
    assert a["dev"] == a["test"]  # the same file scored twice gives the same numbers


def test_untrained_seeds_subset_and_decoder_pooling(setup):
    cfg = probe.ProbeConfig(model_dir=str(setup["bert"]), train_file=str(setup["train"]), test_file=str(setup["test"]),
                            untrained=True, seed=3, max_train=30, pooling="cls")
    a, b = probe.run(cfg), probe.run(cfg)
    assert a["untrained"] and a["seed"] == 3 and a["train_rows"] == 30 and a["test"] == b["test"]
    assert list(probe.subset(42, 30)) == sorted(probe.subset(42, 30)) and len(set(probe.subset(42, 30))) == 30
    last = probe.run(probe.ProbeConfig(model_dir=str(setup["llama"]), train_file=str(setup["train"]), test_file=str(setup["test"]),
                                       pooling="last"))
    assert last["model_type"] == "llama" and last["pooling"] == "last" and last["features"] == 32
    # `last` reads the last real token of each right-padded row, not the padding after it.
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert probe.pool(hidden, mask, "last").flatten().tolist() == [1.0, 7.0]
    assert probe.pool(hidden, mask, "mean").flatten().tolist() == [0.5, 5.5]


@pytest.mark.parametrize("change, message", [
    ({"model_dir": "nowhere"}, "--model_dir nowhere: not a folder"),
    ({"text_column": "sentence"}, "'sentence'"),
    ({"max_train": "1"}, "--max_train 1: must be at least 2"),
    ({"test_file": "unknown_label"}, "labels the training rows lack: 'conclusions'"),
    ({"train_file": "one_label"}, "hold one label ('methods')"),
])
def test_refusals_are_one_line(setup, capsys, change, message):
    root = setup["root"]
    _write(root / "unknown_label.csv", [("the drug worked", "conclusions")])
    _write(root / "one_label.csv", [("we assigned patients", "methods"), ("we gave the drug", "methods")])
    values = {"model_dir": str(setup["bert"]), "train_file": str(setup["train"]), "test_file": str(setup["test"]),
              "text_column": "text", "max_train": None}
    for key, value in change.items():
        values[key] = str(root / f"{value}.csv") if key.endswith("_file") else value
    argv = ["--model_dir", values["model_dir"], "--train_file", values["train_file"], "--test_file", values["test_file"],
            "--text_column", values["text_column"]] + (["--max_train", values["max_train"]] if values["max_train"] else [])
    assert probe.main(argv) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and lines[0].startswith("probe: error: ") and message in lines[0], err
