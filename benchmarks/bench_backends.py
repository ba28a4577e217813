"""Training throughput of the ORT, eager and torch.compile backends on the same config and data;
with --sweep, architecture x attention kernel x sequence length (what `--attention auto` rests on).

    PYTHONPATH=. python benchmarks/bench_backends.py                # 4 layers, hidden 256, seq 128, batch 32, fp32
    PYTHONPATH=. python benchmarks/bench_backends.py --variants eager,ort --steps 5
    PYTHONPATH=. python benchmarks/bench_backends.py --sweep        # bert, modernbert x eager, sdpa x 512..4,096

Each variant runs in its own process (ORT reads its switches from the environment at start-up,
torch.compile keeps global caches) through the real `Trainer.train_step` (LAMB, scheduler,
scaler), on synthetic NVIDIA-schema HDF5 unless --input_dir is given. The first --warmup steps
(ORT export, compilation) are timed separately and excluded from seq/s.

--sweep: for each architecture family (models/: bert, modernbert) the family's shipped tiny config
scaled to --layers/--hidden/--heads (intermediate size kept at its ratio to hidden, position table
raised to the longest length), each attention kernel the eager backend runs for it, and each of
--lengths, one optimizer step (MLM with the masked-only head, LAMB, fp32) holds --tokens tokens
(batch = tokens // length) so lengths compare; --mask_fraction of them are predicted. Every
configuration runs in a fresh process, so its peak memory is its own: peak RSS over the RSS after
set-up on CPU (activations, gradients, optimizer state), torch.cuda.max_memory_allocated over the
memory allocated after set-up on GPU. tokens/s is the median over the timed steps. Per
(architecture, length) it prints which kernel was faster, what `auto` resolves to on this device
(asked of the family: ModelFamily.resolve_attention) and a verdict: auto is never slower than the
better kernel, --tolerance allowed for noise. Per (architecture, kernel) it prints peak memory growth
per doubling of the length: at a fixed token count, memory linear in the length per sequence is a
ratio <= 1 per doubling (a quadratic term shows as a ratio towards 2). Results go to --out (JSON) and
a markdown table beside it (.md).

Measured on the 2-core CPU dev machine: see docs/ort_training.md, "Benchmark".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# name -> (backend, dense_seq_output, ort_optimizations)
VARIANTS = {
    "eager": ("eager", True, True),
    "eager_full_head": ("eager", False, True),
    "ort": ("ort", True, True),
    "ort_no_opt": ("ort", True, False),
    "ort_full_head": ("ort", False, True),
    "ort_full_head_no_opt": ("ort", False, False),  # "naive ORTModule": whole-sequence MLM head, ORT optimizers off
    "compile": ("compile", True, True),
    "compile_full_head": ("compile", False, True),
}
DEFAULT = "eager,eager_full_head,ort,ort_no_opt,ort_full_head,ort_full_head_no_opt,compile"


def worker(args) -> dict:
    import torch

    from ort_training.config import PretrainConfig
    from ort_training.loop.trainer import Trainer

    backend, dense, ort_opt = VARIANTS[args.worker]
    cfg = PretrainConfig(input_dir=args.input_dir, config_file=args.config_file, output_dir=args.output_dir, backend=backend,
                         dense_seq_output=dense, ort_optimizations=ort_opt, train_batch_size=args.batch_size,
                         precision=args.precision, max_steps=args.warmup + args.steps + 1, disable_progress_bar=True,
                         skip_hf_export=True, learning_rate=1e-3)
    trainer = Trainer(cfg)
    it = iter(trainer.loader)
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        trainer.train_step(it)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        out = trainer.train_step(it)
    elapsed = time.perf_counter() - t0
    trainer.close()
    return {"variant": args.worker, "seq_per_sec": args.steps * args.batch_size / elapsed, "warmup_s": warm,
            "final_loss": float(out["totals"][0]), "threads": torch.get_num_threads()}


# --- --sweep: architecture x attention x sequence length ------------------------------------------

SWEEP_LENGTHS = (512, 1024, 2048, 4096)
SWEEP_ARCHS = ("bert", "modernbert")
"""The families the sweep measures: its step is the masked-LM one (15% of positions predicted). The decoder and T5 keep
their family's own `auto` table (SDPA; T5 eager only) until a sweep of their objectives is written."""


