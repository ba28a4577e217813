"""A model or tokenizer folder that names custom code (`auto_map`) is refused by every loader, naming the file
(issue 15, class 5): the bundle never runs code from a folder, and never asks on a terminal."""

import json

import pytest
from transformers import BertConfig, BertForMaskedLM

from ort_training.evaluate import EvalConfig, evaluate
from ort_training.export import load_tokenizer
from ort_training.weights_import import load_into

AUTO_MAP = {"AutoModelForMaskedLM": "modeling_evil.EvilModel"}


@pytest.fixture
def folder(tmp_path):
    config = BertConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    BertForMaskedLM(config).save_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_text("".join(f"{t}\n" for t in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijk"]))
    return tmp_path


def _add_auto_map(path):
    content = json.loads(path.read_text())
    path.write_text(json.dumps({**content, "auto_map": AUTO_MAP}))


def test_config_auto_map_is_refused_by_import_and_evaluate(folder, tmp_path):
    _add_auto_map(folder / "config.json")
    target = BertForMaskedLM(BertConfig.from_pretrained(folder))
    with pytest.raises(ValueError, match=r"config.json: names custom code \(auto_map"):
        load_into(target, folder)
    with pytest.raises(ValueError, match=r"config.json: names custom code"):
        evaluate(EvalConfig(model_dir=str(folder), input_dir=str(tmp_path)))


def test_tokenizer_config_auto_map_is_refused(folder):
    load_tokenizer(folder / "vocab.txt")  # a plain vocab.txt runs no code
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "WordLevel", "vocab": {"[UNK]": 0},
                                                                                   "unk_token": "[UNK]"}}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "auto_map": AUTO_MAP}))
    with pytest.raises(ValueError, match=r"tokenizer_config.json: names custom code"):
        load_tokenizer(folder)
