"""`python -m ort_training.pretrain`: one recipe gives the same two commands from every entry point,
recipe numbers live in one file, NVIDIA's command lines run, the MLM-only objective trains both phases,
DeepSpeed starts without torchrun, and a preempted phase resumes through the runner."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ort_training.data.synthetic import tiny_setup, write_dataset
from ort_training.recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("runner")
    setup = tiny_setup(root, n_files=2, n_per_file=32, seq_len=64, max_pred=10)
    write_dataset(root / "data2", 2, 16, seq_len=128, max_pred=20, vocab_size=1003)
    return {**setup, "input_dir2": str(root / "data2")}


def runner(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ort_training.pretrain", *args], env=ENV, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def tiny_args(tiny, out: Path, *extra: str) -> list[str]:
    return ["--recipe", "tiny_cpu", "--output_dir", str(out), "--phase1.input_dir", tiny["input_dir"], "--phase2.input_dir",
            tiny["input_dir2"], "--config_file", tiny["config_file"], "--vocab_file", tiny["vocab_file"], "--disable_progress_bar",
            *extra]


def printed_commands(stdout: str) -> list[list[str]]:
    return [shlex.split(line) for line in stdout.splitlines() if line and not line.startswith("#")]


def without_paths(argv: list[str]) -> list[str]:
    """Trainer flags with the machine-specific values (folders, interpreter) blanked."""
    argv = argv[argv.index("ort_training.run_pretraining") + 1:]
    return [("PATH" if prev in ("--input_dir", "--output_dir", "--init_checkpoint") else a) for prev, a in zip([""] + argv, argv)]


@pytest.mark.stack_free  # launcher, runner and signal orchestration: once, in `make test`
def test_launcher_runner_and_azureml_run_the_same_two_commands(tmp_path):
    pytest.importorskip("azure.ai.ml")
    recipe = load_recipe("bert_large_biobert")
    for phase in ("phase1", "phase2"):
        write_dataset(tmp_path / phase, 1, 8, seq_len=recipe.__dict__[phase]["max_seq_length"],
                      max_pred=recipe.__dict__[phase]["max_predictions_per_seq"])
    proc = runner("--recipe", "bert_large_biobert", "--output_dir", str(tmp_path / "out"), "--phase1.input_dir", str(tmp_path / "phase1"),
                  "--phase2.input_dir", str(tmp_path / "phase2"), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    from_runner = [without_paths(c) for c in printed_commands(proc.stdout)]

    env = dict(ENV, PYTHON=sys.executable, DRY_RUN="1", RESULTS_DIR=str(tmp_path / "out"), DATA_DIR_PHASE1=str(tmp_path / "phase1"),
               DATA_DIR_PHASE2=str(tmp_path / "phase2"))
    proc = subprocess.run(["bash", str(REPO / "scripts" / "run_pretraining_ort.sh")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [without_paths(c) for c in printed_commands(proc.stdout)] == from_runner

    # Azure ML: the same recipe and GPU count with the recipe's micro-batch (its VM table would otherwise pick its own).
    batches = [f"--{p}.micro-batch-size={getattr(recipe, p)['micro_batch_size']}" for p in ("phase1", "phase2")]
    job = tmp_path / "job.yaml"
    proc = subprocess.run([sys.executable, str(REPO / "azureml" / "submit.py"), "--phase1-data", "azureml:p1:1", "--phase2-data",
                           "azureml:p2:1", *batches, "--dry-run", "--output-yaml", str(job)], env=dict(ENV, HTTPS_PROXY="http://127.0.0.1:9"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    import yaml

    jobs = yaml.safe_load(job.read_text())["jobs"]
    from_azure = [without_paths(jobs[p]["component"]["command"].split()) for p in ("phase1", "phase2")]
    assert [[a for a in c if a != "--disable_progress_bar"] for c in from_azure] == from_runner


def test_recipe_numbers_live_in_one_file():
    """grep proves it: each of the NVIDIA recipe's phase numbers appears in its YAML file and nowhere else."""
    recipe_file = "ort_training/recipes/bert_large_biobert.yaml"
    recipe = load_recipe("bert_large_biobert")
    numbers = {str(recipe.phase1[k]) for k in ("learning_rate", "warmup_proportion", "max_steps")}
    numbers |= {str(recipe.phase2[k]) for k in ("learning_rate", "warmup_proportion", "max_steps")}
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.split()
    for number in numbers:
        pattern = re.compile(rf"(?<![\w.]){re.escape(number)}(?![\w.])")
        holders = [f for f in tracked if (REPO / f).is_file() and not f.endswith((".gz", ".png", ".hdf5"))
                   and pattern.search((REPO / f).read_text(errors="ignore"))]
        assert holders == [recipe_file], (number, holders)


NVIDIA_PHASE1 = ("--input_dir={data} --output_dir={out} --config_file={config} --bert_model=bert-large-uncased --train_batch_size=8 "
                 "--max_seq_length=64 --max_predictions_per_seq=10 --max_steps=3 --warmup_proportion=0.1 --num_steps_per_checkpoint=2 "
                 "--learning_rate=1e-3 --seed=42 --gradient_accumulation_steps=2 --allreduce_post_accumulation "
                 "--allreduce_post_accumulation_fp16 --do_train --json-summary {out}/dllogger.json --checkpoint_activations")
