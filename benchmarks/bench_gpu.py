"""BERT-large (eager and SDPA attention), ModernBERT-base, a Llama-3.2-1B-shaped decoder and T5 v1.1-base pretraining
step throughput on one GPU, beside NVIDIA's published A100-80GB figures for BERT-large.

    PYTHONPATH=. python benchmarks/bench_gpu.py                      # the full matrix (~20-30 min on one GPU)
    PYTHONPATH=. python benchmarks/bench_gpu.py --phases 1 --precisions bf16 --backends eager,compile
    PYTHONPATH=. python benchmarks/bench_gpu.py --models modernbert --precisions bf16 --heads masked
    PYTHONPATH=. python benchmarks/bench_gpu.py --smoke              # tiny model on CPU, seconds (CI runs it)

Runs from a plain checkout with whatever recent torch and transformers are installed (no venv, no
internet, no ONNX Runtime needed): the model is the trainer's own (`ort_training.models.pretraining`:
PretrainingModel on load_model_config("large"), the family's loss inside forward, LAMB from
ort_training.loop.optim), fed random NVIDIA-schema batches already on the device. One subprocess per
variant (torch.compile caches, an OOM, or ORT's environment switches do not leak into the next);
--smoke runs its variants in one process.

Variants: phase 1 (seq 128, 20 predictions) and phase 2 (seq 512, 80) at NVIDIA's per-GPU
micro-batches for A100-80GB (DeepLearningExamples' dgxa100-80g configs: fp16 256 / 32, TF32 128 / 16;
bf16 uses the fp16 ones) x precision bf16 | fp16 (autocast + GradScaler) | tf32 (fp32 weights, TF32
matmuls) x backend eager | compile | ort (where onnxruntime-training imports) x MLM head on the masked
positions only ("masked", the trainer's default) or on every position ("full"), for BERT-large
(MLM + NSP) x attention eager | sdpa (--attentions; ORT runs eager only: models/bert.py). ModernBERT-base
(--modernbert-config; MLM, 30% of positions predicted) runs its two sequence-length phases, 1,024 and
8,192 tokens, at 32,768 tokens per micro-batch (32 x 1,024, 4 x 8,192: a choice of this benchmark, not a
published recipe), SDPA attention only (eager attention would hold a seq x seq score matrix per head and
layer: 4 x 12 x 8,192^2 scores, 6 GiB in bf16, per layer at 8,192) and the eager / compile backends only (ORTModule cannot build
ModernBERT's graph: models/modernbert.py). The decoder (--llama-config, default llama_1b) trains next-token
prediction at 1,024 and 4,096 tokens (16,384 tokens per micro-batch), SDPA, eager / compile / ort (ORTModule with
the family's 4-D mask). T5 v1.1-base (--t5-config, default t5_base) trains span corruption on the batches of
the objective's own collator (noise 0.15, spans of mean 3) from random packed sequences of the two lengths of recipes
t5_span_corruption / t5_depth (129 and 569 raw tokens: encoder inputs of 128 and 512), 32,768 raw tokens per
micro-batch (256 x 129, 64 x 569: a choice of this benchmark), eager attention (transformers refuses SDPA for T5),
eager / ort, bf16 and tf32 (fp16 is refused for T5: models/t5.py). --models picks any of bert, modernbert, llama, t5.

Reported per variant: sequences/s (after --warmup untimed steps), peak GPU memory, and model-FLOPs
utilisation: 6 x (non-embedding parameters) x tokens + attention (12 x layers x hidden x seq^2) +
the MLM head on the predicted positions, per sequence, over the device's dense peak for that
precision (ModernBERT: GLU MLP weights, and its local layers count their 128-token window, not seq).
The same FLOP count is used for both heads (the full head's extra work is waste), so MFU compares them
directly. NVIDIA's figures (per A100-80GB, from its BERT README) are printed beside.
Results go to --json (default benchmarks/results/bench_gpu.json).

Scoring line (after the training matrix; --no-scoring leaves it out, --scoring-only runs it alone): a BERT
sequence classifier (--scoring-config, default base; random weights: speed does not depend on them) scoring
batches of --scoring-batch sentences of --scoring-seq tokens, forward only, as `python -m ort_training.predict`
runs it: the torch engine under autocast fp16 and bf16 (--scoring-precisions), and onnx-fp16 (the fused graph in
float16 on ONNX Runtime's CUDA provider) where onnxruntime-gpu is installed (else the line says it was skipped).
Reported: sentences/s. Under --smoke it runs on the CPU in fp32 (torch only) so CI exercises it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# NVIDIA DeepLearningExamples BERT (PyTorch), pretraining throughput per A100-80GB GPU, seq/s.
NVIDIA_A100_80GB = {(1, "fp16"): 580, (1, "tf32"): 317, (2, "fp16"): 210, (2, "tf32"): 110}
# Per-GPU micro-batches of NVIDIA's A100-80GB configs (train_batch_size / gradient_accumulation_steps).
MICRO_BATCH = {(1, "fp16"): 256, (1, "bf16"): 256, (1, "tf32"): 128, (2, "fp16"): 32, (2, "bf16"): 32, (2, "tf32"): 16}
PHASE = {1: {"seq": 128, "max_pred": 20}, 2: {"seq": 512, "max_pred": 80}}
# ModernBERT's sequence-length phases (answerdotai/ModernBERT: 1,024 then 8,192), its 30% masking, and
# this benchmark's micro-batch in tokens (not from a published per-GPU recipe).
MODERNBERT_PHASE_SEQ = {1: 1024, 2: 8192}
MODERNBERT_MASK = 0.3
MODERNBERT_TOKENS = 32768
LLAMA_PHASE_SEQ = {1: 1024, 2: 4096}
LLAMA_TOKENS = 16384
"""The decoder (--llama-config, default llama_1b: Llama-3.2-1B dimensions, an 8,192-token timeline vocabulary) at
16,384 tokens per micro-batch (16 x 1,024, 4 x 4,096: the lengths of recipe llama_ehr_1b; a choice of this benchmark)."""
T5_MICRO_BATCH = {1: 256, 2: 64}
"""T5's micro-batches: about 32,768 raw tokens each (256 x 129, 64 x 569), a choice of this benchmark."""
MODELS = ("bert", "modernbert", "llama", "t5")


