"""What the README and the docs say about recipes is what the recipe files say: one source.

`python -m ort_training.recipe list` reads the YAML files; these tests hold the prose and the documented commands
to the same values: GPU counts, precisions, from scratch or continued, global batches, the data folders each phase
is given, the Azure VM sizes against the precision they run, and `make help`'s text.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from ort_training import recipe as recipe_mod
from ort_training.recipe import load_recipe, recipe_summary, shipped_recipes

pytestmark = pytest.mark.stack_free  # reads YAML and Markdown: `make test` runs it

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", REPO / "azureml" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
VM_TABLE = REPO / "ort_training" / "recipes" / "azureml_vm_sizes.yaml"
WORDS = {"1": 1, "one": 1, "2": 2, "4": 4, "8": 8, "eight": 8}


def recipe_list(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = recipe_mod.main(["list", *args])
    return rc, out.getvalue()


def summaries() -> dict[str, dict]:
    return {name: recipe_summary(load_recipe(name)) for name in shipped_recipes()}


def test_recipe_list_prints_every_recipe_file_once():
    rc, table = recipe_list()
    assert rc == 0
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| recipe ")]
    files = sorted(p.stem for p in (REPO / "ort_training" / "recipes").glob("*.yaml") if p.stem != "azureml_vm_sizes")
    assert [r.split("|")[1].strip() for r in rows] == files
    rc, text = recipe_list("--json")
    listed = {s["name"]: s for s in json.loads(text)}
    assert rc == 0 and sorted(listed) == files
    for name, s in listed.items():  # the values are the file's (or, where it is silent, the trainer's default)
        raw = yaml.safe_load((REPO / "ort_training" / "recipes" / f"{name}.yaml").read_text())
        assert s["gpus"] == raw["launch"]["nproc_per_node"] and s["device"] == raw["launch"]["device"]
        assert s["precision"] == raw["both"].get("precision", "fp32")
        assert s["requires_init_checkpoint"] == bool(raw.get("requires_init_checkpoint", False))
        for phase in ("phase1", "phase2"):
            assert s["phases"][phase]["global_batch_size"] == raw[phase]["global_batch_size"]
            assert s["phases"][phase]["max_steps"] == raw[phase]["max_steps"]


def _gpu_claims(text: str) -> set[int]:
    return {WORDS[m] for m in re.findall(r"\b(1|one|2|4|8|eight) GPUs?\b", text)}


def _precision_claims(text: str) -> set[str]:
    # "bf16 on A100/H100" and "V100s: --precision fp16" are advice about other GPUs, not the recipe's own precision
    text = re.sub(r"(bf16|fp16)( on|:)? (A100|H100|V100)[^,;)]*|\((V100)[^)]*\)|(V100s?: )?--precision (bf16|fp16)", "", text)
    return set(re.findall(r"\b(fp16|bf16|fp32)\b", text))


def test_each_recipe_description_says_its_own_gpus_precision_and_start():
    for name, s in summaries().items():
        text = s["description"]
        gpus = _gpu_claims(re.sub(r"--nproc_per_node N[^,]*", "", text))
        assert gpus <= {s["gpus"]}, f"{name}: description says {gpus} GPU(s), launch.nproc_per_node is {s['gpus']}: {text}"
        assert _precision_claims(text) <= {s["precision"]}, f"{name}: description's precision vs {s['precision']}: {text}"
        if "from scratch" in text:
            assert not s["requires_init_checkpoint"], name
        if "continued" in text:
            assert s["requires_init_checkpoint"], f"{name}: says continued but needs no init checkpoint"


def bundle_table() -> dict[str, str]:
    text = (REPO / "docs" / "bundle.md").read_text()
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| (.*) \|$", text, re.M)}


def test_bundle_md_lists_every_recipe_and_each_row_says_the_files_values():
    rows = bundle_table()
    assert sorted(rows) == shipped_recipes(), "docs/bundle.md's recipe table vs ort_training/recipes/*.yaml"
    assert "python -m ort_training.recipe list" in (REPO / "docs" / "bundle.md").read_text()
    for name, s in summaries().items():
        text = rows[name]
        gpus = _gpu_claims(text)
        assert gpus <= {s["gpus"]}, f"docs/bundle.md {name}: {gpus} GPU(s) vs {s['gpus']}"
        assert _precision_claims(text) <= {s["precision"]}, f"docs/bundle.md {name}: precision vs {s['precision']}"
        assert ("from scratch" in text) <= (not s["requires_init_checkpoint"]), name
        assert ("required" in text) == s["requires_init_checkpoint"] or not text.startswith("continue"), name
        m = re.search(r"global batch ([\d,]+) then ([\d,]+)", text)
        if m:
            stated = [int(n.replace(",", "")) for n in m.groups()]
            assert stated == [s["phases"][p]["global_batch_size"] for p in ("phase1", "phase2")], f"docs/bundle.md {name}: {stated}"


def test_readme_says_bert_large_biobert_trains_from_scratch_with_its_global_batches():
    text = (REPO / "README.md").read_text()
    s = summaries()["bert_large_biobert"]
    m = re.search(r"From scratch[^`]*`--recipe\s+bert_large_biobert` \(([\d,]+) sequences per step in phase 1, ([\d,]+) in phase 2", text)
    assert m, "README: the from-scratch sentence about bert_large_biobert"
    assert not s["requires_init_checkpoint"] and "init_checkpoint" not in load_recipe("bert_large_biobert").phase1
    assert [int(g.replace(",", "")) for g in m.groups()] == [s["phases"]["phase1"]["global_batch_size"],
                                                             s["phases"]["phase2"]["global_batch_size"]]


def doc_commands() -> list[tuple[str, list[str]]]:
    """(file:line, argv) of every fenced or indented command in the docs, continuation lines joined."""
    found = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            text = lines[i].strip()
            if re.match(r"^(\S+=\S+ )*(PYTHONPATH=\S+ )?(python|bert-|\.venv/bin/python|sbatch|docker/)", text) or "sbatch" in text:
                start, parts = i, [re.sub(r"\s+#\s.*$", "", text)]
                while parts[-1].endswith("\\") and i + 1 < len(lines):
                    i += 1
                    parts[-1] = parts[-1][:-1]
                    parts.append(re.sub(r"\s+#\s.*$", "", lines[i].strip()))
                with contextlib.suppress(ValueError):
                    found.append((f"{path.relative_to(REPO)}:{start + 1}", shlex.split(" ".join(parts))))
            i += 1
    return found


def _flag(argv: list[str], *names: str) -> str | None:
    for i, a in enumerate(argv):
        for name in names:
            if a == name and i + 1 < len(argv):
                return argv[i + 1]
            if a.startswith(name + "="):
                return a.split("=", 1)[1]
    return None


def test_documented_pretraining_commands_give_each_phase_a_dataset_folder_of_its_length():
    """The trainer reads `*training*.hdf5` recursively, so `hdf5_.../` and `hdf5_.../<dataset>/` both load, but two
    datasets made into one hdf5_ folder would be mixed: the docs give the dataset folder, as data_prep prints it."""
    checked = 0
    for where, argv in doc_commands():
        env = dict(a.split("=", 1) for a in argv if re.match(r"^[A-Z_][A-Z0-9_]*=", a))
        for phase, seq, value in (("phase1", 128, _flag(argv, "--phase1.input_dir") or env.get("PHASE1_DIR")),
                                  ("phase2", 512, _flag(argv, "--phase2.input_dir") or env.get("PHASE2_DIR"))):
            if not value or "hdf5_" not in value:
                continue
            checked += 1
            assert re.search(rf"seq_len_{seq}_", value), f"{where}: {phase} gets {value}, not seq {seq} data"
            assert not value.rstrip("/").split("/")[-1].startswith("hdf5_"), \
                f"{where}: {phase} gets the hdf5_ folder {value}; give its dataset folder (hdf5_.../<dataset>) as data_prep prints it"
            name = _flag(argv, "--recipe") or env.get("RECIPE")
            if name in shipped_recipes():
                assert summaries()[name]["phases"][phase]["max_seq_length"] in (None, seq), f"{where}: {name} {phase}"
    assert checked >= 4


def v100_sizes() -> set[str]:
    """The table's VM sizes whose comment says V100 (no bf16 on those GPUs)."""
    return {m.group(1) for m in re.finditer(r"^  (Standard_\w+):\s*#.*V100", VM_TABLE.read_text(), re.M)}