def sweep_config(path: Path, arch: str, args, max_len: int) -> Path:
    """The family's shipped tiny config scaled to --layers/--hidden/--heads, --vocab_size, and a position
    table of at least `max_len` (BERT's learned positions would index past 512 otherwise)."""
    from ort_training.models import FAMILIES, read_config_json, resolve_config_file

    family = FAMILIES[arch]
    tiny = next(name for name in family.shipped_configs if name.endswith("tiny"))
    cfg = read_config_json(resolve_config_file(tiny))
    ratio = cfg["intermediate_size"] / cfg["hidden_size"]
    cfg.update(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
               intermediate_size=int(ratio * args.hidden), vocab_size=args.vocab_size,
               max_position_embeddings=max(max_len, cfg.get("max_position_embeddings", 0)))
    path.write_text(json.dumps(cfg, indent=2) + "\n")
    return path


def _rss_mib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Linux resets VmHWM (peak RSS) to the current RSS on writing 5 to clear_refs."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def sweep_worker(spec: dict) -> dict:
    """One configuration: build, time --warmup + --steps optimizer steps, measure peak memory."""
    import resource

    import torch

    from benchmarks.bench_gpu import random_batch
    from ort_training.loop.optim import build_optimizer
    from ort_training.models import load_model_config
    from ort_training.models.pretraining import PretrainingModel

    torch.manual_seed(0)
    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    config = load_model_config(spec["config_file"], None, spec["attention"])
    model = PretrainingModel(config, dense_seq_output=True, objective="mlm").to(device).train()
    optimizer = build_optimizer(model, lr=1e-4)
    batch = random_batch(spec["batch"], spec["seq_len"], spec["max_pred"], config.original_vocab_size, device)
    inputs = model.inputs(batch)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(spec["precision"])
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def step() -> tuple[float, float]:
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss, _ = model(*inputs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - t0, float(loss)

    # Baseline after set-up (weights, batch); the peak then covers activations, gradients and LAMB's state.
    if cuda:
        sync()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        base = _rss_mib("VmRSS")
        hwm_reset = _reset_peak_rss()
    warm = [step() for _ in range(spec["warmup"])]
    timed = [step() for _ in range(spec["steps"])]
    if cuda:
        peak_mib = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:  # without clear_refs, ru_maxrss (KiB on Linux) also holds the import's peak: still an upper bound
        peak = _rss_mib("VmHWM") if hwm_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        peak_mib = peak - base if base is not None and peak is not None else None
    times = [t for t, _ in timed]
    tokens = spec["batch"] * spec["seq_len"]
    return {**spec, "tokens_per_s": round(tokens / statistics.median(times), 1), "step_s": [round(t, 3) for t in times],
            "warmup_s": round(sum(t for t, _ in warm), 2), "peak_mem_mib": round(peak_mib, 1) if peak_mib is not None else None,
            "loss": round(timed[-1][1], 4), "threads": torch.get_num_threads(), "torch": torch.__version__}


def run_sweep_spec(spec: dict, in_process: bool) -> dict:
    if in_process:
        try:
            return sweep_worker(spec)
        except Exception as exc:  # a failed configuration is a row with its error
            return {**spec, "error": f"{type(exc).__name__}: {exc}"}
    cmd = [sys.executable, __file__, "--sweep_worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        return {**spec, "error": ("out of memory: " if "out of memory" in proc.stderr.lower() else "") + (tail or f"exit {proc.returncode}")}
    return json.loads(line[len("RESULT "):])


def attention_verdicts(results: list[dict], auto: dict[str, dict[int, str]], tolerance: float) -> list[dict]:
    """Per (arch, seq_len): the faster kernel, what auto picks, and whether auto is at least as fast as the
    better kernel (within `tolerance`, a fraction, for noise)."""
    out = []
    for arch, seq_len in dict.fromkeys((r["arch"], r["seq_len"]) for r in results):
        rows = {r["attention"]: r for r in results if (r["arch"], r["seq_len"]) == (arch, seq_len)}
        tps = {a: r["tokens_per_s"] for a, r in rows.items() if "error" not in r}
        picked = auto[arch][seq_len]
        v = {"arch": arch, "seq_len": seq_len, "tokens_per_s": tps, "auto": picked}
        if not tps:
            out.append({**v, "faster": None, "ok": False, "verdict": "FAIL: no kernel ran"})
            continue
        faster = max(tps, key=tps.get)
        slower = [a for a in tps if a != faster]
        v.update(faster=faster, speedup=round(tps[faster] / tps[slower[0]], 3) if slower else None)
        if picked not in tps:
            out.append({**v, "ok": False, "verdict": f"FAIL: auto picks {picked}, which did not run"})
            continue
        ratio = tps[picked] / tps[faster]
        v["auto_vs_best"] = round(ratio, 3)
        if picked == faster:
            verdict, ok = f"OK: auto -> {faster}, the faster" + (f" ({v['speedup']:.2f}x {slower[0]})" if slower else ""), True
        elif ratio >= 1 - tolerance:
            verdict, ok = f"OK within noise: auto -> {picked} at {ratio:.2f}x {faster} (tolerance {tolerance:.0%})", True
        else:
            verdict, ok = f"AUTO SLOWER: auto -> {picked} at {ratio:.2f}x {faster}; {faster} is {1 / ratio:.2f}x faster", False
        out.append({**v, "ok": ok, "verdict": verdict})
    return out


def memory_growth(results: list[dict], tolerance: float) -> list[dict]:
    """Per (arch, attention): peak memory ratio per doubling of the length at a fixed token count, and the
    exponent of per-sequence memory in the length over the whole range (1 = linear, 2 = quadratic)."""
    out = []
    for arch, att in dict.fromkeys((r["arch"], r["attention"]) for r in results):
        rows = sorted((r for r in results if (r["arch"], r["attention"]) == (arch, att) and r.get("peak_mem_mib")),
                      key=lambda r: r["seq_len"])
        if len(rows) < 2:
            continue
        steps = [{"from": a["seq_len"], "to": b["seq_len"],
                  "ratio_per_doubling": round((b["peak_mem_mib"] / a["peak_mem_mib"]) ** (1 / math.log2(b["seq_len"] / a["seq_len"])), 3)}
                 for a, b in zip(rows, rows[1:])]
        first, last = rows[0], rows[-1]
        per_seq = (last["peak_mem_mib"] / last["batch"]) / (first["peak_mem_mib"] / first["batch"])
        exponent = math.log(per_seq) / math.log(last["seq_len"] / first["seq_len"])
        linear = exponent <= 1 + tolerance
        out.append({"arch": arch, "attention": att, "steps": steps, "per_sequence_exponent": round(exponent, 3), "linear": linear,
                    "peak_mem_mib": {r["seq_len"]: r["peak_mem_mib"] for r in rows},
                    "verdict": f"{'OK' if linear else 'FASTER THAN LINEAR'}: per-sequence peak memory ~ length^{exponent:.2f} "
                               f"from {first['seq_len']} to {last['seq_len']}"})
    return out


def sweep_markdown(results: list[dict], verdicts: list[dict], growth: list[dict], meta: dict) -> str:
    atts = list(dict.fromkeys(r["attention"] for r in results))
    lines = [f"Device {meta['device']} ({meta['threads']} threads), torch {meta['torch']}, transformers {meta['transformers']}; "
             f"{meta['layers']} layers, hidden {meta['hidden']}, {meta['heads']} heads, vocab {meta['vocab_size']}, "
             f"{meta['tokens']} tokens per step, {meta['precision']}, median of {meta['steps']} steps after {meta['warmup']} warm-up.", "",
             "| arch | seq | batch | " + " | ".join(f"{a} tok/s" for a in atts) + " | " + " | ".join(f"{a} peak MiB" for a in atts)
             + " | faster | auto | verdict |",
             "|---|---:|---:|" + "---:|" * (2 * len(atts)) + "---|---|---|"]
    for v in verdicts:
        rows = {r["attention"]: r for r in results if (r["arch"], r["seq_len"]) == (v["arch"], v["seq_len"])}
        batch = next(iter(rows.values()))["batch"]
        tps = [f"{rows[a]['tokens_per_s']:.0f}" if a in rows and "error" not in rows[a] else "failed" for a in atts]
        mem = [f"{rows[a]['peak_mem_mib']:.0f}" if a in rows and rows[a].get("peak_mem_mib") is not None else "-" for a in atts]
        faster = f"{v['faster']} ({v['speedup']:.2f}x)" if v.get("speedup") else str(v["faster"])
        lines.append(f"| {v['arch']} | {v['seq_len']} | {batch} | " + " | ".join(tps + mem) + f" | {faster} | {v['auto']} | {v['verdict']} |")
    if growth:
        lines += ["", "| arch | attention | peak MiB by length | ratio per doubling (fixed tokens) | per-sequence exponent | verdict |",
                  "|---|---|---|---|---:|---|"]
        for g in growth:
            mems = ", ".join(f"{k}: {m:.0f}" for k, m in g["peak_mem_mib"].items())
            ratios = ", ".join(f"{s['ratio_per_doubling']:.2f}" for s in g["steps"])
            lines.append(f"| {g['arch']} | {g['attention']} | {mems} | {ratios} | {g['per_sequence_exponent']:.2f} | {g['verdict']} |")
    return "\n".join(lines) + "\n"


def sweep(args) -> dict:
    import torch
    import transformers

    from ort_training.models import FAMILIES

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    device_type = torch.device(device).type
    archs = args.archs.split(",")
    lengths = [int(x) for x in args.lengths.split(",")]
    unknown = set(archs) - set(FAMILIES)
    if unknown:
        raise SystemExit(f"--archs: unknown {sorted(unknown)}; choose from {sorted(FAMILIES)}")
    tmp = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    auto = {arch: {n: FAMILIES[arch].resolve_attention("auto", "eager", device_type, n) for n in lengths} for arch in archs}
    results = []
    for arch in archs:
        family = FAMILIES[arch]
        runs = family.attention["eager"]  # the kernels the eager backend can run for this family
        attentions = args.attentions.split(",") if args.attentions else list(runs)
        bad = set(attentions) - set(runs)
        if bad:
            raise SystemExit(f"--attentions: {family.name} runs {', '.join(runs)} under the eager backend, not {sorted(bad)}")
        config_file = sweep_config(tmp / f"{arch}_config.json", arch, args, max(lengths))
        for seq_len in lengths:
            batch = max(1, args.tokens // seq_len)
            for attention in attentions:
                spec = dict(arch=arch, attention=attention, seq_len=seq_len, batch=batch, config_file=str(config_file),
                            max_pred=max(1, round(args.mask_fraction * seq_len)), device=device, precision=args.precision,
                            warmup=args.warmup, steps=args.steps)
                r = run_sweep_spec(spec, args.in_process)
                results.append(r)
                mem = r.get("peak_mem_mib")
                shown = (f"{r['tokens_per_s']:9.0f} tok/s  peak {mem if mem is not None else float('nan'):8.0f} MiB  "
                         f"(warm-up {r['warmup_s']:.1f} s)" if "error" not in r else f"failed: {r['error'][:200]}")
                print(f"{arch:11s} {attention:6s} seq {seq_len:5d} batch {batch:4d}  {shown}", flush=True)
    verdicts = attention_verdicts(results, auto, args.tolerance)
    growth = memory_growth(results, args.tolerance)
    ok_runs = [r for r in results if "error" not in r]
    meta = dict(device=device, threads=ok_runs[0]["threads"] if ok_runs else torch.get_num_threads(), torch=torch.__version__,
                transformers=transformers.__version__, layers=args.layers, hidden=args.hidden, heads=args.heads,
                vocab_size=args.vocab_size, tokens=args.tokens, precision=args.precision, steps=args.steps, warmup=args.warmup,
                mask_fraction=args.mask_fraction, tolerance=args.tolerance,
                auto={arch: {str(n): k for n, k in by_len.items()} for arch, by_len in auto.items()}, command=" ".join(sys.argv))
    md = sweep_markdown(results, verdicts, growth, meta)
    print("\n" + md)
    for v in verdicts:
        print(f"verdict {v['arch']} seq {v['seq_len']}: {v['verdict']}")
    for g in growth:
        print(f"memory {g['arch']} {g['attention']}: {g['verdict']} (per doubling: "
              + ", ".join(f"{s['ratio_per_doubling']:.2f}" for s in g["steps"]) + ")")
    report = {"meta": meta, "results": results, "verdicts": verdicts, "memory_growth": growth}
    out = Path(args.json_out or REPO / "benchmarks" / "results" / "bench_backends_sweep.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(md)
    print(f"bench_backends: wrote {out} and {out.with_suffix('.md')}")
    return report


def main(argv=None) -> list[dict] | dict:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--variants", default=DEFAULT, help=f"Comma list from {sorted(VARIANTS)}.")
    p.add_argument("--layers", type=int, default=4, help="Transformer layers.")
    p.add_argument("--hidden", type=int, default=256, help="Hidden size.")
    p.add_argument("--heads", type=int, default=None, help="Attention heads (default hidden / 64).")
    p.add_argument("--seq_len", type=int, default=128, help="Sequence length of the synthetic data.")
    p.add_argument("--max_pred", type=int, default=20, help="Masked positions per sequence.")
    p.add_argument("--vocab_size", type=int, default=30522, help="Vocabulary size.")
    p.add_argument("--batch_size", type=int, default=32, help="Sequences per optimizer step.")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="Numeric precision.")
    p.add_argument("--steps", type=int, default=None, help="Timed steps (default 10; --sweep: 5).")
    p.add_argument("--warmup", type=int, default=None, help="Untimed steps first (export / compile; default 2; --sweep: 1).")
    p.add_argument("--input_dir", default=None, help="Real HDF5 data instead of synthetic.")
    p.add_argument("--config_file", default=None, help="BERT config instead of --layers/--hidden.")
    p.add_argument("--json_out", "--out", default=None,
                   help="Also write the results here (--sweep: default benchmarks/results/bench_backends_sweep.json, "
                        "and the markdown table beside it as .md).")
    sw = p.add_argument_group("--sweep: architecture x attention x sequence length (eager backend, MLM, masked-only head)")
    sw.add_argument("--sweep", action="store_true", help="Run the sweep instead of --variants.")
    sw.add_argument("--archs", default=",".join(SWEEP_ARCHS),
                    help="Comma list of masked-LM architecture families (ort_training.models) whose --attention auto the sweep checks.")
    sw.add_argument("--attentions", default=None, help="Comma list of attention kernels (default: all the eager backend runs).")
    sw.add_argument("--lengths", default=",".join(map(str, SWEEP_LENGTHS)), help="Comma list of sequence lengths.")
    sw.add_argument("--tokens", type=int, default=8192, help="Tokens per optimizer step (batch = tokens // length).")
    sw.add_argument("--mask_fraction", type=float, default=0.15, help="Predicted positions per sequence, as a fraction.")
    sw.add_argument("--device", default=None, help="cpu or cuda (default cuda when available).")
    sw.add_argument("--tolerance", type=float, default=0.05,
                    help="Noise allowed before a verdict fails: auto within this fraction of the faster kernel; "
                         "per-sequence memory exponent up to 1 + this.")
    sw.add_argument("--in_process", action="store_true",
                    help="All configurations in this process (tests): faster, but the peak memory figures then mix.")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--sweep_worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--output_dir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.heads = args.heads or max(1, args.hidden // 64)
    if args.sweep_worker:
        print("RESULT " + json.dumps(sweep_worker(json.loads(args.sweep_worker))), flush=True)
        return []
    if args.sweep:
        args.steps = 5 if args.steps is None else args.steps
        args.warmup = 1 if args.warmup is None else args.warmup
        if args.steps < 1 or args.tokens < 1 or not 0 < args.mask_fraction <= 1:
            p.error("--steps and --tokens must be >= 1 and --mask_fraction in (0, 1]")
        return sweep(args)
    args.steps = 10 if args.steps is None else args.steps
    args.warmup = 2 if args.warmup is None else args.warmup
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return []

    from ort_training.data.synthetic import write_bert_config, write_dataset

    tmp = Path(tempfile.mkdtemp(prefix="bench_backends_"))
    if args.input_dir is None:
        n = args.batch_size * (args.steps + args.warmup + 2)
        args.input_dir = str(write_dataset(tmp / "data", 1, n, args.seq_len, args.max_pred, args.vocab_size))
    if args.config_file is None:
        args.config_file = str(write_bert_config(tmp / "bert_config.json", args.vocab_size, args.hidden, args.layers,
                                                 args.heads, dropout=0.1))
    results = []
    for name in args.variants.split(","):
        if name not in VARIANTS:
            raise SystemExit(f"--variants: unknown {name!r}; choose from {sorted(VARIANTS)}")
        cmd = [sys.executable, __file__, "--worker", name, "--output_dir", str(tmp / name)] + [
            f"--{k}={v}" for k, v in vars(args).items() if k in ("input_dir", "config_file", "batch_size", "precision", "steps", "warmup")
        ]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            print(f"{name}: failed\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        res = json.loads(line[len("RESULT "):])
        res["wall_s"] = time.perf_counter() - t0
        results.append(res)
        print(f"{name:22s} {res['seq_per_sec']:8.2f} seq/s   (warm-up {res['warmup_s']:.1f} s)", flush=True)
    base = next((r["seq_per_sec"] for r in results if r["variant"] == "eager"), None)
    print(f"\nmodel: {args.layers} layers, hidden {args.hidden}, seq {args.seq_len}, batch {args.batch_size}, {args.precision}")
    print(f"{'variant':22s} {'seq/s':>8s} {'vs eager':>9s} {'warm-up s':>10s}")
    for r in results:
        ratio = f"{r['seq_per_sec'] / base:8.2f}x" if base else "      n/a"
        print(f"{r['variant']:22s} {r['seq_per_sec']:8.2f} {ratio:>9s} {r['warmup_s']:10.1f}")
    by = {r["variant"]: r["seq_per_sec"] for r in results}
    if "ort" in by and "ort_no_opt" in by:
        print(f"ORT optimizations on/off: {by['ort'] / by['ort_no_opt']:.2f}x")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
