"""docker/launch_task.sh: fine-tuning and scoring in the image under torchrun (one process per GPU), in DRY_RUN mode (no
engine): data read-only at /data, results read-write at /results, the model read-only at /model and passed as the
command's flag; refusals one line, exit 2."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.stack_free

REPO = Path(__file__).resolve().parents[2]


def launch(*args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("INIT_CHECKPOINT", "MODEL_DIR", "NPROC", "GPUS")}
    return subprocess.run(["bash", str(REPO / "docker" / "launch_task.sh"), *args], capture_output=True, text=True, timeout=60,
                          env={**base, "DRY_RUN": "1", **env})


@pytest.fixture
def folders(tmp_path):
    for name in ("data", "model"):
        (tmp_path / name).mkdir()
    return tmp_path


def test_finetune_runs_torchrun_over_the_gpus_with_the_model_mounted_read_only(folders):
    proc = launch("finetune", str(folders / "data"), str(folders / "res"), "--train_file", "/data/train.csv",
                  "--output_dir", "/results/ft", INIT_CHECKPOINT=str(folders / "model"))
    assert proc.returncode == 0, proc.stderr
    argv = shlex.split(proc.stdout)
    assert f"{folders / 'data'}:/data:ro" in argv and f"{folders / 'res'}:/results" in argv and f"{folders / 'model'}:/model:ro" in argv
    image = argv.index("ort-bert-pretraining:gpu")
    assert argv[image + 1:] == ["torchrun", "--standalone", "--nproc_per_node", "gpu", "-m", "ort_training.finetune",
                                "--init_checkpoint", "/model", "--train_file", "/data/train.csv", "--output_dir", "/results/ft"]
    assert not (folders / "res").exists()  # a dry run writes nothing


def test_score_on_cpu_runs_one_process(folders):
    proc = launch("score", str(folders / "data"), str(folders / "res"), "--input_file", "/data/n.parquet", "--output_file",
                  "/results/scored.csv", MODEL_DIR=str(folders / "model"), GPUS="none")
    assert proc.returncode == 0, proc.stderr
    argv = shlex.split(proc.stdout)
    assert "--gpus" not in argv and argv[argv.index("torchrun") + 3] == "1"
    assert argv[argv.index("-m") + 1:argv.index("-m") + 4] == ["ort_training.predict", "--model_dir", "/model"]


@pytest.mark.parametrize("args,env,needle", [
    (["train"], {}, "TASK must be finetune or score"),
    (["score"], {}, "score needs MODEL_DIR"),
    (["finetune", "--init_checkpoint", "/elsewhere"], {"INIT_CHECKPOINT": "model"}, "is set from INIT_CHECKPOINT"),
    (["finetune"], {"INIT_CHECKPOINT": "missing"}, "INIT_CHECKPOINT 'missing' is not a folder"),
    (["finetune"], {"NPROC": "0"}, "NPROC must be a positive number"),
])
def test_refusals(folders, args, env, needle):
    task, *flags = args
    env = {k: (str(folders / v) if k in ("INIT_CHECKPOINT", "MODEL_DIR") and v == "model" else v) for k, v in env.items()}
    proc = launch(task, str(folders / "data"), str(folders / "res"), *flags, **env)
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
