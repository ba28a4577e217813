"""The decoder path (issue 25): a tiny Llama trained with the causal-LM objective on packed sequences, on every
backend (ORT with PyTorch fallback disabled), its loss equal to Hugging Face's own labelled loss, exact resume after
a SIGTERM, export loadable by AutoModelForCausalLM with its tokenizer (generate works), ONNX checked in onnxruntime,
continued pretraining from a published decoder folder, and the refusals of objectives a family or format cannot
train."""

from __future__ import annotations

import hashlib
import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from bundle import packed_schema
from ort_training.config import PretrainConfig
from ort_training.loop.metrics import read_metrics
from ort_training.loop.trainer import Trainer

SPECIALS = ("[PAD]", "[UNK]", "[TL_START]", "[TL_END]", "[MASK]")
PAD, UNK, START, END, MASK = range(5)
VOCAB = 64
STEPS = 6


def write_tokenizer(folder: Path) -> Path:
    """A whitespace WordLevel tokenizer of VOCAB ids (the timeline tokenizer's shape), saved as a Hugging Face folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS)} | {f"ev{i}": i for i in range(len(SPECIALS), VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[TL_START]",
                                   eos_token="[TL_END]", mask_token="[MASK]")
    fast.save_pretrained(folder)
    return folder


def write_sequences(path: Path, n: int, seed: int, max_len: int = 48) -> None:
    """Timeline-like sequences with structure a model can learn: [TL_START], pairs (event, event + 1), [TL_END]."""
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(n):
        pairs = rng.integers(len(SPECIALS), VOCAB - 1, size=int(rng.integers(3, (max_len - 2) // 2)))
        seqs.append(np.concatenate([[START], np.stack([pairs, pairs + 1], 1).reshape(-1), [END]]).astype(np.int32))
    packed_schema.write_file(path, seqs, packed_schema.PackedAttrs(max_len, VOCAB, START, END, PAD, MASK, (UNK,)))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoder")
    (root / "train").mkdir()
    (root / "val").mkdir()
    for i in range(2):
        write_sequences(root / "train" / f"timelines_training_{i}.hdf5", 64, seed=i)
    write_sequences(root / "val" / "timelines_test_0.hdf5", 32, seed=9)
    return {"input_dir": str(root / "train"), "eval_dir": str(root / "val"), "vocab_file": str(write_tokenizer(root / "tokenizer")),
            "root": root}


def config(data, out, backend="eager", **overrides) -> PretrainConfig:
    kw = dict(input_dir=data["input_dir"], vocab_file=data["vocab_file"], config_file="llama_tiny", objective="clm",
              output_dir=str(out), backend=backend, train_batch_size=8, gradient_accumulation_steps=2, max_steps=STEPS,
              learning_rate=3e-3, optimizer="adamw", lr_schedule="cosine", warmup_proportion=0.2, seed=3,
              num_steps_per_checkpoint=2, disable_progress_bar=True, dropout=0.1)
    return PretrainConfig(**{**kw, **overrides})


def train(cfg: PretrainConfig, stop_at: int | None = None) -> tuple[dict, dict]:
    trainer = Trainer(cfg)
    losses = {}

    def hook(tr, rec):
        losses[rec["step"]] = rec["loss"]
        if stop_at is not None and tr.global_step == stop_at:
            signal.raise_signal(signal.SIGTERM)  # what a preemptible VM sends

    trainer.hooks.append(hook)
    try:
        return losses, trainer.train()
    finally:
        trainer.close()


def weights_digest(folder: Path) -> str:
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "model.safetensors"))
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode() + tensors[name].contiguous().numpy().tobytes())
    return h.hexdigest()


def test_clm_loss_is_hugging_faces_labelled_loss():
    """The objective's loss (family-built 4-D mask, targets on real tokens only) is LlamaForCausalLM's own loss with
    labels -100 on padding, under eager and SDPA attention."""
    from ort_training.models import load_model_config
    from ort_training.models.pretraining import PretrainingModel

    torch.manual_seed(0)
    model = PretrainingModel(load_model_config("llama_tiny", attention="eager"), objective="clm").eval()
    ids = torch.randint(5, 1000, (3, 16))
    mask = torch.ones_like(ids)
    mask[1, 10:] = mask[2, 4:] = 0
    ids[mask == 0] = PAD
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        ours, stats = model(ids, mask)
        theirs = model.hf_model(input_ids=ids, attention_mask=mask, labels=labels).loss
        model.config._attn_implementation = "sdpa"
        sdpa, _ = model(ids, mask)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-6)
    assert float(sdpa) == pytest.approx(float(ours), rel=1e-5)
    assert stats[2] == 15 + 9 + 3  # targets: every real token but each sequence's first


@pytest.mark.parametrize("backend", ["eager", "compile", pytest.param("ort", marks=pytest.mark.ort)])
def test_backends_train_the_decoder(data, tmp_path, backend):
    """Each backend trains the same steps as eager (ORT's fallback to PyTorch is disabled: a graph ORT cannot build
    stops the run instead of training in PyTorch under the name ORT)."""
    steps = 3
    eager, _ = train(config(data, tmp_path / "reference", dropout=0.0, max_steps=steps, skip_hf_export=True, attention="eager"))
    if backend == "ort":
        import os

        from ort_training.loop.backends import ort_env

        assert ort_env(0)["ORTMODULE_FALLBACK_POLICY"] == "FALLBACK_DISABLE"
        os.environ.pop("ORTMODULE_FALLBACK_POLICY", None)
    losses, summary = train(config(data, tmp_path / backend, backend=backend, dropout=0.0, max_steps=steps, skip_hf_export=True,
                                   attention="eager"))
    assert summary["backend"] == backend and set(losses) == set(eager) == {1, 2, 3}
    for step in eager:
        assert losses[step] == pytest.approx(eager[step], rel=1e-4, abs=1e-5), step
    if backend == "ort":
        import os

        assert os.environ["ORTMODULE_FALLBACK_POLICY"] == "FALLBACK_DISABLE"


@pytest.mark.ort
def test_ort_refuses_instead_of_falling_back(data, tmp_path, monkeypatch):
    """With transformers' own 2-D mask (what a plain HF forward does) ORTModule cannot export Llama: the run stops,
    it does not train in PyTorch under the name ORT."""
    from ort_training.models import llama

    monkeypatch.setattr(llama, "additive_causal_mask", lambda attention_mask: attention_mask)
    with pytest.raises(Exception) as info:
        train(config(data, tmp_path / "ort", backend="ort", dropout=0.0, max_steps=1, skip_hf_export=True, attention="eager"))
    assert "fallback" not in type(info.value).__name__.lower()


def test_sigterm_and_resume_is_bitwise(data, tmp_path):
    ref, ref_summary = train(config(data, tmp_path / "ref", eval_dir=data["eval_dir"]))
    cut, summary = train(config(data, tmp_path / "cut", eval_dir=data["eval_dir"]), stop_at=3)
    assert summary["preempted"] and max(cut) == 3
    rest, resumed = train(config(data, tmp_path / "cut", eval_dir=data["eval_dir"], resume_from_checkpoint=True))
    assert {**cut, **rest} == ref  # bitwise: dropout, data order and AdamW state restored
    assert weights_digest(tmp_path / "cut" / "hf_model") == weights_digest(tmp_path / "ref" / "hf_model")
    assert resumed["final_clm_loss"] == ref_summary["final_clm_loss"]
    assert resumed["eval_perplexity"] == ref_summary["eval_perplexity"] < VOCAB  # held-out perplexity beats uniform
    records = read_metrics(tmp_path / "ref" / "metrics.jsonl")
    assert {"clm_loss", "clm_accuracy", "perplexity"} <= set(records[-1])


def test_early_stopping_on_eval_loss_and_its_resume(data, tmp_path):
    """--eval_every / --early_stopping_patience (fms-ehrs: patience 3 on the evaluation loss): a learning rate far too
    high makes the held-out loss stop improving; the phase ends early, checkpointed, and exports its best evaluated
    weights; a run preempted before the stop ends at the same step with the same records and the same export."""
    kw = dict(eval_dir=data["eval_dir"], eval_every=1, early_stopping_patience=1, learning_rate=0.5, max_steps=12,
              warmup_proportion=0.0, lr_schedule="poly")
    ref, summary = train(config(data, tmp_path / "ref", **kw))
    records = read_metrics(tmp_path / "ref" / "metrics.jsonl")
    assert summary["global_step"] == max(ref) < 12 and (tmp_path / "ref" / "hf_model").is_dir()
    losses = [r["eval_clm_loss"] for r in records]
    assert losses[-1] >= min(losses[:-1])  # the last evaluation did not improve on the best before it
    assert all(later < best for best, later in zip(losses, losses[1:-1]))  # every one before it did
    cut_at = max(ref) - 1
    train(config(data, tmp_path / "cut", **kw), stop_at=cut_at)
    rest, _ = train(config(data, tmp_path / "cut", resume_from_checkpoint=True, **kw))
    def timeless(rs):
        return [{k: v for k, v in r.items() if k != "seq_per_sec"} for r in rs]

    assert max(rest) == max(ref) and timeless(read_metrics(tmp_path / "cut" / "metrics.jsonl")) == timeless(records)
    # The export holds the best evaluated weights (Hugging Face's load_best_model_at_end), not the last step's: scored
    # again by `evaluate`, it gives the best evaluation's loss; the resumed run exports the same bytes.
    from ort_training import evaluate

    best = min(records, key=lambda r: r["eval_clm_loss"])
    assert best["step"] < max(ref) and summary["exported_weights"] == {"step": best["step"], "eval_clm_loss": best["eval_clm_loss"]}
    again = evaluate.run(["--model_dir", str(tmp_path / "ref" / "hf_model"), "--input_dir", data["eval_dir"], "--split", "test"])
    assert again["clm_loss"] == pytest.approx(best["eval_clm_loss"], rel=1e-5)
    assert weights_digest(tmp_path / "cut" / "hf_model") == weights_digest(tmp_path / "ref" / "hf_model")


def test_export_loads_generates_and_runs_in_onnxruntime(data, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ort_training import evaluate
    from ort_training.export import export_onnx_model

    _, summary = train(config(data, tmp_path / "out", eval_dir=data["eval_dir"]))
    hf = tmp_path / "out" / "hf_model"
    model = AutoModelForCausalLM.from_pretrained(hf, trust_remote_code=False).eval()
    tok = AutoTokenizer.from_pretrained(hf, trust_remote_code=False)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.vocab_size == len(tok) == VOCAB
    prompt = tok("[TL_START] ev10", return_tensors="pt", add_special_tokens=False)
    out = model.generate(**prompt, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape == (1, 6)
    export_onnx_model(hf, tmp_path / "model.onnx")  # verified against PyTorch's logits in onnxruntime, padding included
    result = evaluate.run(["--model_dir", str(hf), "--input_dir", data["eval_dir"], "--split", "test"])
    assert result["perplexity"] == pytest.approx(summary["eval_perplexity"], rel=1e-5)
    assert result["perplexity"] < result["unigram"]["perplexity"] < VOCAB  # the model learnt more than token frequencies


def test_continued_pretraining_from_a_published_decoder(data, tmp_path):
    """A Hugging Face LlamaForCausalLM folder (what a published decoder is) is imported and trained on."""
    from transformers import LlamaForCausalLM

    from ort_training.models import load_model_config

    torch.manual_seed(1)
    config_ = load_model_config("llama_tiny")
    config_.vocab_size = config_.original_vocab_size
    published = LlamaForCausalLM(config_)
    published.save_pretrained(tmp_path / "published")
    cfg = config(data, tmp_path / "out", config_file=None, init_checkpoint=str(tmp_path / "published"), max_steps=2,
                 skip_hf_export=True)
    trainer = Trainer(cfg)
    try:
        got = trainer.model.hf_model.state_dict()["model.layers.0.mlp.up_proj.weight"]
        assert torch.equal(got, published.state_dict()["model.layers.0.mlp.up_proj.weight"])
        assert trainer.train()["global_step"] == 2
    finally:
        trainer.close()


@pytest.mark.parametrize("case", ["clm_on_nvidia_hdf5", "bert_with_clm", "llama_with_mlm"])
def test_objectives_a_family_or_format_cannot_train_are_refused(data, tmp_path, capfd, case):
    from ort_training.data.synthetic import tiny_setup
    from ort_training.run_pretraining import main

    argv = ["--output_dir", str(tmp_path / "out"), "--backend", "eager", "--max_steps", "1", "--train_batch_size", "8",
            "--disable_progress_bar"]
    if case == "clm_on_nvidia_hdf5":
        setup = tiny_setup(tmp_path / "nv", n_files=1, n_per_file=16, seq_len=32, max_pred=5)
        argv += ["--input_dir", setup["input_dir"], "--config_file", "llama_tiny", "--objective", "clm"]
        needle = "NVIDIA-schema HDF5 holds masked-LM instances"
    elif case == "bert_with_clm":
        argv += ["--input_dir", data["input_dir"], "--config_file", "tiny", "--objective", "clm"]
        needle = "--objective clm is not available for bert"
    else:
        argv += ["--input_dir", data["input_dir"], "--config_file", "llama_tiny", "--objective", "mlm"]
        needle = "pass --objective clm"
    capfd.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    err = capfd.readouterr().err
    assert rc == 2 and "Traceback" not in err and needle in err, err[-2000:]
    assert not (tmp_path / "out" / "checkpoints").exists()
    json.dumps(err)  # one readable line