def t5_phase_seq(phase: int) -> int:
    """Raw packed length of a T5 phase: 128 tokens, then nanoT5's 512-token encoder inputs (Hugging Face's rule in
    collate_t5), each plus the [CLS] a packed sequence starts with, as recipe t5_span_corruption's data commands say."""
    from ort_training.data.collate_t5 import compute_input_and_target_lengths

    return 1 + (128 if phase == 1 else compute_input_and_target_lengths(512, 0.15, 3.0)[0])
# Dense (no sparsity) tensor-core peaks, TFLOP/s: (16-bit, TF32). Matched against the device name.
PEAK_TFLOPS = [
    ("H200", (989.0, 494.5)), ("H100 PCIe", (756.0, 378.0)), ("H100", (989.0, 494.5)), ("H800", (989.0, 494.5)),
    ("B200", (2250.0, 1100.0)), ("GH200", (989.0, 494.5)), ("A100", (312.0, 156.0)), ("A800", (312.0, 156.0)),
    ("L40S", (362.0, 183.0)), ("L40", (181.0, 90.5)), ("L4", (121.0, 60.0)), ("A10", (125.0, 62.5)),
    ("V100", (125.0, None)), ("T4", (65.0, None)),
]


def model_flops_per_sequence(config, seq: int, max_pred: int) -> float:
    """Training FLOPs (forward + backward = 3 x forward) of one sequence, MLM head on the predictions only."""
    if getattr(config, "model_type", "bert") == "t5":
        return t5_flops(config, *t5_lengths(seq))
    h, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    if getattr(config, "model_type", "bert") == "llama":
        # Q and O are h x h, K and V h x kv (grouped-query attention), SwiGLU's three inter x h matrices; the LM head over
        # every position (next-token prediction predicts every token); attention counted as non-causal, as for BERT.
        kv = config.num_key_value_heads * getattr(config, "head_dim", h // config.num_attention_heads)
        per_layer = 2 * h * h + 2 * h * kv + 3 * h * inter
        return float(6 * layers * per_layer * seq + 12 * layers * h * seq * seq + 6 * h * config.vocab_size * seq)
    if getattr(config, "model_type", "bert") == "modernbert":
        # GLU MLP (Wi: h x 2*inter, Wo: inter x h); layer i is global when i % global_attn_every_n_layers == 0,
        # the others attend a window of local_attention tokens; head = dense transform + decoder, no pooler.
        per_layer = 4 * h * h + 3 * h * inter
        n_global = len(range(0, layers, config.global_attn_every_n_layers))
        span = n_global * seq + (layers - n_global) * min(seq, config.local_attention)
        return float(6 * layers * per_layer * seq + 12 * h * seq * span + 6 * (h * h + h * config.vocab_size) * max_pred)
    per_layer = 4 * h * h + 2 * h * inter  # QKV + output projection, and the two FFN matrices (weights)
    dense = 6 * layers * per_layer * seq  # 2 FLOPs per weight per token, x3 for training
    attention = 12 * layers * h * seq * seq  # QK^T and AV: 2 x 2 x seq^2 x h forward, x3
    head = 6 * (h * h + h * config.vocab_size) * max_pred + 6 * h * h  # MLM transform + decoder; pooler/NSP
    return float(dense + attention + head)


def t5_lengths(seq: int) -> tuple[int, int]:
    """(encoder, decoder) tokens of a span-corruption batch from packed sequences of `seq` raw tokens (the collator's)."""
    from ort_training.data.collate_t5 import corrupted_lengths

    return corrupted_lengths(seq - 1, 0.15, 3.0)


def t5_flops(config, enc: int, dec: int) -> float:
    """Training FLOPs of one T5 example: 6 x weights x the tokens each weight sees (encoder layers: E; decoder
    self-attention, queries and outputs of cross-attention, feed-forward and LM head: D; cross-attention's keys and
    values: E), plus attention scores (encoder E^2, decoder self D^2, cross D x E), 12 x inner width each."""
    h, inner, ff = config.d_model, config.num_heads * config.d_kv, config.d_ff
    mlp = (3 if config.is_gated_act else 2) * h * ff
    encoder = config.num_layers * (4 * h * inner + mlp) * enc
    decoder = config.num_decoder_layers * ((6 * h * inner + mlp) * dec + 2 * h * inner * enc)
    scores = 12 * inner * (config.num_layers * enc * enc + config.num_decoder_layers * (dec * dec + dec * enc))
    return float(6 * (encoder + decoder + h * config.vocab_size * dec) + scores)


def span_batch(batch: int, seq: int, vocab: int, device):
    """A span-corruption batch made by the objective's own collator from random packed sequences ([CLS] text [SEP])
    of `seq` tokens over a data tokenizer of `vocab` ids minus the ids the objective reserves above it."""
    import numpy as np

    from bundle.packed_schema import PackedAttrs
    from ort_training.data.collate_t5 import SpanCorruptionCollator, reserved_tokens

    data_vocab = vocab - len(reserved_tokens())
    attrs = PackedAttrs(max_seq_length=seq, vocab_size=data_vocab, cls_id=2, sep_id=3, pad_id=0, mask_id=4, special_ids=(1,))
    collate = SpanCorruptionCollator(0.15, 3.0).bind(attrs, seq)
    rng = np.random.default_rng(0)
    seqs = [np.concatenate([[2], rng.integers(5, data_vocab, seq - 2), [3]]) for _ in range(batch)]
    made = collate(seqs, [np.random.default_rng(i) for i in range(batch)])
    return {k: v.to(device) for k, v in made.items()}


def peak_tflops(device_name: str, precision: str) -> float | None:
    for key, (half, tf32) in PEAK_TFLOPS:
        if key in device_name:
            return half if precision in ("fp16", "bf16") else tf32
    return None


def random_batch(batch: int, seq: int, max_pred: int, vocab: int, device):
    import torch

    g = torch.Generator(device="cpu").manual_seed(0)
    input_ids = torch.randint(5, vocab, (batch, seq), generator=g)
    segment_ids = (torch.arange(seq) >= seq // 2).long().expand(batch, seq).contiguous()
    input_mask = torch.ones(batch, seq, dtype=torch.long)
    positions = torch.stack([torch.randperm(seq - 1, generator=g)[:max_pred] + 1 for _ in range(batch)]).sort(1).values
    labels = torch.gather(input_ids, 1, positions)
    nsp = torch.randint(0, 2, (batch,), generator=g)
    cpu = dict(input_ids=input_ids, segment_ids=segment_ids, input_mask=input_mask, masked_lm_positions=positions,
               masked_lm_labels=labels, next_sentence_labels=nsp)
    return {k: v.to(device) for k, v in cpu.items()}


def build_model(config_name: str, dense_head: bool, attention: str = "eager", backend: str = "eager", device_type: str = "cpu",
                seq_len: int | None = None):
    """The trainer's model: ort_training.models.pretraining's PretrainingModel with the family's first pretraining loss in
    forward (MLM + NSP where the family has a next-sentence head, MLM otherwise, next-token for decoders), the config's
    own dropout."""
    from ort_training.models import family_of_file, load_model_config
    from ort_training.models.pretraining import PretrainingModel

    family = family_of_file(config_name)
    family.check_backend(backend)
    attention = family.resolve_attention(attention, backend, device_type, seq_len)
    config = load_model_config(config_name, attention=attention)
    objective = family.pretraining_tasks[0]  # mlm_nsp for BERT, mlm for ModernBERT, clm for Llama
    return PretrainingModel(config, dense_seq_output=dense_head, objective=objective), config


def worker(v: dict) -> dict:
    import torch

    from ort_training.loop.optim import build_optimizer

    device = torch.device(v["device"])
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = v["precision"] == "tf32"
    torch.backends.cudnn.allow_tf32 = v["precision"] == "tf32"
    model, config = build_model(v["config"], v["head"] == "masked", v.get("attention", "eager"), v["backend"], device.type, v["seq"])
    model.to(device).train()
    if v["backend"] == "compile":
        wrapped = torch.compile(model)
    elif v["backend"] == "ort":
        from ort_training.loop.backends import wrap_model

        wrapped = wrap_model(model, "ort")
    else:
        wrapped = model
    optimizer = build_optimizer(model, lr=1e-4)
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(v["precision"])
    scaler = torch.amp.GradScaler(device.type, enabled=v["precision"] == "fp16" and cuda)
    vocab = getattr(config, "original_vocab_size", config.vocab_size)
    batch = (span_batch(v["batch"], v["seq"], vocab, device) if v.get("model") == "t5"
             else random_batch(v["batch"], v["seq"], v["max_pred"], vocab, device))
    inputs = model.inputs(batch)

    def step():
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss, _ = wrapped(*inputs)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(v["warmup"]):
        loss = step()
    sync()
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(v["steps"]):
        loss = step()
    sync()
    elapsed = time.perf_counter() - t0
    seq_per_s = v["batch"] * v["steps"] / elapsed
    flops = model_flops_per_sequence(config, v["seq"], v["max_pred"])
    name = torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu"
    peak = v.get("peak_tflops") or (peak_tflops(name, v["precision"]) if cuda else None)
    return {**v, "device_name": name, "seq_per_s": round(seq_per_s, 2), "step_ms": round(1000 * elapsed / v["steps"], 2),
            "warmup_s": round(warmup_s, 2), "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if cuda else None,
            "model_tflops_per_s": round(seq_per_s * flops / 1e12, 6), "mfu": round(seq_per_s * flops / (peak * 1e12), 4) if peak else None,
            "loss": round(float(loss), 4), "torch": torch.__version__}


def ort_available() -> bool:
    try:
        import onnxruntime.training  # noqa: F401
        import torch_ort  # noqa: F401
    except Exception:  # not installed, or broken against this torch
        return False
    return True


def variants(args) -> list[dict]:
    """BERT: phase x precision x backend x attention x head; ModernBERT: phase x precision x backend x head, SDPA.
    Which backends and attention kernels a family runs is asked of the family (ort_training.models)."""
    from ort_training.models import family_of_file

    out = []
    common = dict(device=args.device, warmup=args.warmup, steps=args.steps, peak_tflops=args.peak_tflops)
    for model in args.models:
        config = {"bert": args.config, "modernbert": args.modernbert_config, "llama": args.llama_config, "t5": args.t5_config}[model]
        family = family_of_file(config)
        for phase in args.phases:
            if args.smoke and model == "t5":
                seq, max_pred = 2 + (args.smoke_seq if phase == 1 else 2 * args.smoke_seq), 5  # the collator's own minimum
            elif args.smoke:
                seq, max_pred = args.smoke_seq, 5
            elif model == "bert":
                seq, max_pred = PHASE[phase]["seq"], PHASE[phase]["max_pred"]
            elif model == "llama":
                seq, max_pred = LLAMA_PHASE_SEQ[phase], 5  # no masked positions: max_pred is unused
            elif model == "t5":
                seq, max_pred = t5_phase_seq(phase), 5  # spans, not masked positions: max_pred is unused
            else:
                seq = MODERNBERT_PHASE_SEQ[phase]
                max_pred = round(MODERNBERT_MASK * seq)
            for precision in args.precisions:
                if {"tf32": "fp32"}.get(precision, precision) not in family.precisions:
                    continue  # T5 in fp16: refused by its family
                batch = args.batch_size or (4 if args.smoke else MICRO_BATCH[(phase, precision)] if model == "bert"
                                            else T5_MICRO_BATCH[phase] if model == "t5"
                                            else (LLAMA_TOKENS if model == "llama" else MODERNBERT_TOKENS) // seq)
                for backend in (b for b in args.backends if b in family.backends):
                    # BERT: the kernels asked for; the others: the family's own choice on a GPU (SDPA; T5: eager)
                    attentions = args.attentions if model == "bert" else [family.resolve_attention("auto", backend, "cuda", seq)]
                    for attention in (a for a in attentions if a in family.attention.get(backend, ())):
                        # The head choice is the MLM's (masked positions or all); a decoder predicts every position.
                        for head in args.heads if model in ("bert", "modernbert") else ["full"]:
                            out.append(dict(model=model, phase=phase, precision=precision, backend=backend, attention=attention,
                                            head=head, seq=seq, max_pred=max_pred, batch=batch, config=config, **common))
    return out


def run_variant(v: dict, timeout: float, in_process: bool = False) -> dict:
    if in_process:  # --smoke: one interpreter for all variants (each subprocess would import torch again)
        try:
            return worker(v)
        except Exception as exc:  # reported in the table like a failed subprocess
            return {**v, "error": f"{type(exc).__name__}: {exc}"}
    cmd = [sys.executable, __file__, "--worker", json.dumps(v)]
    env = dict(os.environ, PYTHONPATH=str(REPO) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**v, "error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:]
        oom = "OutOfMemoryError" in proc.stderr or "out of memory" in proc.stderr
        return {**v, "error": ("out of memory: " if oom else "") + " | ".join(tail)}
    return json.loads(proc.stdout.strip().splitlines()[-1])


SCORING_BATCH, SCORING_SEQ = 256, 128


def _time(fn, warmup: int, steps: int, sync) -> float:
    """Seconds per call of fn, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - t0) / steps


def scoring(args) -> list[dict]:
    """The scoring line: sentences/s of the torch engine per autocast precision, and of onnx-fp16 where ONNX Runtime
    offers CUDA (see the module doc)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from ort_training.models import load_model_config

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    config = load_model_config(args.scoring_config, attention="sdpa" if device.type == "cuda" else "eager")
    config.num_labels = 2
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config).eval().to(device)
    batch, seq = args.scoring_batch, min(args.scoring_seq, config.max_position_embeddings)
    ids = torch.randint(5, config.vocab_size, (batch, seq), device=device)
    mask = torch.ones_like(ids)
    common = {"config": args.scoring_config, "batch": batch, "seq": seq, "device": str(device)}
    out = []
    for precision in args.scoring_precisions:
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)

        def forward():
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                model(input_ids=ids, attention_mask=mask).logits.float()

        try:
            seconds = _time(forward, args.warmup, args.steps, sync)
            out.append({"engine": "torch", "precision": precision, **common, "sentences_per_s": batch / seconds})
        except Exception as exc:  # noqa: BLE001 -- a precision the device lacks: reported in the line
            out.append({"engine": "torch", "precision": precision, **common, "error": f"{type(exc).__name__}: {exc}"[:200]})
    if device.type == "cuda":
        out.append(onnx_fp16_scoring(model, config, ids, mask, args, common))
    return out


def onnx_fp16_scoring(model, config, ids, mask, args, common: dict) -> dict:
    """onnx-fp16 as ort_training.inference makes it (export, transformer optimizer, float16 with fp32 I/O) on the CUDA
    provider; skipped with the reason where onnxruntime-gpu is not installed."""
    import tempfile

    import numpy as np
    from transformers import AutoModelForSequenceClassification

    row = {"engine": "onnx-fp16", "precision": "fp16", **common}
    try:
        from ort_training import inference
        from ort_training.loop.backends import import_onnxruntime

        ort = import_onnxruntime()
    except ImportError as exc:
        return {**row, "skipped": f"onnxruntime not importable ({exc})"}
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return {**row, "skipped": "this onnxruntime has no CUDAExecutionProvider (install the ort-gpu-inference extra)"}
    from ort_training.export import export_onnx_classifier

    with tempfile.TemporaryDirectory() as tmp:
        config._attn_implementation = "eager"  # the exporter's graph (as inference.ensure_variant exports)
        eager = AutoModelForSequenceClassification.from_config(config).eval()
        eager.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
        tmp = Path(tmp)
        export_onnx_classifier(eager, tmp / "model.onnx")
        inference._optimize(tmp / "model.onnx", tmp / "opt.onnx", eager.config)
        inference._to_fp16(tmp / "opt.onnx", tmp / "fp16.onnx")
        sess = inference.session(tmp / "fp16.onnx", provider="CUDAExecutionProvider")
        names = [i.name for i in sess.get_inputs()]
        feed = {"input_ids": ids.cpu().numpy(), "attention_mask": mask.cpu().numpy(), "token_type_ids": np.zeros_like(ids.cpu().numpy())}
        feed = {k: feed[k] for k in names}
        seconds = _time(lambda: sess.run(["logits"], feed), args.warmup, args.steps, lambda: None)  # run() returns host arrays
    return {**row, "sentences_per_s": ids.shape[0] / seconds}


def scoring_table(rows: list[dict]) -> str:
    lines = [f"scoring ({rows[0]['config']}, {rows[0]['batch']} x {rows[0]['seq']} tokens, {rows[0]['device']}):"] if rows else []
    for r in rows:
        what = (f"{r['sentences_per_s']:.1f} sentences/s" if "sentences_per_s" in r else
                f"skipped: {r['skipped']}" if "skipped" in r else f"error: {r['error']}")
        lines.append(f"  {r['engine']:>9} {r['precision']:>5}  {what}")
    return "\n".join(lines)


def table(results: list[dict]) -> str:
    head = (f"{'model':>10} {'phase':>5} {'seq':>5} {'prec':>5} {'backend':>8} {'attn':>5} {'head':>6} {'batch':>5} {'seq/s':>9} "
            f"{'ms/step':>8} {'mem GiB':>8} {'MFU':>6} {'NVIDIA A100':>12}")
    lines = [head, "-" * len(head)]
    for r in results:
        model = r.get("model", "bert")
        ref = NVIDIA_A100_80GB.get((r["phase"], r["precision"])) if model == "bert" else None
        ref_s = f"{ref}" if ref else "-"
        key = (f"{model:>10} {r['phase']:>5} {r['seq']:>5} {r['precision']:>5} {r['backend']:>8} {r.get('attention', 'eager'):>5} "
               f"{r['head']:>6} {r['batch']:>5}")
        if "error" in r:
            lines.append(f"{key}  {r['error'][:90]}")
            continue
        mem = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        lines.append(f"{key} {r['seq_per_s']:>9.1f} {r['step_ms']:>8.1f} {mem:>8} {mfu:>6} {ref_s:>12}")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    csv = lambda kind: lambda s: [kind(x) for x in s.split(",") if x]  # noqa: E731
    p.add_argument("--phases", type=csv(int), default=[1, 2])
    p.add_argument("--precisions", type=csv(str), default=["bf16", "fp16", "tf32"])
    p.add_argument("--backends", type=csv(str), default=None, help="default: eager,compile, plus ort where it imports")
    p.add_argument("--heads", type=csv(str), default=["masked", "full"], help="MLM head on the masked positions only, or every position")
    p.add_argument("--batch-size", type=int, default=None, help="override NVIDIA's per-GPU micro-batch")
    p.add_argument("--models", type=csv(str), default=list(MODELS),
                   help="bert (BERT-large, --config), modernbert (--modernbert-config), llama (--llama-config), t5 (--t5-config)")
    p.add_argument("--attentions", type=csv(str), default=["eager", "sdpa"], help="BERT's attention kernels (ModernBERT: sdpa)")
    p.add_argument("--config", default="large", help="BERT config (tiny/base/large or a JSON path)")
    p.add_argument("--modernbert-config", default="modernbert_base", help="ModernBERT config (modernbert_tiny/base/large or a JSON path)")
    p.add_argument("--llama-config", default="llama_1b", help="decoder config (llama_tiny/llama_1b or a JSON path)")
    p.add_argument("--t5-config", default="t5_base", help="encoder-decoder config (t5_tiny/t5_base or a JSON path)")
    p.add_argument("--device", default=None, help="default cuda (cpu with --smoke)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (compilation, ORT export); default 3")
    p.add_argument("--steps", type=int, default=None, help="timed steps; default 10")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense peak for the precision, when not in the table")
    p.add_argument("--timeout", type=float, default=900, help="seconds per variant")
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "bench_gpu.json")
    p.add_argument("--smoke", action="store_true", help="tiny BERT and ModernBERT on CPU, fp32 only, 1 warm-up + 2 steps (CI)")
    p.add_argument("--no-scoring", action="store_true", help="leave the scoring line out")
    p.add_argument("--scoring-only", action="store_true", help="run the scoring line alone (no training variants)")
    p.add_argument("--scoring-precisions", type=csv(str), default=None, help="torch engine's autocast precisions (default fp16,bf16; fp32 with --smoke)")
    p.add_argument("--scoring-config", default=None, help="the classifier's config (default base; tiny with --smoke)")
    p.add_argument("--scoring-batch", type=int, default=None, help=f"sentences per forward pass (default {SCORING_BATCH}; 8 with --smoke)")
    p.add_argument("--scoring-seq", type=int, default=None, help=f"tokens per sentence (default {SCORING_SEQ}; 32 with --smoke)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.config = "tiny" if args.config == "large" else args.config
        args.modernbert_config = "modernbert_tiny" if args.modernbert_config == "modernbert_base" else args.modernbert_config
        args.llama_config = "llama_tiny" if args.llama_config == "llama_1b" else args.llama_config
        args.t5_config = "t5_tiny" if args.t5_config == "t5_base" else args.t5_config
        args.device = args.device or "cpu"
        args.precisions = ["tf32"] if args.precisions == ["bf16", "fp16", "tf32"] else args.precisions
        args.backends = args.backends or ["eager"]
        args.warmup = 1 if args.warmup is None else args.warmup
        args.steps = args.steps or 2
        args.smoke_seq = 32
        args.scoring_precisions = args.scoring_precisions or ["fp32"]
        args.scoring_config = args.scoring_config or "tiny"
        args.scoring_batch = args.scoring_batch or 8
        args.scoring_seq = args.scoring_seq or 32
    args.scoring_precisions = args.scoring_precisions or ["fp16", "bf16"]
    args.scoring_config = args.scoring_config or "base"
    args.scoring_batch = args.scoring_batch or SCORING_BATCH
    args.scoring_seq = args.scoring_seq or SCORING_SEQ
    if set(args.scoring_precisions) - {"fp32", "fp16", "bf16"}:
        p.error(f"--scoring-precisions: unknown {sorted(set(args.scoring_precisions) - {'fp32', 'fp16', 'bf16'})}; choose from fp32, fp16, bf16")
    args.device = args.device or "cuda"
    args.warmup = 3 if args.warmup is None else args.warmup
    args.steps = args.steps or 10
    if args.backends is None:
        args.backends = ["eager", "compile"] + (["ort"] if ort_available() else [])
    for name, allowed in (("precisions", {"bf16", "fp16", "tf32"}), ("backends", {"eager", "compile", "ort"}), ("heads", {"masked", "full"}),
                          ("models", set(MODELS)), ("attentions", {"eager", "sdpa"})):
        bad = set(getattr(args, name)) - allowed
        if bad:
            p.error(f"--{name}: unknown {sorted(bad)}; choose from {sorted(allowed)}")
    if set(args.phases) - {1, 2}:
        p.error("--phases: 1 and/or 2")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device visible to torch; run on a GPU machine, or --smoke / --device cpu", file=sys.stderr)
        return 2
    if "ort" in args.backends and not ort_available():
        print("bench_gpu: --backends ort needs onnxruntime-training and torch-ort importable with this torch "
              "(ORT training is frozen at 1.19.2: torch < 2.7); drop ort or use the pinned stack", file=sys.stderr)
        return 2
    todo = [] if args.scoring_only else variants(args)
    print(f"bench_gpu: {len(todo)} variant(s), torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""), flush=True)
    results = []
    for v in todo:
        r = run_variant(v, args.timeout, in_process=args.smoke)
        results.append(r)
        print(table([r]).splitlines()[-1], flush=True)
    print()
    if results:
        print(table(results))
        print("NVIDIA A100-80GB: phase 1 fp16 580 seq/s, TF32 317; phase 2 fp16 210, TF32 110 (per GPU, DeepLearningExamples BERT README)")
    scored = [] if args.no_scoring else scoring(args)
    if scored:
        print(scoring_table(scored))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"nvidia_a100_80gb_seq_per_s": {f"phase{p}_{q}": s for (p, q), s in NVIDIA_A100_80GB.items()},
                                     "results": results, "scoring": scored}, indent=2) + "\n")
    print(f"bench_gpu: wrote {args.json}")
    return 1 if any("error" in r for r in results + scored) and args.smoke else 0


if __name__ == "__main__":
    sys.exit(main())