def test_azure_commands_never_run_bf16_on_v100_vms():
    assert v100_sizes() >= {"Standard_ND40rs_v2", "Standard_NC24rs_v3"}
    checked = 0
    for where, argv in doc_commands():
        if not any(a.endswith("azureml/submit.py") for a in argv) or "--vm-size" not in argv and "--recipe" not in argv:
            continue
        vm = _flag(argv, "--vm-size") or "Standard_ND40rs_v2"  # submit.py's default
        name = _flag(argv, "--recipe") or "bert_large_biobert"
        precision = _flag(argv, "--precision") or summaries()[name]["precision"]
        checked += 1
        assert not (vm in v100_sizes() and precision == "bf16"), f"{where}: bf16 ({name}) on {vm}, a V100 VM: --precision fp16 or an A100 size"
        if vm not in v100_sizes() and vm not in yaml.safe_load(VM_TABLE.read_text())["vm_sizes"]:
            assert _flag(argv, "--gpus-per-node"), f"{where}: {vm} is not in the VM table: --gpus-per-node"
    assert checked >= 3


def test_azure_readme_states_the_micro_batch_the_vm_table_gives():
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("bert_azureml_submit", REPO / "azureml" / "submit.py")
    if "bert_azureml_submit" not in sys.modules:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    submit = sys.modules["bert_azureml_submit"]
    text = (REPO / "azureml" / "README.md").read_text()
    m = re.search(r"on the 16 GB V100s phase 1 runs (\d+) sequences per pass", text)
    assert m, "azureml/README.md: the NC24rs_v3 phase-1 micro-batch sentence"
    row = next(r for r in submit.defaults_table().splitlines() if r.startswith("| Standard_NC24rs_v3 | 1 |"))
    micro = int(row.split("|")[5].split(" = ")[1].split(" x ")[1])
    assert int(m.group(1)) == micro


def test_recipe_phrases_in_the_readme_match_the_files():
    text = " ".join((REPO / "README.md").read_text().split())
    for name, s in summaries().items():
        for m in re.finditer(rf"`{name}`[^.]*?\b(\d+) GPUs?\b", text):
            assert int(m.group(1)) in (s["gpus"], 8), f"README: `{name}` ... {m.group(0)}"  # 8: the example's own VM
    assert "continued_pretraining` says" not in text


def test_make_help_prints_what_the_shell_would_read():
    proc = subprocess.run(["make", "--no-print-directory", "help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "$$" not in proc.stdout and '`rm -rf "$(readlink .venv)"`' in proc.stdout
    widths = {len(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("  make ")}
    descriptions = {line.index(line.split()[2]) for line in proc.stdout.splitlines() if line.startswith("  make ")}
    assert len(descriptions) == 1, f"make help's columns do not line up (target names up to {max(widths)} characters)"
