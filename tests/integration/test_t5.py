"""The encoder-decoder path (issue 29): a tiny T5 (T5ForConditionalGeneration) pretrained with span corruption and
with DEPTH's sentence un-shuffling on packed sequences with sentence boundaries (format version 2), on the eager
and ORT backends (ORT's fallback to PyTorch disabled), exact resume after a SIGTERM, an export that
AutoModelForSeq2SeqLM loads with its tokenizer (sentinels and sentence tokens appended) and that generates, and the
refusals: SDPA attention, fp16, data without sentence boundaries, a vocabulary with no room for the reserved ids."""

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
from ort_training.errors import UsageError
from ort_training.loop.metrics import read_metrics
from ort_training.loop.trainer import Trainer

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD, UNK, CLS, SEP, MASK = range(5)
VOCAB = 64
STEPS = 6
SEQ = 48


def write_tokenizer(folder: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS)} | {f"w{i}": i for i in range(len(SPECIALS), VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(folder)
    return folder


def documents(n: int, seed: int) -> list[list[np.ndarray]]:
    """Documents of 2-4 'sentences' a model can learn to order: a sentence is a run of consecutive word ids starting
    where the previous one ended, so order and spans are both predictable."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        at = int(rng.integers(len(SPECIALS), VOCAB - 30))
        sentences = []
        for _ in range(int(rng.integers(2, 5))):
            k = int(rng.integers(3, 7))
            sentences.append(np.arange(at, at + k) % (VOCAB - len(SPECIALS)) + len(SPECIALS))
            at += k
        docs.append(sentences)
    return docs


def write_packed(path: Path, n: int, seed: int, sentences: bool = True) -> None:
    packer = packed_schema.SentencePacker(SEQ, CLS, SEP)
    pairs = []
    for doc in documents(n, seed):
        starts = np.cumsum([0] + [len(s) for s in doc[:-1]])
        pairs += packer.add(np.concatenate(doc).astype(np.int32), starts)
    pairs += packer.flush()
    attrs = packed_schema.PackedAttrs(SEQ, VOCAB, CLS, SEP, PAD, MASK, (UNK,))
    packed_schema.write_file(path, [p[0] for p in pairs], attrs, [p[1] for p in pairs] if sentences else None)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("t5")
    for name in ("train", "val", "v1"):
        (root / name).mkdir()
    for i in range(2):
        write_packed(root / "train" / f"docs_training_{i}.hdf5", 96, seed=i)
    write_packed(root / "val" / "docs_test_0.hdf5", 48, seed=9)
    write_packed(root / "v1" / "docs_training_0.hdf5", 96, seed=0, sentences=False)
    return {"input_dir": str(root / "train"), "eval_dir": str(root / "val"), "no_sentences": str(root / "v1"),
            "vocab_file": str(write_tokenizer(root / "tokenizer")), "root": root}


def config(data, out, objective="span_corruption", backend="eager", **overrides) -> PretrainConfig:
    kw = dict(input_dir=data["input_dir"], vocab_file=data["vocab_file"], config_file="t5_tiny", objective=objective,
              output_dir=str(out), backend=backend, train_batch_size=8, gradient_accumulation_steps=2, max_steps=STEPS,
              learning_rate=3e-2, optimizer="adamwscale", lr_schedule="cosine", warmup_proportion=0.2, seed=3,
              num_steps_per_checkpoint=2, disable_progress_bar=True, dropout=0.1)
    return PretrainConfig(**{**kw, **overrides})


def train(cfg: PretrainConfig, stop_at: int | None = None) -> tuple[dict, dict]:
    trainer = Trainer(cfg)
    losses = {}

    def hook(tr, rec):
        losses[rec["step"]] = rec["loss"]
        if stop_at is not None and tr.global_step == stop_at:
            signal.raise_signal(signal.SIGTERM)

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


def test_span_loss_is_hugging_faces_labelled_loss(data):
    """The objective's loss is T5ForConditionalGeneration's own loss with the batch's labels (HF shifts them into the
    decoder input exactly as the collator does)."""
    from ort_training.data.collate_t5 import SpanCorruptionCollator
    from ort_training.data.packed import PackedDataLoader
    from ort_training.models import load_model_config
    from ort_training.models.pretraining import PretrainingModel

    torch.manual_seed(0)
    model = PretrainingModel(load_model_config("t5_tiny"), objective="span_corruption").eval()
    files = sorted(Path(data["input_dir"]).glob("*.hdf5"))
    batch = next(iter(PackedDataLoader(files, 4, 0, SpanCorruptionCollator(), prefetch=False)))
    model.hf_model.config.decoder_start_token_id = PAD
    with torch.no_grad():
        ours, stats = model(*model.inputs(batch))
        theirs = model.hf_model(input_ids=batch["input_ids"], attention_mask=batch["input_mask"], labels=batch["labels"]).loss
    assert float(ours) == pytest.approx(float(theirs), rel=1e-6)
    assert stats[2] == int((batch["labels"] != -100).sum())


def test_hierarchical_encoder_mask_is_the_plain_path_without_hierarchy(data):
    """DEPTH's hierarchical encoder attention (models.t5.hierarchical_logits) gives T5's own scores when no token is
    a sentence token, and other scores when sentence tokens only see their sentence; the hook is removed after."""
    from ort_training.data.collate_t5 import DepthCollator
    from ort_training.data.packed import PackedDataLoader
    from ort_training.models import load_model_config
    from ort_training.models.pretraining import PretrainingModel
    from ort_training.models.t5 import hierarchical_logits
    from ort_training.objectives.span_corruption import seq2seq_logits

    torch.manual_seed(0)
    model = PretrainingModel(load_model_config("t5_tiny"), objective="depth_hierarchical").eval()
    files = sorted(Path(data["input_dir"]).glob("*.hdf5"))
    batch = next(iter(PackedDataLoader(files, 4, 0, DepthCollator(shuffle_probability=1.0), prefetch=False)))
    args = [batch[k] for k in ("input_ids", "input_mask", "decoder_input_ids")]
    hf = model.hf_model
    with torch.no_grad():
        plain = seq2seq_logits(hf, *args)
        off = hierarchical_logits(hf, *args, batch["input_sentence"], torch.zeros_like(batch["input_sentence_token"]))
        on = hierarchical_logits(hf, *args, batch["input_sentence"], batch["input_sentence_token"])
        after = seq2seq_logits(hf, *args)
    assert torch.equal(off, plain) and torch.equal(after, plain)
    assert batch["input_sentence_token"].sum() > 0 and not torch.allclose(on, plain)
    loss, stats = model(*model.inputs(batch))
    assert torch.isfinite(loss) and stats.shape == (6,)


@pytest.mark.parametrize("objective", ["span_corruption", "depth", "depth_hierarchical"])
@pytest.mark.parametrize("backend", ["eager", pytest.param("ort", marks=pytest.mark.ort)])
def test_backends_train_both_objectives(data, tmp_path, backend, objective):
    """Each objective trains; ORT (fallback disabled) takes the same steps as eager."""
    steps = 3
    eager, summary = train(config(data, tmp_path / "reference", objective, dropout=0.0, max_steps=steps, skip_hf_export=True))
    assert summary[f"final_{'span' if objective == 'span_corruption' else 'depth'}_loss"] is not None
    if backend == "eager":
        return
    import os

    os.environ.pop("ORTMODULE_FALLBACK_POLICY", None)
    losses, summary = train(config(data, tmp_path / backend, objective, backend=backend, dropout=0.0, max_steps=steps,
                                   skip_hf_export=True))
    assert summary["backend"] == "ort" and set(losses) == set(eager) == {1, 2, 3}
    for step in eager:
        assert losses[step] == pytest.approx(eager[step], rel=1e-4, abs=1e-5), step


@pytest.mark.parametrize("objective", ["span_corruption", "depth"])
def test_sigterm_and_resume_is_bitwise(data, tmp_path, objective):
    ref, ref_summary = train(config(data, tmp_path / "ref", objective, eval_dir=data["eval_dir"]))
    cut, summary = train(config(data, tmp_path / "cut", objective, eval_dir=data["eval_dir"]), stop_at=3)
    assert summary["preempted"] and max(cut) == 3
    rest, resumed = train(config(data, tmp_path / "cut", objective, eval_dir=data["eval_dir"], resume_from_checkpoint=True))
    assert {**cut, **rest} == ref
    assert weights_digest(tmp_path / "cut" / "hf_model") == weights_digest(tmp_path / "ref" / "hf_model")
    headline = "span_loss" if objective == "span_corruption" else "depth_loss"
    assert resumed[f"eval_{headline}"] == ref_summary[f"eval_{headline}"] < np.log(8448)  # beats uniform over the model's vocabulary
    records = read_metrics(tmp_path / "ref" / "metrics.jsonl")
    assert {headline, "span_accuracy"} <= set(records[-1])
    if objective == "depth":
        assert "sentence_accuracy" in records[-1] and "eval_sentence_accuracy" in ref_summary


def test_export_loads_and_generates_on_a_shuffled_document(data, tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from ort_training.data.collate_t5 import DepthCollator, reserved_tokens

    train(config(data, tmp_path / "out", "depth", max_steps=4))
    hf = tmp_path / "out" / "hf_model"
    model = AutoModelForSeq2SeqLM.from_pretrained(hf, trust_remote_code=False).eval()
    tok = AutoTokenizer.from_pretrained(hf, trust_remote_code=False)
    assert type(model).__name__ == "T5ForConditionalGeneration"
    assert model.config.vocab_size == len(tok) == VOCAB + len(reserved_tokens())
    assert tok.convert_tokens_to_ids(["<extra_id_0>", "<eosen>", "<sent_0>"]) == [VOCAB, VOCAB + 100, VOCAB + 101]
    attrs = packed_schema.read_attrs(Path(data["eval_dir"]) / "docs_test_0.hdf5")
    seqs = packed_schema.read_sequences(Path(data["eval_dir"]) / "docs_test_0.hdf5")
    starts = packed_schema.read_sentence_starts(Path(data["eval_dir"]) / "docs_test_0.hdf5")
    bound = DepthCollator(shuffle_probability=1.0).bind(attrs, SEQ)
    seq = next(packed_schema.iter_sequences(*seqs))
    encoder, _, _, order = bound.example(seq, np.random.default_rng(0), starts[0])
    text = tok.decode(encoder)
    assert "<sent_" in text and "<eosen>" in text
    out = model.generate(input_ids=torch.as_tensor(encoder)[None], max_new_tokens=12, do_sample=False)
    assert out.shape[0] == 1 and 1 < out.shape[1] <= 13
    tok.decode(out[0])


def test_refusals(data, tmp_path):
    with pytest.raises(UsageError, match="--attention sdpa is not available for t5"):
        config(data, tmp_path / "a", attention="sdpa")
    with pytest.raises(UsageError, match="--precision fp16 cannot train t5: T5's activations overflow fp16"):
        config(data, tmp_path / "b", precision="fp16")
    with pytest.raises(Exception, match="holds no sentence boundaries .* rebuild the data with `python -m data_prep packed`"):
        train(config(data, tmp_path / "c", "depth", input_dir=data["no_sentences"], max_steps=1, skip_hf_export=True))
    span, _ = train(config(data, tmp_path / "d", input_dir=data["no_sentences"], max_steps=1, skip_hf_export=True))
    assert set(span) == {1}  # span corruption reads version-1 style files (no sentence boundaries)
    small = tmp_path / "small.json"
    small.write_text(json.dumps({**json.loads((Path(__file__).parents[2] / "ort_training/configs/t5_tiny_config.json").read_text()),
                                 "vocab_size": VOCAB + 8}))
    with pytest.raises(Exception, match=r"reserves 121 more .* vocab_size >= 185"):
        train(config(data, tmp_path / "e", config_file=str(small), max_steps=1, skip_hf_export=True))


def test_depth_sentinels_follow_the_shown_order_not_the_original(data):
    """DEPTH's sentinels are numbered left to right as the encoder shows the shuffled sentences: numbered in the
    original order (as they were), the sentence holding <extra_id_0> came first and the order could be read off the
    ids. The target still restores the text: each sentence in turn, its sentinels filled from the target."""
    from ort_training.data.collate_t5 import DepthCollator, _content, split_sentences

    path = Path(data["input_dir"]) / "docs_training_0.hdf5"
    attrs = packed_schema.read_attrs(path)
    tokens, offsets = packed_schema.read_sequences(path)
    starts = packed_schema.read_sentence_starts(path)
    bound = DepthCollator(shuffle_probability=1.0).bind(attrs, SEQ)
    lay = bound.layout
    shuffled = 0
    for i in range(len(offsets) - 1):
        seq = tokens[offsets[i]:offsets[i + 1]]
        encoder, target, _, order = bound.example(seq, np.random.default_rng([4, i]), starts[i])
        sentinels = [t for t in encoder.tolist() if lay.sentinel0 <= t < lay.eosen]
        assert sentinels == list(range(lay.sentinel0, lay.sentinel0 + len(sentinels))), (i, order)
        shuffled += order != sorted(order) and len(sentinels) > 1
        # Rebuild the text: target order of sentence tokens, each sentence's encoder tokens with its spans put back.
        spans, key = {}, None
        for t in target.tolist()[:-1]:
            if lay.sentinel0 <= t < lay.eosen:
                key = spans.setdefault(t, [])
            elif lay.sent0 <= t < lay.end:
                key = None
            elif key is not None:
                key.append(t)
        units, current = {}, None
        for t in encoder.tolist()[:-1]:
            if lay.sent0 <= t < lay.end:
                current = units.setdefault(t, [])
            elif t != lay.eosen:
                current += spans[t] if lay.sentinel0 <= t < lay.eosen else [t]
        text, lead = _content(seq, attrs)
        truth = split_sentences(text, np.asarray(starts[i], np.int64) - lead, bound.max_sentences)
        written = [t for t in target.tolist() if lay.sent0 <= t < lay.end]
        assert [units[t] for t in written] == [s.tolist() for s in truth]
    assert shuffled > 10


def test_depth_order_is_learnable_on_a_memorised_batch(data):
    """A tiny T5 that sees one fixed batch of shuffled sequences again and again writes all its sentence tokens in the
    original order (teacher forced, 100%): the loss reaches the sentence tokens and their labels line up with the
    decoder's inputs. (Memorising says nothing of generalising: benchmarks/bench_t5_objectives.py measures that.)"""
    from ort_training.data.collate_t5 import DepthCollator
    from ort_training.loop.optim import build_optimizer
    from ort_training.models import load_model_config
    from ort_training.models.pretraining import PretrainingModel

    path = Path(data["input_dir"]) / "docs_training_0.hdf5"
    attrs = packed_schema.read_attrs(path)
    tokens, offsets = packed_schema.read_sequences(path)
    starts = packed_schema.read_sentence_starts(path)
    bound = DepthCollator(shuffle_probability=1.0).bind(attrs, SEQ)
    idx = [i for i in range(len(offsets) - 1) if len(starts[i]) >= 2][:8]
    batch = bound([tokens[offsets[i]:offsets[i + 1]] for i in idx], [np.random.default_rng([8, i]) for i in idx],
                  [starts[i] for i in idx])
    assert batch["labels_sentence"].sum() == 16  # two sentences each (one per 16 tokens of 48)
    torch.manual_seed(0)
    config = load_model_config("t5_tiny")
    config.pad_token_id = config.decoder_start_token_id = PAD
    model = PretrainingModel(config, objective="depth")
    opt = build_optimizer(model, 1e-2, 0.0, 1.0, "adamwscale")
    for _ in range(60):
        loss, stats = model(*model.inputs(batch))
        loss.backward()
        opt.step()
        opt.zero_grad()
    _, stats = model(*model.inputs(batch))
    assert stats[4] == stats[5]  # every sentence token right
