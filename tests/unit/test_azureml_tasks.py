"""azureml/submit_task.py: fine-tuning and scoring as Azure ML command jobs, built offline (--dry-run YAML): one
process per GPU, the named files and folders as the only data inputs, the code snapshot outside the checkout, and
its refusals (one line, exit 2)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("azure.ai.ml")
REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "azureml" / "submit_task.py"
pytestmark = pytest.mark.stack_free


def submit_task():
    if "bert_azureml_submit_task" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bert_azureml_submit_task", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["bert_azureml_submit_task"] = module
        spec.loader.exec_module(module)
    return sys.modules["bert_azureml_submit_task"]


@pytest.fixture
def files(tmp_path):
    (tmp_path / "train.csv").write_text("note,readmitted\na,0\nb,1\n")
    (tmp_path / "notes.parquet").write_bytes(b"PAR1")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    return tmp_path


def run(*args, cwd):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(cwd.parent / f"{cwd.name}-home"), "PYTHONPATH": str(REPO)})


def job_of(path: Path) -> dict:
    raw = yaml.safe_load(path.read_text())
    return raw.get("component", raw) | {"inputs_given": raw.get("inputs", {})}


def test_finetune_job_runs_one_process_per_gpu_on_its_named_inputs(files):
    proc = run("finetune", "--compute", "gpu", "--gpus-per-node", "4", "--nodes", "2", "--init-checkpoint", "model",
               "--train-file", "train.csv", "--dry-run", "--output-yaml", "ft.yaml", "--",
               "--text_column", "note", "--label_column", "readmitted", cwd=files)
    assert proc.returncode == 0, proc.stderr[-2000:]
    job = job_of(files / "ft.yaml")
    command = " ".join(job["command"].split())
    assert command.startswith("python -m ort_training.finetune --init_checkpoint ${{inputs.init_checkpoint}} "
                              "--train_file ${{inputs.train_file}} --output_dir ${{outputs.output}}")
    assert command.endswith("--text_column note --label_column readmitted")
    assert job["distribution"]["process_count_per_instance"] == 4 and job["resources"]["instance_count"] == 2
    assert set(job["inputs"]) == {"init_checkpoint", "train_file"}  # the named data, nothing else
    assert {k: v["path"] for k, v in job["inputs_given"].items()} == {"init_checkpoint": str(files / "model"),
                                                                      "train_file": str(files / "train.csv")}
    code = Path(job["code"])
    assert not code.is_relative_to(REPO) and not code.is_relative_to(files)  # the staged snapshot, not a working tree
    assert (code / "ort_training" / "finetune.py").is_file() and not list(code.rglob("*.csv"))


def test_score_job_writes_the_scored_file_into_its_output(files):
    proc = run("score", "--compute", "gpu", "--gpus-per-node", "2", "--model-dir", "model", "--input-file", "azureml:notes:1",
               "--output-name", "scored.csv", "--dry-run", "--output-yaml", "score.yaml", "--",
               "--text_column", "note_text", "--id_column", "note_id", cwd=files)
    assert proc.returncode == 0, proc.stderr[-2000:]
    job = job_of(files / "score.yaml")
    command = " ".join(job["command"].split())
    assert "python -m ort_training.predict --model_dir ${{inputs.model_dir}} --input_file ${{inputs.input_file}} " \
           "--output_file ${{outputs.output}}/scored.csv" in command
    assert job["inputs_given"]["input_file"]["path"] == "azureml:notes:1"  # a data asset is taken as given


@pytest.mark.parametrize("args,needle", [
    (["finetune", "--compute", "gpu", "--gpus-per-node", "1"], "finetune needs --train-file"),
    (["score", "--compute", "gpu", "--gpus-per-node", "1", "--model-dir", "model"], "score needs --input-file"),
    (["finetune", "--compute", "gpu", "--gpus-per-node", "1", "--train-file", "missing.csv"], "missing.csv: not a datastore URI"),
    (["finetune", "--compute", "gpu", "--gpus-per-node", "1", "--train-file", "train.csv", "--", "--output_dir", "x"],
     "--output_dir after --: the job sets them"),
    (["score", "--compute", "gpu", "--gpus-per-node", "1", "--model-dir", "model", "--input-file", "notes.parquet",
      "--output-name", "../up.csv"], "a file name, not a path"),
    (["finetune", "--compute", "gpu", "--train-file", "train.csv"], "give --gpus-per-node N"),
])
def test_refusals_are_one_line(files, args, needle):
    proc = run(*args, "--dry-run", "--output-yaml", "j.yaml", cwd=files)
    assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not (files / "j.yaml").exists()