NVIDIA_PHASE2 = ("--input_dir={data2} --output_dir={out} --config_file={config} --bert_model=bert-large-uncased --train_batch_size=4 "
                 "--max_seq_length=128 --max_predictions_per_seq=20 --max_steps=2 --warmup_proportion=0.1 --num_steps_per_checkpoint=2 "
                 "--learning_rate=1e-3 --seed=42 --gradient_accumulation_steps=2 --resume_from_checkpoint --allreduce_post_accumulation "
                 "--allreduce_post_accumulation_fp16 --do_train --phase2 --resume_from_checkpoint --phase1_end_step=3 "
                 "--json-summary {out}/dllogger.json --checkpoint_activations")


@pytest.mark.stack_free  # NVIDIA's flags reaching the trainer: once, in `make test`
def test_nvidia_command_lines_run_unchanged(tiny, tmp_path):
    """The flags of NVIDIA's scripts/run_pretraining.sh (phase 2 in the same output dir, as NVIDIA does)."""
    values = dict(data=tiny["input_dir"], data2=tiny["input_dir2"], out=tmp_path, config=tiny["config_file"])
    for phase, line in ((1, NVIDIA_PHASE1), (2, NVIDIA_PHASE2)):
        proc = subprocess.run([sys.executable, "-m", "ort_training.run_pretraining", *line.format(**values).split(), "--backend", "eager",
                               "--disable_progress_bar"], env=ENV, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads((tmp_path / "dllogger.json").read_text())
        assert (summary["phase"], summary["global_step"]) == (phase, 3 if phase == 1 else 5)
    wrong = NVIDIA_PHASE1.replace("--max_seq_length=64", "--max_seq_length=128").format(**values).split()
    proc = subprocess.run([sys.executable, "-m", "ort_training.run_pretraining", *wrong, "--backend", "eager",
                           "--output_dir", str(tmp_path / "wrong")], env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "--max_seq_length 128 but" in proc.stderr and "input_ids of width 64" in proc.stderr


def test_mlm_only_objective_trains_both_phases_and_exports(tiny, tmp_path):
    proc = runner(*tiny_args(tiny, tmp_path, "--objective", "mlm"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    export = tmp_path / "phase2" / "hf_model"
    assert json.loads((export / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    model, tok = AutoModelForMaskedLM.from_pretrained(export), AutoTokenizer.from_pretrained(export)
    assert torch.isfinite(model(**tok("w1 w2 [MASK] w3", return_tensors="pt")).logits).all()
    records = [json.loads(line) for line in (tmp_path / "phase1" / "metrics.jsonl").read_text().splitlines()]
    assert "nsp_loss" not in records[-1] and records[-1]["loss"] == pytest.approx(records[-1]["mlm_loss"], rel=1e-6)
    # A rerun of a finished run changes nothing and says so.
    again = runner(*tiny_args(tiny, tmp_path, "--objective", "mlm"))
    assert again.returncode == 0 and again.stderr.count("already finished") == 2


def test_deepspeed_from_a_plain_process(tiny, tmp_path):
    pytest.importorskip("deepspeed")
    env = {k: v for k, v in ENV.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run([sys.executable, "-m", "ort_training.run_pretraining", "--input_dir", tiny["input_dir"], "--output_dir",
                           str(tmp_path), "--config_file", tiny["config_file"], "--backend", "eager", "--deepspeed", "zero1",
                           "--max_steps", "2", "--train_batch_size", "8", "--skip_hf_export", "--disable_progress_bar"],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["global_step"] == 2


@pytest.mark.stack_free  # launcher, runner and signal orchestration: once, in `make test`
def test_preempted_phase_exits_143_and_a_rerun_finishes(tiny, tmp_path):
    # Long enough that the SIGTERM lands mid-phase-1 even where a tiny step takes ~10 ms.
    args = tiny_args(tiny, tmp_path, "--phase1.max_steps", "400", "--phase1.num_steps_per_checkpoint", "1000")
    proc = subprocess.Popen([sys.executable, "-m", "ort_training.pretrain", *args], env=ENV, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "phase1" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 143, out[-3000:]
    assert (tmp_path / "phase1" / "preempted.json").is_file() and not (tmp_path / "phase2").exists()
    rerun = runner(*args, timeout=1500)  # ~400 tiny steps: seconds on a quiet machine, 10+ minutes at a load of 11
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert json.loads((tmp_path / "phase2" / "summary.json").read_text())["global_step"] == 402


def test_continued_pretraining_from_a_hugging_face_folder(tiny, tmp_path):
    """Start where users start: a published encoder without an MLM head (sentence-transformers style
    BertModel); --config_file defaults to its config.json, the heads are initialised, both phases run."""
    from transformers import BertConfig, BertModel

    raw = json.loads(Path(tiny["config_file"]).read_text())
    published = tmp_path / "published"
    BertModel(BertConfig(**raw)).save_pretrained(published)
    (published / "vocab.txt").write_text(Path(tiny["vocab_file"]).read_text())
    recipe = tmp_path / "continue.yaml"  # the smoke recipe without its config_file: the folder's config is used
    recipe.write_text((REPO / "ort_training" / "recipes" / "tiny_cpu.yaml").read_text().replace("  config_file: tiny\n", ""))
    args = tiny_args(tiny, tmp_path / "out", "--phase1.init_checkpoint", str(published))
    args[args.index("tiny_cpu")] = str(recipe)
    args.remove("--config_file")
    args.remove(tiny["config_file"])
    proc = runner(*args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "initialised" in proc.stdout + proc.stderr  # the heads the source never had are listed
    from safetensors.torch import load_file

    source = load_file(published / "model.safetensors")
    trained = BertModel.from_pretrained(tmp_path / "out" / "phase1" / "hf_model")
    emb = "embeddings.position_embeddings.weight"
    assert trained.state_dict()[emb].shape == source[emb].shape
    assert (trained.state_dict()[emb] - source[emb]).abs().max() < 0.05  # continued from it, not re-initialised
