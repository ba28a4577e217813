"""Fault injection for training: SIGKILL (no chance to checkpoint) or SIGTERM (checkpoint and exit 143)
at random moments of a real `python -m ort_training.run_pretraining`, rerun until it finishes, then
compare with an uninterrupted run: the same final weights bit for bit, every step once in the
metrics, an export and a summary. TRAINING_FAULT_SEED reproduces a failing draw."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ort_training.data.synthetic import tiny_setup
from ort_training.loop.checkpoint import list_checkpoints

pytestmark = pytest.mark.stack_free  # no torch/transformers in what it tests: `make test` runs it, `make test-current` does not

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
STEPS = 8


def command(setup, out: Path) -> list[str]:
    return [sys.executable, "-m", "ort_training.run_pretraining", "--input_dir", setup["input_dir"], "--config_file", setup["config_file"],
            "--vocab_file", setup["vocab_file"], "--output_dir", str(out), "--backend", "eager", "--train_batch_size", "8",
            "--max_steps", str(STEPS), "--num_steps_per_checkpoint", "1", "--keep_checkpoints", "2", "--learning_rate", "1e-3",
            "--dropout", "0.1", "--resume_from_checkpoint", "--disable_progress_bar"]


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    step, folder = list_checkpoints(out)[-1]
    assert step == STEPS
    return torch.load(folder / "checkpoint.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory.mktemp("faults"), n_files=2, n_per_file=40, seq_len=32, max_pred=5, hidden=32)


def test_random_kills_then_resume_equal_an_uninterrupted_run(setup, tmp_path):
    seed = int(os.environ.get("TRAINING_FAULT_SEED", random.randrange(10**6)))
    rng = random.Random(seed)
    reference = tmp_path / "reference"
    assert subprocess.run(command(setup, reference), env=ENV, cwd=REPO, capture_output=True, timeout=600).returncode == 0

    job = tmp_path / "job"
    faults = []
    for _ in range(3):
        proc = subprocess.Popen(command(setup, job), env=ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Strike at a random moment once our entry point runs (it has taken the output dir's lock; before
        # that is Python's own start-up, where no handler can exist): during start-up, the restore or training.
        deadline = time.time() + 300
        lock = job / ".lock"
        while time.time() < deadline and proc.poll() is None and not (lock.is_file() and f'"pid": {proc.pid}' in lock.read_text()):
            time.sleep(0.05)
        while time.time() < deadline and proc.poll() is None and not list_checkpoints(job) and rng.random() < 0.9:
            time.sleep(0.2)
        time.sleep(rng.uniform(0.0, 2.0))
        sig = rng.choice([signal.SIGKILL, signal.SIGTERM])
        if proc.poll() is None:
            proc.send_signal(sig)
        rc = proc.wait(timeout=300)
        faults.append((sig.name, rc))
        assert rc in (0, 143, -signal.SIGKILL), (seed, faults)
    proc = subprocess.run(command(setup, job), env=ENV, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (seed, faults, proc.stderr[-2000:])

    ref, got = final_weights(reference), final_weights(job)
    assert ref.keys() == got.keys()
    for name in ref:
        assert torch.equal(ref[name], got[name]), (seed, faults, name)
    steps = [json.loads(line)["step"] for line in (job / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1)), (seed, faults, steps)
    assert (job / "hf_model" / "config.json").is_file() and json.loads((job / "summary.json").read_text())["global_step"] == STEPS
    assert not (job / "preempted.json").exists()
