"""Kill at step k (SIGTERM) + resume gives the same losses as an uninterrupted run; checkpoints are safe to load."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ort_training.config import PretrainConfig
from ort_training.data.synthetic import tiny_setup
from ort_training.loop.checkpoint import list_checkpoints, resolve_checkpoint
from ort_training.loop.metrics import read_metrics
from ort_training.loop.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
STEPS = 10


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    # Dropout on: the resumed run must also restore the RNG to match.
    return tiny_setup(tmp_path_factory.mktemp("resume"), n_files=3, n_per_file=24, seq_len=32, max_pred=5, dropout=0.1,
                      hidden=32)


class Crash(RuntimeError):
    pass


def run(setup, out, backend, stop_at=None, resume=False, crash_at=None, **overrides):
    kw = dict(max_steps=STEPS, train_batch_size=8, gradient_accumulation_steps=2, learning_rate=1e-2, warmup_proportion=0.2)
    cfg = PretrainConfig(**setup, output_dir=str(out), backend=backend, disable_progress_bar=True, skip_hf_export=True,
                         num_steps_per_checkpoint=3, keep_checkpoints=2, resume_from_checkpoint=resume, **{**kw, **overrides})
    trainer = Trainer(cfg)
    losses = {}

    def hook(tr, rec):
        losses[rec["step"]] = rec["loss"]
        if stop_at is not None and tr.global_step == stop_at:
            signal.raise_signal(signal.SIGTERM)  # what a preemptible VM sends
        if crash_at is not None and tr.global_step == crash_at:
            raise Crash(f"killed at step {crash_at}")  # a hard kill: no checkpoint at this step

    trainer.hooks.append(hook)
    try:
        summary = trainer.train()
    finally:
        trainer.close()
    return losses, summary


@pytest.mark.parametrize("backend,tol", [("eager", 0.0), pytest.param("ort", 1e-6, marks=pytest.mark.ort)])
def test_kill_and_resume_matches_uninterrupted(setup, tmp_path, backend, tol):
    ref, _ = run(setup, tmp_path / "ref", backend)
    killed, summary = run(setup, tmp_path / "job", backend, stop_at=4)
    assert summary == {"preempted": True, "global_step": 4, "steps_this_attempt": 4} and sorted(killed) == [1, 2, 3, 4]
    # SIGTERM at step 4 wrote step-4 (between the periodic step-3 and step-6); keep=2 retained step-3 too.
    assert [s for s, _ in list_checkpoints(tmp_path / "job")] == [3, 4]
    assert json.loads((tmp_path / "job" / "preempted.json").read_text()) == summary  # for wrappers (torchrun)
    resumed, summary = run(setup, tmp_path / "job", backend, resume=True)
    assert not (tmp_path / "job" / "preempted.json").exists()
    assert sorted(resumed) == list(range(5, STEPS + 1)) and summary["global_step"] == STEPS
    for step in range(5, STEPS + 1):
        if tol == 0.0:
            assert resumed[step] == ref[step], f"step {step}: {resumed[step]!r} != {ref[step]!r}"
        else:
            assert abs(resumed[step] - ref[step]) <= tol * abs(ref[step]), f"step {step}"
    # metrics.jsonl of the job holds the whole curve, killed part and resumed part.
    assert [r["step"] for r in read_metrics(tmp_path / "job" / "metrics.jsonl")] == list(range(1, STEPS + 1))
    assert [s for s, _ in list_checkpoints(tmp_path / "job")] == [9, 10]


def test_checkpoint_loads_with_weights_only(setup, tmp_path):
    run(setup, tmp_path, "eager")
    ckpt = torch.load(resolve_checkpoint(tmp_path), weights_only=True)
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "scaler", "train_state", "data", "rng"}
    inputs = ckpt["train_state"].pop("inputs")  # what it was trained on: a resume on other data is refused
    assert inputs["digest"] and str(setup["input_dir"]) in inputs["describe"]
    tokenizer = ckpt["train_state"].pop("tokenizer")  # whose ids the weights learnt: another tokenizer's data is refused
    assert tokenizer["file"] == Path(setup["vocab_file"]).name and len(tokenizer["sha256"]) == 64
    assert ckpt["train_state"] == {"global_step": STEPS, "phase_step": STEPS, "phase": 1, "world_size": 1, "micro_batch_size": 4,
                                   "seed": PretrainConfig.seed, "learning_rate": 1e-2, "max_steps": STEPS, "warmup_proportion": 0.2,
                                   "optimizer": PretrainConfig.optimizer, "lr_schedule": PretrainConfig.lr_schedule}
    assert not list((tmp_path / "checkpoints").glob(".*tmp*"))  # no temp leftovers
    # A rerun of the finished phase with --resume_from_checkpoint is a no-op, not a re-export.
    _, summary = run(setup, tmp_path, "eager", resume=True)
    assert summary == {"phase": 1, "already_finished": True, "global_step": STEPS}
    assert [s for s, _ in list_checkpoints(tmp_path)] == [9, 10]


def test_sigterm_from_outside_checkpoints_and_exits(setup, tmp_path):
    """A real external SIGTERM to the CLI: it finishes the current step, saves, exits 143; resume completes."""
    cmd = [sys.executable, "-m", "ort_training.run_pretraining", "--input_dir", setup["input_dir"], "--config_file",
           setup["config_file"], "--output_dir", str(tmp_path), "--backend", "eager", "--max_steps", "400",
           "--train_batch_size", "4", "--num_steps_per_checkpoint", "1000", "--skip_hf_export", "--disable_progress_bar",
           "--resume_from_checkpoint"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.is_file() and len(read_metrics(metrics)) >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, output  # not 0: wrappers must not treat a preempted phase as done
    steps = list_checkpoints(tmp_path)
    assert len(steps) == 1 and 2 <= steps[0][0] < 400, output
    assert json.loads(output.strip().splitlines()[-1]) == {"preempted": True, "global_step": steps[0][0], "steps_this_attempt": steps[0][0]}
    # The resumed run continues from that step (same flags: a changed --max_steps would be refused).
    resumed = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while time.time() < deadline + 120 and not (len(read_metrics(metrics)) >= steps[0][0] + 2):
        time.sleep(0.2)
    resumed.send_signal(signal.SIGTERM)
    output, _ = resumed.communicate(timeout=120)
    assert resumed.returncode == 143, output
    assert f"resumed phase 1 at step {steps[0][0]}" in output
    new_step = list_checkpoints(tmp_path)[-1][0]
    assert new_step >= steps[0][0] + 2 and [r["step"] for r in read_metrics(metrics)] == list(range(1, new_step + 1))


def test_hard_kill_and_resume_keeps_each_step_once_in_metrics(setup, tmp_path):
    with pytest.raises(Crash):
        run(setup, tmp_path, "eager", crash_at=5)  # checkpoint at 3, metrics already hold steps 4 and 5
    run(setup, tmp_path, "eager", resume=True)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, STEPS + 1))


@pytest.mark.parametrize("override,message", [
    ({"train_batch_size": 16}, "micro_batch_size=4, this run has 8"),
    ({"seed": 7}, "seed=42, this run has 7 (--seed)"),
    ({"learning_rate": 2e-2}, "learning_rate=0.01, this run has 0.02 (--learning_rate)"),
    ({"max_steps": 20}, "max_steps=10, this run has 20 (--max_steps)"),
    ({"warmup_proportion": 0.1}, "warmup_proportion=0.2, this run has 0.1"),
])
def test_resume_with_changed_settings_is_refused(setup, tmp_path, override, message):
    run(setup, tmp_path, "eager", stop_at=2)
    with pytest.raises(ValueError, match=re.escape(message)):
        run(setup, tmp_path, "eager", resume=True, **override)


def test_fresh_start_into_a_dir_with_checkpoints_is_refused(setup, tmp_path):
    run(setup, tmp_path, "eager", stop_at=2)
    with pytest.raises(FileExistsError, match="already holds checkpoints .*--resume_from_checkpoint.*new --output_dir"):
        run(setup, tmp_path, "eager")
