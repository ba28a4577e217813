"""Fine-tuning on several ranks (2 gloo processes on CPU: the GPU path's stand-in): DDP with the same global batch
as one process gives the same losses (to 1e-5 relative; dropout off, as dropout masks are drawn per rank) and the
same validation figures, and a 2-rank run stopped by SIGTERM and resumed ends with bitwise the weights of an
uninterrupted 2-rank run. Plus --device refusals and the Slurm launcher's torchrun dry run."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import cli_runs
import pytest
import torch

from ort_training import finetune

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("_predict_fixtures", Path(__file__).with_name("test_predict.py"))
_fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fx)

ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}

SIGTERM_WORKER = r'''
import os, signal, sys
from ort_training import finetune
from ort_training.loop import trainer as loop
rank, at_step = int(sys.argv[1]), int(sys.argv[2])
step = loop.Trainer.train_step
def train_step(self, it):  # a real SIGTERM to one rank after this step (the ranks agree to stop through an all-reduce)
    out = step(self, it)
    if self.env.rank == rank and self.global_step + 1 == at_step:
        os.kill(os.getpid(), signal.SIGTERM)
    return out
loop.Trainer.train_step = train_step
sys.exit(finetune.main(sys.argv[3:]))
'''


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(_fx.SPECIAL + sorted(set(_fx.FILLER) | {k for v in _fx.KEYS.values() for k in v})) + "\n")
    config = root / "bert_config.json"
    config.write_text(json.dumps({**_fx.TINY, "vocab_size": len(vocab.read_text().split())}))
    files = {name: _fx.write_csv(root / f"{name}.csv", _fx.rows(n, seed)) for name, n, seed in (("train", 64, 1), ("dev", 12, 2), ("test", 12, 3))}
    return {"root": root, "vocab": str(vocab), "config": str(config), **files}


def argv(data, out, batch, *extra):
    return ["--train_file", data["train"], "--validation_file", data["dev"], "--test_file", data["test"], "--text_column", "note",
            "--label_column", "dx", "--output_dir", str(out), "--config_file", data["config"], "--vocab_file", data["vocab"],
            "--max_seq_length", "16", "--max_steps", "12", "--eval_steps", "4", "--log_freq", "1", "--patience", "0",
            "--train_batch_size", str(batch), "--eval_batch_size", "5", "--learning_rate", "3e-3", "--backend", "eager",
            "--dropout", "0", "--device", "cpu", "--disable_progress_bar", *extra]


def torchrun(tmp_path, args, sigterm=None):
    if sigterm:
        worker = tmp_path / "worker.py"
        worker.write_text(SIGTERM_WORKER)
        target = [str(worker), str(sigterm[0]), str(sigterm[1])]
    else:
        target = ["-m", "ort_training.finetune"]
    return cli_runs.torchrun([*target, *args], ENV, timeout=900)


def lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def final_weights(out):
    ckpt = torch.load(Path(out) / "checkpoints" / "step-12" / "checkpoint.pt", map_location="cpu", weights_only=True)
    return ckpt


@pytest.fixture(scope="module")
def two_ranks(data, tmp_path_factory):
    """The uninterrupted 2-rank run (4 sequences per rank: a global batch of 8)."""
    tmp = tmp_path_factory.mktemp("two")
    res = torchrun(tmp, argv(data, tmp / "ft", 4))
    assert res.returncode == 0, res.stderr[-6000:]
    return tmp / "ft"


def test_two_ranks_match_one_rank_with_the_same_global_batch(data, two_ranks, tmp_path):
    one = tmp_path / "one"
    assert finetune.main(argv(data, one, 8)) == 0
    a, b = lines(one / "metrics.jsonl"), lines(two_ranks / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 13))
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5), (x, y)
    va, vb = lines(one / finetune.HISTORY_FILE), lines(two_ranks / finetune.HISTORY_FILE)
    assert [r["step"] for r in va] == [r["step"] for r in vb] == [4, 8, 12]  # one record per evaluation, not one per rank
    for x, y in zip(va, vb):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-4) and y["macro_f1"] == pytest.approx(x["macro_f1"], abs=1e-9)
    w1, w2 = final_weights(one)["model"], final_weights(two_ranks)["model"]
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-4
    ckpt = final_weights(two_ranks)
    assert len(ckpt["data"]) == len(ckpt["rng"]) == 2 and ckpt["train_state"]["world_size"] == 2  # every rank's loader state
    assert (two_ranks / "hf_model" / "config.json").is_file() and (two_ranks / "test_report.json").is_file()


def test_two_ranks_sigterm_then_resume_is_bitwise(data, two_ranks, tmp_path):
    out = tmp_path / "ft"
    stopped = torchrun(tmp_path, argv(data, out, 4), sigterm=(1, 5))
    assert stopped.returncode != 0  # a rank exits 143 after the checkpoint; torchrun reports it
    assert [step for step in sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("step-*"))][-1] == 5
    resumed = torchrun(tmp_path, argv(data, out, 4, "--resume_from_checkpoint"))
    assert resumed.returncode == 0, resumed.stderr[-6000:]
    a, b = final_weights(two_ranks), final_weights(out)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [r["loss"] for r in lines(out / "metrics.jsonl")] == [r["loss"] for r in lines(two_ranks / "metrics.jsonl")]
    assert lines(out / finetune.HISTORY_FILE) == lines(two_ranks / finetune.HISTORY_FILE)


def test_device_cuda_refused_in_one_line_without_a_gpu(data, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args = [a if a != "cpu" else "cuda" for a in argv(data, tmp_path / "ft", 8)]
    assert finetune.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cuda: torch.cuda.is_available() is false" in err[0], err
    assert not (tmp_path / "ft").exists()


def test_finetune_launcher_dry_run_prints_the_torchrun_command(data, tmp_path):
    env = {**ENV, "DRY_RUN": "1", "PYTHON": sys.executable, "CODEDIR": str(REPO), "GPUS_PER_NODE": "2"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "slurm" / "finetune.sbatch"), *argv(data, tmp_path / "ft", 4)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch.distributed.run --standalone --nproc_per_node 2 -m ort_training.finetune" in proc.stdout
    assert "dry run: settings checked" in proc.stdout and not (tmp_path / "ft").exists()
