"""NVIDIA two-phase flow in one output dir, the HF export (offline AutoModel + fill-mask), ONNX export, evaluate CLI."""

import importlib.util
import json

import pytest
import torch

from ort_training.data.synthetic import tiny_setup, write_dataset
from ort_training.evaluate import run as evaluate_main
from ort_training.loop.checkpoint import list_checkpoints, load_checkpoint
from ort_training.loop.metrics import read_metrics
from ort_training.run_pretraining import main as pretrain_main

# The ONNX export needs onnx + onnxruntime (the pinned stack has both); the rest of this flow does not.
ONNX_FLAG = ["--export_onnx"] if all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime")) else []


@pytest.fixture(scope="module")
def two_phase(tmp_path_factory):
    root = tmp_path_factory.mktemp("phases")
    setup = tiny_setup(root, n_files=2, n_per_file=32, seq_len=32, max_pred=5, hidden=32, dropout=0.1)
    phase2_data = write_dataset(root / "data512", 2, 16, seq_len=64, max_pred=8, vocab_size=1003, seed=9)
    eval_dir = write_dataset(root / "test", 1, 16, seq_len=32, max_pred=5, vocab_size=1003, seed=5, split="test")
    out = root / "out"
    common = ["--config_file", setup["config_file"], "--vocab_file", setup["vocab_file"], "--output_dir", str(out),
              "--backend", "eager", "--disable_progress_bar", "--num_steps_per_checkpoint", "2"]
    pretrain_main(common + ["--input_dir", setup["input_dir"], "--max_steps", "4", "--train_batch_size", "8",
                            "--learning_rate", "1e-2", "--eval_dir", str(eval_dir), "--eval_batches", "2"])
    phase1 = {"summary": json.loads((out / "summary.json").read_text()), "model": load_checkpoint(out)["model"]}
    pretrain_main(common + ["--input_dir", str(phase2_data), "--max_steps", "3", "--train_batch_size", "4", "--learning_rate",
                            "5e-3", "--phase2", "--resume_from_checkpoint", "--phase1_end_step", "4", *ONNX_FLAG])
    return {"out": out, "phase1": phase1, "eval_dir": eval_dir, "common": common, "phase1_data": setup["input_dir"]}


