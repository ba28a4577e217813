"""Training never ends "successful" on bad numbers, a torn metrics line never blocks a resume, and two
runs never share an output dir (issue 10, classes 2-4)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bundle.locking import RunLock
from ort_training.data.synthetic import tiny_setup
from ort_training.loop.checkpoint import list_checkpoints

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


@pytest.mark.stack_free  # file handling around the loop: once, in `make test`
def test_second_run_into_a_busy_output_dir_is_refused_naming_the_holder(setup, tmp_path):
    with RunLock(tmp_path, "training"):
        proc = train(setup, tmp_path, "--max_steps", "1")
    assert proc.returncode == 2 and "in use by another training run" in proc.stderr and f'"pid": {os.getpid()}' in proc.stderr
    assert not (tmp_path / "checkpoints").exists()
    assert train(setup, tmp_path, "--max_steps", "1", "--skip_hf_export").returncode == 0  # the lock dies with its holder


@pytest.mark.stack_free  # file handling around the loop: once, in `make test`
def test_torn_metrics_line_does_not_block_resume(setup, tmp_path):
    args = ("--max_steps", "4", "--num_steps_per_checkpoint", "2", "--skip_hf_export")
    assert train(setup, tmp_path, *args).returncode == 0
    shutil.rmtree(tmp_path / "checkpoints" / "step-4")  # as if killed before the last checkpoint...
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 5, "loss": 7.')  # ...during an append (or on a full disk)
    proc = train(setup, tmp_path, *args, "--resume_from_checkpoint")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "torn last line" in proc.stderr
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]


def test_killed_during_the_export_a_rerun_writes_what_is_missing(setup, tmp_path):
    """A kill after the last checkpoint, during the export: no hf_model/, no summary.json, a stale temp folder."""
    assert train(setup, tmp_path, "--max_steps", "2").returncode == 0
    shutil.rmtree(tmp_path / "hf_model")
    (tmp_path / "summary.json").unlink()
    stale = tmp_path / ".hf_model.tmp-999999"  # a pid that no longer runs
    stale.mkdir()
    proc = train(setup, tmp_path, "--max_steps", "2", "--resume_from_checkpoint")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "export or summary is missing" in proc.stderr
    assert (tmp_path / "hf_model" / "config.json").is_file() and (tmp_path / "hf_model" / "vocab.txt").is_file()
    assert json.loads((tmp_path / "summary.json").read_text())["global_step"] == 2
    assert not stale.exists()


def test_export_takes_the_vocab_from_the_data_manifest_and_refuses_another(setup, tmp_path):
    from bundle.digest import file_sha256

    data = tmp_path / "data"
    shutil.copytree(setup["input_dir"], data)
    files = sorted(data.glob("*.hdf5"))
    (data / "manifest.json").write_text(json.dumps({
        "stage": "hdf5", "vocab_file": setup["vocab_file"], "vocab_sha256": file_sha256(Path(setup["vocab_file"])),
        "args": {"lower_case": True}, "objective": "nsp", "output_sizes": {f.name: f.stat().st_size for f in files}}))
    args = ["--input_dir", str(data), "--config_file", setup["config_file"], "--output_dir", str(tmp_path / "out"), "--backend", "eager",
            "--train_batch_size", "8", "--max_steps", "1", "--disable_progress_bar"]
    proc = subprocess.run([sys.executable, "-m", "ort_training.run_pretraining", *args], env=ENV, cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "out" / "hf_model" / "vocab.txt").read_text() == Path(setup["vocab_file"]).read_text()
    from transformers import pipeline

    fill = pipeline("fill-mask", model=str(tmp_path / "out" / "hf_model"))  # the failing call
    assert len(fill("w1 w2 [MASK] w3")) == 5
    other = tmp_path / "other_vocab.txt"
    other.write_text(Path(setup["vocab_file"]).read_text().replace("w1\n", "x1\n"))
    proc = subprocess.run([sys.executable, "-m", "ort_training.run_pretraining", *args, "--vocab_file", str(other), "--output_dir",
                           str(tmp_path / "out2")], env=ENV, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "is not the vocab the HDF5" in proc.stderr and "Traceback" not in proc.stderr


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(setup, tmp_path):
    assert train(setup, tmp_path, "--max_steps", "3", "--num_steps_per_checkpoint", "1", "--skip_hf_export").returncode == 0
    newest = tmp_path / "checkpoints" / "step-3" / "checkpoint.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # damaged outside our atomic save
    (tmp_path / "summary.json").unlink()
    proc = train(setup, tmp_path, "--max_steps", "3", "--num_steps_per_checkpoint", "1", "--skip_hf_export", "--resume_from_checkpoint")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cannot read checkpoint" in proc.stderr and "falling back to" in proc.stderr and "resumed phase 1 at step 2" in proc.stderr


def test_malformed_config_json_names_the_file(setup, tmp_path):
    bad = tmp_path / "bert_config.json"
    bad.write_text('{"hidden_size": 64,')
    proc = train({**setup, "config_file": str(bad)}, tmp_path / "out", "--max_steps", "1")
    assert proc.returncode == 2 and f"--config_file {bad}: not a readable config JSON" in proc.stderr
