"""Masked-only MLM head, gradient accumulation, mixed precision (eager backend, tiny model)."""

import pytest
import torch

from ort_training.config import PretrainConfig
from ort_training.data.hdf5 import PretrainingDataLoader, list_hdf5_files
from ort_training.data.synthetic import tiny_setup
from ort_training.loop.trainer import Trainer
from ort_training.models import load_model_config
from ort_training.models.pretraining import PretrainingModel


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory.mktemp("tiny"), n_files=2, n_per_file=32, full_predictions=True)


def make_trainer(setup, out, **kw):
    cfg = PretrainConfig(**setup, output_dir=str(out), backend="eager", disable_progress_bar=True, skip_hf_export=True,
                         **{"max_steps": 4, "learning_rate": 1e-3, "train_batch_size": 8, **kw})
    return Trainer(cfg)


def test_vocab_padded_to_multiple_of_8(setup):
    cfg = load_model_config(setup["config_file"])
    assert cfg.vocab_size == 1008 and cfg.original_vocab_size == 1003
    assert cfg._attn_implementation == "eager"


def test_masked_only_head_equals_full_head(setup):
    torch.manual_seed(0)
    cfg = load_model_config(setup["config_file"], dropout=0.0)
    dense = PretrainingModel(cfg, dense_seq_output=True)
    full = PretrainingModel(cfg, dense_seq_output=False)
    full.load_state_dict(dense.state_dict())
    loader = PretrainingDataLoader(list_hdf5_files(setup["input_dir"]), 8, seed=0, prefetch=False)
    batch = next(iter(loader))
    out_d, out_f = dense(*dense.inputs(batch)), full(*full.inputs(batch))
    for a, b in zip(out_d, out_f):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    out_d[0].backward()
    out_f[0].backward()
    for pd, pf in zip(dense.parameters(), full.parameters()):
        torch.testing.assert_close(pd.grad, pf.grad, rtol=1e-4, atol=1e-6)
    loader.close()


def test_accumulation_equals_one_big_batch(setup, tmp_path):
    """4 accumulated micro-batches of 2 give the same LAMB update as one batch of 8 (equal mask counts)."""
    params, grads = [], []
    for acc in (1, 4):
        tr = make_trainer(setup, tmp_path / f"acc{acc}", gradient_accumulation_steps=acc, max_steps=2)
        tr.train_step(iter(tr.loader))
        params.append([p.detach().clone() for p in tr.model.parameters()])
        grads.append([p.grad.clone() for p in tr.model.parameters()])  # LAMB is nearly scale-free: check grads too
        tr.close()
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    for a, b in zip(*params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-6)


def test_fp16_overflow_skips_step_and_backs_off(setup, tmp_path):
    tr = make_trainer(setup, tmp_path, precision="fp16")
    tr.engine.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)  # loss * scale overflows fp32
    before = [p.detach().clone() for p in tr.model.parameters()]
    out = tr.train_step(iter(tr.loader))
    assert out["skipped"] and tr.engine.scaler.get_scale() == 2.0**126
    assert all(torch.equal(a, p) for a, p in zip(before, tr.model.parameters()))
    tr.engine.scaler = torch.amp.GradScaler("cpu")
    out = tr.train_step(iter(tr.loader))
    assert not out["skipped"]
    assert not all(torch.equal(a, p) for a, p in zip(before, tr.model.parameters()))
    tr.close()


def test_bf16_trains_on_cpu(setup, tmp_path):
    tr = make_trainer(setup, tmp_path, bf16=True, max_steps=3)
    summary = tr.train()
    tr.close()
    assert summary["precision"] == "bf16" and torch.isfinite(torch.tensor(summary["final_loss"]))


@pytest.mark.ort
def test_missing_torch_ort_says_how_to_fix(setup, monkeypatch):
    import sys

    from ort_training.loop.backends import wrap_model

    monkeypatch.setitem(sys.modules, "torch_ort", None)  # as if torch-ort were not installed
    model = PretrainingModel(load_model_config(setup["config_file"]))
    with pytest.raises(RuntimeError, match="--backend ort needs torch-ort.*pip install .*torch_ort.configure.*--backend eager"):
        wrap_model(model, "ort")


