"""Training throughput of the ORT, eager and torch.compile backends on the same config and data.

    PYTHONPATH=. python benchmarks/bench_backends.py                # 4 layers, hidden 256, seq 128, batch 32, fp32
    PYTHONPATH=. python benchmarks/bench_backends.py --variants eager,ort --steps 5

Each variant runs in its own process (ORT reads its switches from the environment at start-up,
torch.compile keeps global caches) through the real `Trainer.train_step` (LAMB, scheduler,
scaler), on synthetic NVIDIA-schema HDF5 unless --input_dir is given. The first --warmup steps
(ORT export, compilation) are timed separately and excluded from seq/s.
"""

from __future__ import annotations

import argparse
import json
import os
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
    from ort_training.trainer import Trainer

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


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--variants", default=DEFAULT, help=f"Comma list from {sorted(VARIANTS)}.")
    p.add_argument("--layers", type=int, default=4, help="Transformer layers.")
    p.add_argument("--hidden", type=int, default=256, help="Hidden size (heads = hidden / 64).")
    p.add_argument("--seq_len", type=int, default=128, help="Sequence length of the synthetic data.")
    p.add_argument("--max_pred", type=int, default=20, help="Masked positions per sequence.")
    p.add_argument("--vocab_size", type=int, default=30522, help="Vocabulary size.")
    p.add_argument("--batch_size", type=int, default=32, help="Sequences per optimizer step.")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="Numeric precision.")
    p.add_argument("--steps", type=int, default=10, help="Timed steps.")
    p.add_argument("--warmup", type=int, default=2, help="Untimed steps first (export / compile).")
    p.add_argument("--input_dir", default=None, help="Real HDF5 data instead of synthetic.")
    p.add_argument("--config_file", default=None, help="BERT config instead of --layers/--hidden.")
    p.add_argument("--json_out", default=None, help="Also write the results here.")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--output_dir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return []

    from ort_training.synthetic import write_bert_config, write_dataset

    tmp = Path(tempfile.mkdtemp(prefix="bench_backends_"))
    if args.input_dir is None:
        n = args.batch_size * (args.steps + args.warmup + 2)
        args.input_dir = str(write_dataset(tmp / "data", 1, n, args.seq_len, args.max_pred, args.vocab_size))
    if args.config_file is None:
        args.config_file = str(write_bert_config(tmp / "bert_config.json", args.vocab_size, args.hidden, args.layers,
                                                 max(1, args.hidden // 64), dropout=0.1))
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
