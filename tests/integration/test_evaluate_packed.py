"""`python -m ort_training.evaluate` on packed held-out files scores an export with its family's plain pretraining
objective, batched by that objective's own collator: span-corruption loss for T5 (a DEPTH export on the very batches a
span-corruption export is scored on, so the two compare), beside the uniform distribution and an untrained model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from test_t5 import VOCAB, config, train, write_packed, write_tokenizer  # the T5 tests' tiny, learnable documents

from bundle import packed_schema
from ort_training import evaluate
from ort_training.data.collate_t5 import reserved_tokens


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_t5")
    for name in ("train", "val"):
        (root / name).mkdir()
    write_packed(root / "train" / "docs_training_0.hdf5", 128, seed=1)
    write_packed(root / "val" / "docs_test_0.hdf5", 48, seed=9)
    data = {"input_dir": str(root / "train"), "vocab_file": str(write_tokenizer(root / "tokenizer"))}
    for objective in ("span_corruption", "depth"):
        train(config(data, root / objective, objective, max_steps=12, dropout=0.0, skip_hf_export=False))
    return {"val": str(root / "val"), **{o: str(root / o / "hf_model") for o in ("span_corruption", "depth")}}


def scored(model_dir: str, val: str, *extra: str) -> dict:
    return evaluate.run(["--model_dir", model_dir, "--input_dir", val, "--split", "test", "--batch_size", "16", *extra])


def test_t5_exports_are_scored_on_the_same_span_corrupted_batches(exports):
    span, again = scored(exports["span_corruption"], exports["val"]), scored(exports["span_corruption"], exports["val"])
    depth = scored(exports["depth"], exports["val"])
    untrained = scored(exports["span_corruption"], exports["val"], "--untrained")
    assert span == again  # the held-out batches are drawn as the loader draws epoch 0 of --seed: the same every time
    assert span["objective"] == depth["objective"] == "span_corruption"
    held_out = sum(1 for _ in packed_schema.iter_sequences(*packed_schema.read_sequences(Path(exports["val"]) / "docs_test_0.hdf5")))
    assert span["tokens"] == depth["tokens"] == untrained["tokens"] > 0 and span["sequences"] == held_out  # each once
    assert span["uniform_span_loss"] == pytest.approx(math.log(VOCAB + len(reserved_tokens())))
    assert math.isfinite(depth["span_loss"]) and depth["span_loss"] != span["span_loss"]
    # 12 steps on documents whose spans continue a run of word ids: well below an untrained model and the uniform loss
    assert span["span_loss"] < min(untrained["span_loss"], span["uniform_span_loss"]) - 0.5, (span, untrained)


def test_probe_reads_t5s_encoder(exports, tmp_path):
    """The linear probe represents a text by T5's encoder states (the decoder needs targets a probe has none of)."""
    import torch

    from ort_training import probe

    rows = ["text,label"] + [f"{' '.join(f'w{i + k}' for k in range(5))},{'low' if i < 30 else 'high'}" for i in range(5, 55)]
    (tmp_path / "task.csv").write_text("\n".join(rows) + "\n")
    cfg = dict(model_dir=exports["span_corruption"], train_file=str(tmp_path / "task.csv"), test_file=str(tmp_path / "task.csv"))
    trained, untrained = probe.run(probe.ProbeConfig(**cfg)), probe.run(probe.ProbeConfig(**cfg, untrained=True))
    assert trained["model_type"] == untrained["model_type"] == "t5" and trained["features"] == 64  # t5_tiny's d_model
    assert trained["test"]["rows"] == 50 and untrained["untrained"] and not trained["untrained"]
    model, tokenizer = probe.load_model(probe.ProbeConfig(**cfg))
    assert type(model).__name__ == "T5Stack" and not model.is_decoder
    ids = tokenizer(["w5 w6 w7"], return_tensors="pt")
    with torch.inference_mode():
        assert model(**ids).last_hidden_state.shape == (1, ids["input_ids"].shape[1], 64)
