"""benchmarks/bench_gpu.py: the CPU smoke run CI relies on, the FLOP count behind MFU, and its refusals."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "bench_gpu.py"


def load():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    # As a user runs it from a plain checkout: PYTHONPATH=. and whatever interpreter has torch.
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=timeout)


def test_smoke_runs_every_phase_and_head_on_cpu_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = run("--smoke", "--json", str(out))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    results = data["results"]
    assert {(r["phase"], r["head"]) for r in results} == {(1, "masked"), (1, "full"), (2, "masked"), (2, "full")}
    # BERT with both attention kernels, ModernBERT (MLM only, no segment ids) and the decoder with SDPA, T5 with eager
    # attention (transformers has no SDPA for it), both phases each.
    assert {(r["model"], r["attention"], r["phase"]) for r in results} == {
        (m, a, p) for m, a in (("bert", "eager"), ("bert", "sdpa"), ("modernbert", "sdpa"), ("llama", "sdpa"), ("t5", "eager"))
        for p in (1, 2)}
    assert {r["head"] for r in results if r["model"] in ("llama", "t5")} == {"full"}  # every target position is predicted
    for r in results:
        assert "error" not in r, r
        assert r["seq_per_s"] > 0 and r["step_ms"] > 0 and r["model_tflops_per_s"] > 0
        assert torch.isfinite(torch.tensor(r["loss"])) and r["loss"] > 0
        assert r["torch"] == torch.__version__
    assert data["nvidia_a100_80gb_seq_per_s"] == {"phase1_fp16": 580, "phase2_fp16": 210, "phase1_tf32": 317, "phase2_tf32": 110}
    assert "NVIDIA A100-80GB: phase 1 fp16 580 seq/s, TF32 317; phase 2 fp16 210, TF32 110" in proc.stdout


def test_model_flops_count_the_real_encoder_weights():
    """The dense term must be 6 x (the encoder's weight-matrix parameters) x tokens: count them on a real BERT."""
    bench = load()
    from ort_training.models import load_model_config
    from ort_training.models.pretraining import PretrainingModel

    config = load_model_config("tiny")
    model = PretrainingModel(config)
    encoder_weights = sum(p.numel() for n, p in model.hf_model.bert.encoder.named_parameters() if n.endswith(".weight") and p.dim() == 2)
    seq, max_pred = 128, 20
    flops = bench.model_flops_per_sequence(config, seq, max_pred)
    attention = 12 * config.num_hidden_layers * config.hidden_size * seq * seq
    head = 6 * (config.hidden_size ** 2 + config.hidden_size * config.vocab_size) * max_pred + 6 * config.hidden_size ** 2
    assert flops == 6 * encoder_weights * seq + attention + head
    # BERT-large, phase 1: ~2.4e11 FLOPs per training sequence (6 x 302M x 128 + attention + head), so
    # NVIDIA's 580 seq/s on an A100 is ~45% of its 312 TFLOP/s.
    large = load_model_config("large")
    assert 2.3e11 < bench.model_flops_per_sequence(large, 128, 20) < 2.5e11


def test_decoder_flops_count_the_real_llama_weights():
    """The decoder's dense term is 6 x (its layers' weight matrices) x tokens, plus the LM head over every position."""
    bench = load()
    from ort_training.models import load_model_config
    from ort_training.models.pretraining import PretrainingModel

    config = load_model_config("llama_tiny")
    model = PretrainingModel(config, objective="clm")
    layer_weights = sum(p.numel() for n, p in model.hf_model.model.layers.named_parameters() if p.dim() == 2)
    seq = 64
    attention = 12 * config.num_hidden_layers * config.hidden_size * seq * seq
    head = 6 * config.hidden_size * config.vocab_size * seq
    assert bench.model_flops_per_sequence(config, seq, 0) == 6 * layer_weights * seq + attention + head
    # Llama-3.2-1B shape at 4,096 tokens: ~2.6e13 FLOPs per training sequence (6 x ~1.0e9 x 4,096 + attention + head).
    assert 2.4e13 < bench.model_flops_per_sequence(load_model_config("llama_1b"), 4096, 0) < 3.2e13


def test_t5_flops_count_the_real_weights_and_the_collators_lengths():
    """T5's dense term: 6 x (encoder weights x encoder tokens + decoder weights x target tokens, cross-attention's keys
    and values x encoder tokens) + the LM head over the targets; the lengths are the span-corruption collator's."""
    bench = load()
    from ort_training.models import load_model_config
    from ort_training.models.pretraining import PretrainingModel

    config = load_model_config("t5_tiny")
    model = PretrainingModel(config, objective="span_corruption").hf_model
    matrices = lambda stack, skip=(): sum(p.numel() for n, p in stack.named_parameters()  # noqa: E731
                                          if p.dim() == 2 and "relative_attention_bias" not in n and not any(s in n for s in skip))
    enc, dec = bench.t5_lengths(129)
    assert (enc, dec) == (116, 26)  # 128 text tokens: 19 noise tokens in 6 spans, a sentinel per span, EOS on each side
    cross_kv = matrices(model.decoder.block, skip=("SelfAttention", "EncDecAttention.q", "EncDecAttention.o", "DenseReluDense"))
    dense = (matrices(model.encoder.block) * enc + (matrices(model.decoder.block) - cross_kv) * dec + cross_kv * enc
             + config.d_model * config.vocab_size * dec)
    inner, L = config.num_heads * config.d_kv, config.num_layers
    scores = 12 * inner * L * (enc * enc + dec * dec + dec * enc)
    assert bench.model_flops_per_sequence(config, 129, 0) == 6 * dense + scores
    # T5 v1.1-base at 512 encoder and 114 target tokens: ~4.3e11 FLOPs per training example.
    assert 4.0e11 < bench.model_flops_per_sequence(load_model_config("t5_base"), 569, 0) < 4.6e11


def test_t5_variants_refuse_fp16_and_run_eager_attention():
    bench = load()
    args = bench.parse_args(["--precisions", "bf16,fp16,tf32", "--backends", "eager,compile,ort", "--models", "t5"])
    got = {(v["phase"], v["seq"], v["precision"], v["backend"], v["attention"], v["batch"]) for v in bench.variants(args)}
    assert got == {(p, s, q, b, "eager", n) for p, s, n in ((1, 129, 256), (2, 569, 64)) for q in ("bf16", "tf32")
                   for b in ("eager", "ort")}


def test_nvidia_micro_batches_and_device_peaks():
    bench = load()
    assert bench.MICRO_BATCH[(1, "fp16")] == 256 and bench.MICRO_BATCH[(2, "tf32")] == 16
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.0
    assert bench.peak_tflops("NVIDIA H100 PCIe", "tf32") == 378.0
    assert bench.peak_tflops("NVIDIA A100-SXM4-80GB", "fp16") == 312.0
    assert bench.peak_tflops("Some Future GPU", "bf16") is None
    args = bench.parse_args(["--phases", "2", "--precisions", "tf32", "--backends", "eager", "--heads", "masked", "--models", "bert",
                             "--attentions", "eager"])
    [v] = bench.variants(args)
    assert (v["seq"], v["max_pred"], v["batch"], v["device"]) == (512, 80, 16, "cuda")


def test_gpu_matrix_adds_bert_sdpa_and_modernbert_base_at_1024_and_8192():
    """ORT runs neither BERT's SDPA nor ModernBERT (the families say so); ModernBERT holds 32,768 tokens per micro-batch."""
    bench = load()
    args = bench.parse_args(["--precisions", "bf16", "--backends", "eager,compile,ort", "--heads", "masked"])
    got = {(v["model"], v["phase"], v["seq"], v["backend"], v["attention"], v["batch"]) for v in bench.variants(args)}
    bert = {("bert", p, s, b, a, bs) for p, s, bs in ((1, 128, 256), (2, 512, 32)) for b in ("eager", "compile") for a in ("eager", "sdpa")}
    bert |= {("bert", 1, 128, "ort", "eager", 256), ("bert", 2, 512, "ort", "eager", 32)}
    modern = {("modernbert", p, s, b, "sdpa", 32768 // s) for p, s in ((1, 1024), (2, 8192)) for b in ("eager", "compile")}
    # The decoder: every backend (ORT with the family's 4-D mask), SDPA, 16,384 tokens per micro-batch.
    llama = {("llama", p, s, b, "sdpa", 16384 // s) for p, s in ((1, 1024), (2, 4096)) for b in ("eager", "compile", "ort")}
    # T5: eager attention (no SDPA for it in transformers), no compile (not measured), 256 x 129 and 64 x 569 tokens.
    t5 = {("t5", p, s, b, "eager", n) for p, s, n in ((1, 129, 256), (2, 569, 64)) for b in ("eager", "ort")}
    assert got == bert | modern | llama | t5
    assert {v["config"] for v in bench.variants(args) if v["model"] == "modernbert"} == {"modernbert_base"}
    assert {v["max_pred"] for v in bench.variants(args) if v["model"] == "modernbert"} == {307, 2458}


def test_modernbert_flops_count_glu_weights_and_local_windows():
    bench = load()
    from ort_training.models import load_model_config
    from ort_training.models.pretraining import PretrainingModel

    config = load_model_config("modernbert_tiny")
    model = PretrainingModel(config, objective="mlm")
    layer_weights = sum(p.numel() for n, p in model.hf_model.model.layers.named_parameters() if n.endswith(".weight") and p.dim() == 2)
    h, seq, max_pred = config.hidden_size, 1024, 300
    n_global = len(range(0, config.num_hidden_layers, config.global_attn_every_n_layers))
    attention = 12 * h * seq * (n_global * seq + (config.num_hidden_layers - n_global) * config.local_attention)
    head = 6 * (h * h + h * config.vocab_size) * max_pred
    assert bench.model_flops_per_sequence(config, seq, max_pred) == 6 * layer_weights * seq + attention + head


def test_refusals_are_clear():
    bad = run("--backends", "eager,tensorrt")
    assert bad.returncode == 2 and "--backends: unknown ['tensorrt']" in bad.stderr
    if not torch.cuda.is_available():
        proc = run("--phases", "1", "--backends", "eager")
        assert proc.returncode == 2 and "no CUDA device visible to torch" in proc.stderr
    if importlib.util.find_spec("torch_ort") is None:
        proc = run("--smoke", "--backends", "ort")
        assert proc.returncode == 2 and "ORT training is frozen at 1.19.2" in proc.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_one_bf16_step_on_the_gpu(tmp_path):
    proc = run("--phases", "1", "--precisions", "bf16", "--backends", "eager", "--heads", "masked", "--config", "base",
               "--batch-size", "8", "--warmup", "1", "--steps", "2", "--json", str(tmp_path / "g.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    [r] = json.loads((tmp_path / "g.json").read_text())["results"]
    assert r["peak_mem_gib"] > 0 and r["seq_per_s"] > 0
