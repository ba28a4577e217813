"""Training never ends "successful" on bad numbers, a torn metrics line never blocks a resume, and two
runs never share an output dir (issue 10, classes 2-4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bundle.locking import RunLock
from ort_training.checkpoint import list_checkpoints
from ort_training.synthetic import tiny_setup

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory.mktemp("reliability"), n_files=2, n_per_file=32, seq_len=32, max_pred=5, hidden=32)


def train(setup, out: Path, *extra: str) -> subprocess.CompletedProcess:
    args = ["--input_dir", setup["input_dir"], "--config_file", setup["config_file"], "--vocab_file", setup["vocab_file"],
            "--output_dir", str(out), "--backend", "eager", "--train_batch_size", "8", "--disable_progress_bar", *extra]
    return subprocess.run([sys.executable, "-m", "ort_training.run_pretraining", *args], env=ENV, cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def test_non_finite_loss_stops_keeps_the_last_finite_checkpoint_and_exports_nothing(setup, tmp_path):
    proc = train(setup, tmp_path, "--learning_rate", "1e6", "--warmup_proportion", "0", "--max_steps", "20",
                 "--num_steps_per_checkpoint", "1", "--keep_checkpoints", "2")
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "is not finite" in proc.stderr or "the loss is nan" in proc.stderr.lower()
    assert not (tmp_path / "hf_model").exists() and not (tmp_path / "summary.json").exists()
    found = list_checkpoints(tmp_path)
    assert found, "the finite checkpoints before the blow-up are kept"
    state = torch.load(found[-1][1] / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_second_run_into_a_busy_output_dir_is_refused_naming_the_holder(setup, tmp_path):
    with RunLock(tmp_path, "training"):
        proc = train(setup, tmp_path, "--max_steps", "1")
    assert proc.returncode == 2 and "in use by another training run" in proc.stderr and f'"pid": {os.getpid()}' in proc.stderr
    assert not (tmp_path / "checkpoints").exists()
    assert train(setup, tmp_path, "--max_steps", "1", "--skip_hf_export").returncode == 0  # the lock dies with its holder


def test_torn_metrics_line_does_not_block_resume(setup, tmp_path):
    args = ("--max_steps", "4", "--num_steps_per_checkpoint", "2", "--skip_hf_export")
    assert train(setup, tmp_path, *args).returncode == 0
    import shutil

    shutil.rmtree(tmp_path / "checkpoints" / "step-4")  # as if killed before the last checkpoint...
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 5, "loss": 7.')  # ...during an append (or on a full disk)
    proc = train(setup, tmp_path, *args, "--resume_from_checkpoint")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "torn last line" in proc.stderr
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
