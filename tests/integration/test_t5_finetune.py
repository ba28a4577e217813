"""Fine-tuning a T5 export (issue 29): the encoder with a mean-pooled classifier (models/t5_classifier.py) takes the
export's encoder weights, learns a small single_label task, and its hf_model/ loads back (the bundle's class and
`python -m ort_training.predict`) with fine-tuning's own test predictions; the random-init control (--config_file
+ --vocab_file of the same export) runs from weights that are not the export's."""

from __future__ import annotations

import csv
import json
import random

import numpy as np
import pytest
import torch

from cli_runs import flags, write_csv
from ort_training import finetune, predict

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
FILLER = [f"w{i}" for i in range(40)]
KEYS = {"METHODS": ["randomised", "enrolled", "measured"], "RESULTS": ["increased", "significant", "reduced"],
        "BACKGROUND": ["unknown", "common", "burden"]}
RESERVED = 121  # sentinels, <eosen> and sentence tokens the T5 objectives append (data/collate_t5.reserved_tokens)


def rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = list(KEYS)[i % len(KEYS)]
        words = [rng.choice(FILLER) for _ in range(rng.randint(5, 14))]
        for _ in range(2):
            words.insert(rng.randrange(len(words) + 1), rng.choice(KEYS[label]))
        out.append({"sid": f"s{seed}-{i}", "text": " ".join(words), "label": label})
    return out



