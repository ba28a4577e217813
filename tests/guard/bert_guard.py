"""Guard values of the BERT path: reference losses and a weight digest of a fixed-seed tiny two-phase run.

Recorded before the model seam moved any code (issue 14), so a refactor can prove it changed nothing:
`test_bert_guard.py` reruns the same runs and compares. Regenerate (only when a change is *meant* to
alter the numbers, and say why in the commit):

    PYTHONPATH=. .venv/bin/python tests/guard/bert_guard.py --write

The runs: synthetic NVIDIA-schema data (ort_training.data.synthetic, fixed seeds), a 2-layer hidden-32 BERT with
dropout 0.1, phase 1 (4 steps, seq 32) then phase 2 (3 steps, seq 64) in one output dir, for each case below.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

GUARD_FILE = Path(__file__).with_name("bert_reference.json")
CASES = {
    # name: (backend, objective)
    "eager_mlm_nsp": ("eager", "mlm_nsp"),
    "eager_mlm": ("eager", "mlm"),
    "ort_mlm_nsp": ("ort", "mlm_nsp"),
}


def weight_fingerprint(folder: Path) -> dict:
    """sha256 over the export's tensors (sorted names, raw bytes) and per-tensor float64 sum / sum of squares,
    which a tolerance can compare on a CPU whose kernels round differently."""
    import torch
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "model.safetensors"))
    digest = hashlib.sha256()
    stats = {}
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        digest.update(name.encode())
        digest.update(t.numpy().tobytes())
        d = t.to(torch.float64)
        stats[name] = [float(d.sum()), float((d * d).sum())]
    return {"sha256": digest.hexdigest(), "tensor_stats": stats}


def run_case(root: Path, backend: str, objective: str) -> dict:
    """Train both phases; the per-step losses of metrics.jsonl and the phase-2 export's fingerprint."""
    from ort_training.data.synthetic import tiny_setup, write_dataset
    from ort_training.loop.metrics import read_metrics
    from ort_training.run_pretraining import main as pretrain_main

    setup = tiny_setup(root, n_files=2, n_per_file=32, seq_len=32, max_pred=5, hidden=32, dropout=0.1)
    phase2_data = write_dataset(root / "data64", 2, 16, seq_len=64, max_pred=8, vocab_size=1003, seed=9)
    out = root / "out"
    common = ["--config_file", setup["config_file"], "--vocab_file", setup["vocab_file"], "--output_dir", str(out),
              "--backend", backend, "--objective", objective, "--disable_progress_bar", "--num_steps_per_checkpoint", "2",
              "--seed", "1234"]
    pretrain_main(common + ["--input_dir", setup["input_dir"], "--max_steps", "4", "--train_batch_size", "8",
                            "--learning_rate", "1e-2", "--warmup_proportion", "0.25"])
    pretrain_main(common + ["--input_dir", str(phase2_data), "--max_steps", "3", "--train_batch_size", "4", "--learning_rate",
                            "5e-3", "--phase2", "--resume_from_checkpoint", "--phase1_end_step", "4"])
    records = read_metrics(out / "metrics.jsonl")
    keys = ("loss", "mlm_loss", "nsp_loss", "mlm_accuracy")
    return {"steps": [{k: r[k] for k in keys if k in r} for r in records], **weight_fingerprint(out / "hf_model")}


def cpu_capability() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()


def stack_key() -> str:
    """References are kept per torch release: another torch rounds differently (both stacks are guarded)."""
    import torch

    return torch.__version__.split("+")[0]


def ort_usable() -> bool:
    try:
        from ort_training.loop.backends import import_ortmodule

        import_ortmodule()
        return True
    except Exception:  # noqa: BLE001 -- the current stack has no ORT training
        return False


def main(argv: list[str] | None = None) -> int:
    import tempfile

    import torch
    import transformers

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help=f"record this stack's values in {GUARD_FILE.name} (otherwise print)")
    args = p.parse_args(argv)
    names = [n for n in CASES if CASES[n][0] != "ort" or ort_usable()]
    with tempfile.TemporaryDirectory() as tmp:
        cases = {name: run_case(Path(tmp) / name, *CASES[name]) for name in names}
    record = {"recorded_with": {"torch": torch.__version__, "transformers": transformers.__version__,
                                "cpu_capability": cpu_capability()}, "cases": cases}
    if args.write:
        stacks = json.loads(GUARD_FILE.read_text()) if GUARD_FILE.exists() else {}
        stacks[stack_key()] = record
        GUARD_FILE.write_text(json.dumps(stacks, indent=1, sort_keys=True) + "\n")
    else:
        sys.stdout.write(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