def test_phase2_continues_numbering_with_fresh_optimizer(two_phase):
    out = two_phase["out"]
    assert two_phase["phase1"]["summary"]["global_step"] == 4
    assert 0.0 <= two_phase["phase1"]["summary"]["eval_mlm_accuracy"] <= 1.0
    assert [s for s, _ in list_checkpoints(out)][-1] == 7
    ckpt = load_checkpoint(out)
    assert {k: ckpt["train_state"][k] for k in ("global_step", "phase_step", "phase")} == {"global_step": 7, "phase_step": 3, "phase": 2}
    # Fresh optimizer: LAMB's step counter restarted at phase 2 (3 steps, not 4 + 3).
    assert {float(s["step"]) for s in ckpt["optimizer"]["state"].values()} == {3.0}
    # Fresh schedule: the scheduler counted only phase-2 steps.
    assert ckpt["scheduler"]["last_epoch"] == 3
    # Phase 2 started from phase 1's weights and trained them further.
    key = "hf_model.bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(ckpt["model"][key], two_phase["phase1"]["model"][key])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["phase"] == 2 and summary["global_step"] == 7
    assert summary["training_sequences_per_second"] > 0 and summary["e2e_train_time"] > 0 and summary["final_loss"] > 0
    assert (out / "training_curves.png").stat().st_size > 1000
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 8))  # both phases, one curve
    assert set(records[0]) >= {"step", "loss", "mlm_loss", "nsp_loss", "mlm_accuracy", "lr", "loss_scale", "seq_per_sec"}
    assert records[0]["loss"] == pytest.approx(records[0]["mlm_loss"] + records[0]["nsp_loss"], rel=1e-6)
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_hf_export_loads_offline_with_fill_mask(two_phase, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    hf_dir = two_phase["out"] / "hf_model"
    assert (hf_dir / "model.safetensors").is_file() and (hf_dir / "vocab.txt").is_file()
    model = AutoModelForMaskedLM.from_pretrained(hf_dir)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    assert model.config.vocab_size == len(tok) == 1003  # padding trimmed back to the real vocab
    ckpt = load_checkpoint(two_phase["out"])["model"]
    emb = ckpt["hf_model.bert.embeddings.word_embeddings.weight"]
    assert torch.equal(model.bert.embeddings.word_embeddings.weight.detach(), emb[:1003])
    fill = pipeline("fill-mask", model=model, tokenizer=tok)
    preds = fill("w1 w2 [MASK] w3", top_k=3)
    assert len(preds) == 3 and all(p["token"] < 1003 for p in preds)


@pytest.mark.onnx
def test_onnx_export_runs(two_phase):
    import numpy as np
    import onnxruntime as ort
    from transformers import AutoModelForMaskedLM

    hf_dir = two_phase["out"] / "hf_model"
    sess = ort.InferenceSession(str(hf_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    ids = np.array([[2, 10, 4, 11, 3]], dtype=np.int64)
    (logits,) = sess.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
    ref = AutoModelForMaskedLM.from_pretrained(hf_dir)(input_ids=torch.from_numpy(ids)).logits.detach().numpy()
    np.testing.assert_allclose(logits, ref, rtol=1e-3, atol=1e-4)


def test_evaluate_cli_trained_vs_untrained(two_phase, capsys):
    args = ["--model_dir", str(two_phase["out"] / "hf_model"), "--input_dir", str(two_phase["eval_dir"]), "--batch_size", "8",
            "--max_batches", "2"]
    trained = evaluate_main(args)
    untrained = evaluate_main(args + ["--untrained"])
    assert trained["masked_tokens"] == untrained["masked_tokens"] > 0
    assert untrained["untrained"] and not trained["untrained"]
    assert trained["mlm_loss"] != untrained["mlm_loss"]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["untrained"] is True


def test_phase1_rerun_after_phase2_is_a_no_op(two_phase, caplog):
    """Re-running phase 1 with --resume_from_checkpoint once phase 2 has started must not train phase 1
    again on phase-2 weights: it logs that phase 1 is done and exits 0, leaving everything as it was."""
    out = two_phase["out"]
    before = [s for s, _ in list_checkpoints(out)]
    export = (out / "hf_model" / "model.safetensors").read_bytes()
    with caplog.at_level("INFO"):
        rc = pretrain_main(two_phase["common"] + ["--input_dir", two_phase["phase1_data"], "--max_steps", "4", "--train_batch_size", "8",
                                                  "--learning_rate", "1e-2", "--resume_from_checkpoint"])
    assert rc == 0
    assert "phase 1 already finished (found a phase-2 checkpoint)" in caplog.text
    assert [s for s, _ in list_checkpoints(out)] == before
    assert (out / "hf_model" / "model.safetensors").read_bytes() == export
    assert json.loads((out / "summary.json").read_text())["phase"] == 2


def test_phase2_without_phase1_end_step_numbers_after_the_phase1_checkpoint(tmp_path):
    """Without --phase1_end_step phase 2 takes the offset from the phase-1 checkpoint, so its step-N
    folders sort after phase 1's and pruning (keep 1) never removes the checkpoint just written."""
    setup = tiny_setup(tmp_path, n_files=1, n_per_file=16, seq_len=32, max_pred=5, hidden=32)
    common = ["--config_file", setup["config_file"], "--input_dir", setup["input_dir"], "--output_dir", str(tmp_path / "out"),
              "--backend", "eager", "--disable_progress_bar", "--skip_hf_export", "--train_batch_size", "4", "--keep_checkpoints", "1"]
    pretrain_main(common + ["--max_steps", "5"])
    pretrain_main(common + ["--max_steps", "2", "--phase2", "--resume_from_checkpoint"])
    assert [s for s, _ in list_checkpoints(tmp_path / "out")] == [7]
    assert load_checkpoint(tmp_path / "out")["train_state"]["phase"] == 2
