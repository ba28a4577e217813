"""--attention for BERT (issue 14): eager and SDPA give the same losses and the same export, `auto` resolves per
device from the family's table, and ORT runs eager only. (ModernBERT's pair: test_modernbert.py.)"""

import json

import pytest
import torch
from safetensors.torch import load_file

from ort_training.config import PretrainConfig
from ort_training.data.synthetic import tiny_setup
from ort_training.loop.trainer import Trainer
from ort_training.models import BERT, MODERNBERT


def _train(setup, out, attention):
    cfg = PretrainConfig(**setup, output_dir=str(out), backend="eager", attention=attention, max_steps=3, train_batch_size=8,
                         learning_rate=1e-2, warmup_proportion=0.3, disable_progress_bar=True, dropout=0.0, seed=3)
    trainer = Trainer(cfg)
    losses = []
    trainer.hooks.append(lambda tr, rec: losses.append(rec["loss"]))
    try:
        trainer.train()
    finally:
        trainer.close()
    assert trainer.attention == attention
    return losses, json.loads((out / "hf_model" / "config.json").read_text()), load_file(str(out / "hf_model" / "model.safetensors"))


def test_bert_eager_and_sdpa_agree(tmp_path):
    setup = tiny_setup(tmp_path / "data", n_files=1, n_per_file=32, seq_len=64, max_pred=10, hidden=32)
    eager, sdpa = _train(setup, tmp_path / "eager", "eager"), _train(setup, tmp_path / "sdpa", "sdpa")
    # fp32, dropout 0: the kernels differ in summation order only.
    assert eager[0] == pytest.approx(sdpa[0], rel=1e-5)
    assert eager[1] == sdpa[1]  # the export's config says nothing of the kernel it was trained with
    for name, tensor in eager[2].items():
        torch.testing.assert_close(tensor, sdpa[2][name], atol=1e-5, rtol=1e-4)


def test_auto_follows_the_family_table_by_length_and_ort_runs_eager_only():
    # BERT on CPU: eager up to 1,024 tokens, SDPA beyond (the sweep's measurements); unknown length: the shortest's.
    assert [BERT.resolve_attention("auto", "eager", "cpu", n) for n in (None, 128, 512, 1024, 1025, 4096)] == \
        ["eager"] * 4 + ["sdpa"] * 2
    assert BERT.resolve_attention("auto", "compile", "cuda") == "sdpa"
    assert BERT.resolve_attention("auto", "ort", "cuda", 4096) == "eager"  # auto never picks what the backend cannot run
    assert {MODERNBERT.resolve_attention("auto", "eager", "cpu", n) for n in (None, 512, 8192)} == {"sdpa"}
    with pytest.raises(ValueError, match="--attention sdpa is not available for bert under --backend ort"):
        BERT.resolve_attention("sdpa", "ort", "cpu")
