"""docker/launch.sh mounts an init checkpoint (continued pretraining) read-only and names it in the container, in
DRY_RUN mode (no engine): a folder at /data/init, one file (an NVIDIA .pt) at /data/init/NAME, a missing path refused.
The same style as tests/unit/test_docker.py's launch tests."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.stack_free

REPO = Path(__file__).resolve().parents[2]


def _dry(*args: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("INIT_CHECKPOINT", "VOCAB_FILE", "ENV")}
    return subprocess.run(["bash", str(REPO / "docker" / "launch.sh"), *args], capture_output=True, text=True, timeout=60,
                          env={**full, "DRY_RUN": "1", **env})


def _pairs(stdout: str) -> set[tuple[str, str]]:
    argv = shlex.split(stdout)
    return {(argv[i], argv[i + 1]) for i in range(len(argv) - 1)}


@pytest.fixture
def data(tmp_path):
    (tmp_path / "p1").mkdir(), (tmp_path / "p2").mkdir()
    return tmp_path


def test_a_model_folder_is_mounted_read_only_and_named(data):
    model = data / "published bert"  # a space survives the quoting
    model.mkdir()
    proc = _dry(str(data / "p1"), str(data / "p2"), str(data / "r"), INIT_CHECKPOINT=str(model))
    assert proc.returncode == 0, proc.stderr
    pairs = _pairs(proc.stdout)
    assert ("-v", f"{model}:/data/init:ro") in pairs and ("-e", "INIT_CHECKPOINT=/data/init") in pairs
    # the image's default command (scripts/run_pretraining_ort.sh) reads INIT_CHECKPOINT as its init_checkpoint slot
    assert "init_checkpoint|--phase1.init_checkpoint" in (REPO / "scripts" / "run_pretraining_ort.sh").read_text()


def test_one_checkpoint_file_keeps_its_name(data):
    ckpt = data / "bert_large.pt"
    ckpt.write_bytes(b"x")
    proc = _dry(str(data / "p1"), str(data / "p2"), str(data / "r"), "python", "-m", "ort_training.pretrain",
                INIT_CHECKPOINT=str(ckpt), GPUS="none")
    pairs = _pairs(proc.stdout)
    assert ("-v", f"{ckpt}:/data/init/bert_large.pt:ro") in pairs and ("-e", "INIT_CHECKPOINT=/data/init/bert_large.pt") in pairs


def test_without_it_nothing_is_mounted_and_a_missing_one_is_refused(data):
    plain = _dry(str(data / "p1"), str(data / "p2"), str(data / "r"))
    assert plain.returncode == 0 and "/data/init" not in plain.stdout
    bad = _dry(str(data / "p1"), str(data / "p2"), str(data / "r"), INIT_CHECKPOINT=str(data / "nope"))
    assert bad.returncode == 2 and "INIT_CHECKPOINT" in bad.stderr and bad.stdout == ""