def test_ort_mixed_precision_on_cpu_is_refused_clearly(setup, tmp_path):
    cfg = PretrainConfig(**setup, output_dir=str(tmp_path), backend="ort", bf16=True, train_batch_size=8)
    with pytest.raises(ValueError, match="--backend ort on CPU trains in fp32 only.*--backend eager"):
        Trainer(cfg)


@pytest.mark.ort
def test_unbuilt_ort_extensions_say_how_to_fix(setup, monkeypatch):
    from onnxruntime.training import ortmodule

    from ort_training.loop.backends import wrap_model

    # What onnxruntime.training.ortmodule records at import when `python -m torch_ort.configure` never ran.
    monkeypatch.setattr(ortmodule, "_FALLBACK_INIT_EXCEPTION", RuntimeError("ORTModule's extensions were not detected"))
    model = PretrainingModel(load_model_config(setup["config_file"]))
    with pytest.raises(RuntimeError, match="extensions were not detected.*torch_ort.configure"):
        wrap_model(model, "ort")


def test_vocab_larger_than_config_fails_at_start_up(setup, tmp_path):
    n = load_model_config(setup["config_file"]).original_vocab_size
    big = tmp_path / "vocab.txt"
    big.write_text("".join(f"tok{i}\n" for i in range(n + 1)))
    with pytest.raises(ValueError, match=f"vocab.txt has {n + 1} tokens but --config_file .* has vocab_size {n}"):
        make_trainer({**setup, "vocab_file": str(big)}, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_eval_dir_without_test_files_fails_at_start_up(setup, tmp_path):
    # --eval_dir pointing at training shards must not silently evaluate on training data.
    with pytest.raises(ValueError, match="no \\*.hdf5 file has 'test' in its name"):
        make_trainer(setup, tmp_path / "out", eval_dir=setup["input_dir"])


def _saved_activation_bytes(model, batch) -> tuple[float, int]:
    """Loss and bytes of the tensors autograd keeps for the backward pass (what checkpointing saves)."""
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = model(*model.inputs(batch))
    loss.backward()
    return float(loss), sum(saved)


def test_checkpoint_activations_same_loss_less_memory(setup, tmp_path):
    """--checkpoint_activations (NVIDIA's flag) recomputes layers: same loss and gradients, fewer saved bytes."""
    loader = PretrainingDataLoader(list_hdf5_files(setup["input_dir"]), 8, seed=0, prefetch=False)
    batch = next(iter(loader))
    loader.close()
    results = {}
    for ckpt in (False, True):
        tr = make_trainer(setup, tmp_path / str(ckpt), checkpoint_activations=ckpt, dropout=0.0)
        tr.model.train()
        results[ckpt] = (*_saved_activation_bytes(tr.model, batch), [p.grad.clone() for p in tr.model.parameters()])
        tr.close()
    (loss_off, bytes_off, grads_off), (loss_on, bytes_on, grads_on) = results[False], results[True]
    assert loss_on == pytest.approx(loss_off, rel=1e-6)
    for a, b in zip(grads_off, grads_on):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert bytes_on < 0.7 * bytes_off


def test_mlm_objective_has_no_nsp_head_and_trains(setup, tmp_path):
    tr = make_trainer(setup, tmp_path, objective="mlm", max_steps=3)
    assert type(tr.model.hf_model).__name__ == "BertForMaskedLM"
    assert not any("seq_relationship" in n or "pooler" in n for n, _ in tr.model.named_parameters())
    records = []
    tr.hooks.append(lambda _, rec: records.append(rec))
    summary = tr.train()
    tr.close()
    assert "nsp_loss" not in records[-1] and records[-1]["loss"] == pytest.approx(records[-1]["mlm_loss"], rel=1e-6)
    assert torch.isfinite(torch.tensor(summary["final_loss"]))