@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A T5ForConditionalGeneration folder as the pretraining export writes it (shipped t5_tiny shape, the data
    tokenizer's [PAD]/[SEP] as pad/EOS, the 121 reserved tokens appended: a vocabulary that is not a multiple of 8)
    and train / validation / test files."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    from ort_training.models import resolve_config_file

    root = tmp_path_factory.mktemp("t5ft")
    words = SPECIALS + FILLER + sorted({k for v in KEYS.values() for k in v})
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    fast.add_tokens([f"<extra_id_{i}>" for i in range(RESERVED)], special_tokens=True)
    shipped = json.loads(open(resolve_config_file("t5_tiny")).read())
    config = T5Config(**{**shipped, "vocab_size": len(fast), "pad_token_id": 0, "decoder_start_token_id": 0,
                         "eos_token_id": 3, "dropout_rate": 0.0})
    torch.manual_seed(0)
    export = root / "t5_export"
    T5ForConditionalGeneration(config).save_pretrained(export)
    fast.save_pretrained(export)
    return {"export": export, "n_vocab": len(fast), "train": write_csv(root / "train.csv", rows(150, 1)),
            "dev": write_csv(root / "dev.csv", rows(30, 2)), "test": write_csv(root / "test.csv", rows(30, 3))}


def args(task, out, **kw) -> list[str]:
    return flags({"train_file": task["train"], "validation_file": task["dev"], "test_file": task["test"], "output_dir": str(out),
                  "task": "single_label", "max_seq_length": 24, "train_batch_size": 16, "max_steps": 60, "eval_steps": 20,
                  "learning_rate": 3e-3, "patience": 0, "seed": 1, "backend": "eager", "disable_progress_bar": True,
                  "device": "cpu"} | kw)


def test_classifier_takes_the_export_encoder(task):
    """The classifier's encoder and shared embedding are the export's tensors (vocab rows padded for training);
    the decoder and lm_head are not in it; the random-init build shares none of them."""
    from safetensors.torch import load_file

    from ort_training.models import load_model_config
    from ort_training.models.t5_classifier import T5EncoderForSequenceClassification
    from ort_training.objectives import SequenceClassification

    saved = load_file(str(task["export"] / "model.safetensors"))
    config_file = str(task["export"] / "config.json")
    model = SequenceClassification(list(KEYS), init_checkpoint=str(task["export"])).build(load_model_config(config_file))
    assert type(model) is T5EncoderForSequenceClassification
    state = model.state_dict()
    assert not [k for k in state if "decoder" in k or "lm_head" in k]
    n = task["n_vocab"]
    assert state["transformer.shared.weight"].shape[0] % 8 == 0 and state["transformer.shared.weight"].shape[0] > n
    assert torch.equal(state["transformer.shared.weight"][:n], saved["shared.weight"])
    for name in ("encoder.block.0.layer.0.SelfAttention.q.weight", "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                 "encoder.block.1.layer.1.DenseReluDense.wo.weight", "encoder.final_layer_norm.weight"):
        assert torch.equal(state[f"transformer.{name}"], saved[name]), name
    random_init = SequenceClassification(list(KEYS)).build(load_model_config(config_file))
    assert not torch.equal(random_init.state_dict()["transformer.encoder.block.0.layer.0.SelfAttention.q.weight"],
                           saved["encoder.block.0.layer.0.SelfAttention.q.weight"])


def read_predictions(path) -> tuple[list[str], np.ndarray]:
    with open(path) as fh:
        table = list(csv.DictReader(fh))
    cols = sorted(k for k in table[0] if k.startswith("p_"))
    return [r["predicted"] for r in table], np.array([[float(r[c]) for c in cols] for r in table])


@pytest.fixture(scope="module")
def finetuned(task, tmp_path_factory):
    out = tmp_path_factory.mktemp("t5run") / "run"
    assert finetune.main(args(task, out, init_checkpoint=str(task["export"]))) == 0
    return out


def test_finetune_export_saves_and_loads_back(task, finetuned, tmp_path):
    from transformers import AutoTokenizer

    from ort_training.inference import load_torch_classifier
    from ort_training.models.t5_classifier import T5EncoderForSequenceClassification

    out = finetuned
    report = json.loads((out / "test_report.json").read_text())
    assert report["macro_f1"] > 0.9, report  # the keyword rule, learnt in 60 steps
    hf = out / "hf_model"
    config = json.loads((hf / "config.json").read_text())
    assert config["architectures"] == ["T5EncoderForSequenceClassification"] and config["model_type"] == "t5"
    assert set(config["label2id"]) == set(KEYS)
    # Loaded back two ways (the class; the bundle's scoring loader, which must not pick T5ForSequenceClassification)
    model = T5EncoderForSequenceClassification.from_pretrained(hf).eval()
    assert type(load_torch_classifier(hf)) is T5EncoderForSequenceClassification
    assert model.config.vocab_size == task["n_vocab"]
    tok = AutoTokenizer.from_pretrained(hf)
    texts = [r["text"] for r in csv.DictReader(open(task["test"]))]
    with torch.no_grad():
        enc = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=24)
        probs = torch.softmax(model(**enc).logits, -1).numpy()
    predicted, want = read_predictions(out / "test_predictions.csv")
    labels = [model.config.id2label[i] for i in range(len(KEYS))]
    assert [labels[i] for i in probs.argmax(1)] == predicted
    np.testing.assert_allclose(probs, want, atol=1e-4)
    # python -m ort_training.predict on the folder gives the same probabilities
    scored = tmp_path / "scored.csv"
    assert predict.main(flags({"model_dir": str(hf), "input_file": task["test"], "output_file": str(scored), "engine": "torch",
                               "disable_progress_bar": True})) == 0
    with open(scored) as fh:
        table = list(csv.DictReader(fh))
    np.testing.assert_allclose([[float(r[f"p_{lab}"]) for lab in labels] for r in table], probs, atol=1e-4)


@pytest.mark.onnx
def test_onnx_engine_agrees_with_pytorch(task, finetuned, tmp_path):
    """predict's default engine exports the encoder classifier to ONNX (checked against PyTorch there) and scores
    with fine-tuning's test probabilities."""
    scored = tmp_path / "onnx.csv"
    assert predict.main(flags({"model_dir": str(finetuned / "hf_model"), "input_file": task["test"], "output_file": str(scored),
                               "engine": "onnx", "cache_dir": str(tmp_path / "cache"), "disable_progress_bar": True})) == 0
    _, want = read_predictions(finetuned / "test_predictions.csv")
    with open(scored) as fh:
        table = list(csv.DictReader(fh))
    cols = sorted(k for k in table[0] if k.startswith("p_"))
    np.testing.assert_allclose([[float(r[c]) for c in cols] for r in table], want, atol=1e-4)


@pytest.mark.ort
def test_ort_backend_trains_as_eager(task, tmp_path):
    """finetune's default backend: ORTModule trains the encoder classifier with eager's losses."""
    from ort_training.loop.metrics import read_metrics

    losses = {}
    for backend in ("eager", "ort"):
        out = tmp_path / backend
        assert finetune.main(args(task, out, init_checkpoint=str(task["export"]), backend=backend, max_steps=3, eval_steps=3,
                                  log_freq=1)) == 0
        losses[backend] = [r["loss"] for r in read_metrics(out / "metrics.jsonl")]
    assert len(losses["ort"]) == 3
    np.testing.assert_allclose(losses["ort"], losses["eager"], rtol=1e-4)


def test_random_init_control_runs(task, tmp_path):
    """The control: the same config and tokenizer, no weights (--config_file + --vocab_file, the finetune baseline)."""
    out = tmp_path / "control"
    assert finetune.main(args(task, out, config_file=str(task["export"] / "config.json"), vocab_file=str(task["export"]),
                              max_steps=20)) == 0
    report = json.loads((out / "test_report.json").read_text())
    assert report["init_checkpoint"] is None and report["documents"] == 30
    assert json.loads((out / "hf_model" / "config.json").read_text())["architectures"] == ["T5EncoderForSequenceClassification"]


def test_token_classification_is_refused_in_one_line(task, tmp_path, capsys):
    conll = tmp_path / "tags.conll"
    conll.write_text("".join(f"w{i} O\nrandomised B-X\n\n" for i in range(8)))
    argv = flags({"task": "token_classification", "train_file": str(conll), "validation_file": str(conll), "test_file": str(conll),
                  "init_checkpoint": str(task["export"]), "output_dir": str(tmp_path / "out"), "backend": "eager", "max_steps": 2,
                  "train_batch_size": 2, "device": "cpu", "disable_progress_bar": True})
    assert finetune.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("finetune: error: t5 has no token_classification model here") and "Traceback" not in "".join(err)
