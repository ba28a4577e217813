"""Every command in README.md and docs/*.md runs here, so the docs and the command lines cannot drift apart.

Commands are the lines of fenced code blocks (and 4-space indented blocks) that start with a program this
bundle ships. Each runs in a sandbox folder where the models, vocabularies and id lists the docs name exist
(copies of the tiny test assets); data folders may be missing, as when a user plans a run:

- entry points that would train or write data run with `--dry-run` (which checks every setting, refuses a
  missing model, and notes missing data) and must exit 0;
- entry points that read a model or data to report on it (predict, evaluate, benchmarks) run `--help`, and
  every flag the docs give must be one they accept;
- environment commands (make, pip, docker, sbatch, az, pytest) are not run: each kind is listed below with
  why, and a command of any other kind fails the test until it is classified.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
VOCAB = REPO / "tests" / "assets" / "pubmed" / "bert-base-uncased-vocab.txt"
TINY_CONFIG = REPO / "ort_training" / "configs" / "bert_tiny_config.json"
OFFLINE = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "1"}

# Module -> how it is checked. "dry": --dry-run must exit 0; "run": run as documented (no side effects); "help": flags only.
MODULES = {"data_prep": "dry", "data_prep.cli": "dry", "ort_training.pretrain": "dry", "ort_training.finetune": "dry",
           "ort_training.recipe": "run", "bundle.layout": "help", "ort_training.predict": "help", "ort_training.evaluate": "help",
           "data_prep.downstream": "help", "ort_training.run_pretraining": "help", "ort_training.outcomes": "help"}
SCRIPTS = {"scripts/run_pretraining_ort.sh": "dry-env", "scripts/create_datasets_from_start.sh": "dry-env",
           "azureml/submit.py": "dry-yaml"}
NOT_RUN = {"make": "builds environments / runs the suite", "pip": "changes an environment", "sbatch": "needs a Slurm cluster",
           "docker": "needs a container engine", "docker/build.sh": "builds an image", "docker/launch.sh": "needs an image",
           "docker/launch_task.sh": "needs an image",
           "docker/test_image.sh": "builds an image", "az": "needs an Azure login", "pytest": "the test runner itself",
           "python3.11": "creates a virtual environment", "export": "sets the shell's environment", ".": "sources a venv",
           "scripts/bootstrap_env.sh": "builds an environment", "scripts/demo.sh": "the demo (make demo)", "cd": "a folder change"}
NOT_RUN_MODULES = {"pytest": "the test runner itself", "pip": "changes an environment", "venv": "creates an environment",
                   "torch_ort.configure": "builds ORTModule's extensions into the environment"}
# Flags whose value is a model, vocab or id list the sandbox provides (directories get a tiny BERT config + vocab).
PROVIDED = {"--init_checkpoint", "--phase1.init_checkpoint", "--init-checkpoint", "--model_dir", "--vocab_file", "--vocab-file",
            "--tokenizer", "--exclude-ids"}
PROGRAMS = ("python", "python3", ".venv/bin/python", "bert-", "scripts/", "bash", "make", "pip", "sbatch", "docker", "az",
            "export", "cd", ". ", "azureml/")


def console_scripts() -> dict[str, str]:
    """bert-* names -> their module, from pyproject.toml (the one list of them)."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    return {name: target.split(":")[0].removesuffix(".cli") if target.startswith("data_prep.cli") else target.split(":")[0]
            for name, target in scripts.items()}


def _strip_comment(line: str) -> str:
    return re.sub(r"\s+#\s.*$", "", line)


def doc_commands() -> list[tuple[str, str]]:
    """(file:line, command) of every command in the docs, continuation lines joined."""
    found = []
    for path in DOCS:
        lines = path.read_text(encoding="utf-8").splitlines()
        fenced, i = False, 0
        while i < len(lines):
            line = lines[i]
            if line.lstrip().startswith("```"):
                fenced = not fenced
                i += 1
                continue
            indented = not fenced and line.startswith("    ") and (i == 0 or not lines[i - 1].strip() or lines[i - 1].startswith("    "))
            text = line.strip()
            start = i
            if (fenced or indented) and text.startswith(PROGRAMS + tuple(f"{v}=" for v in ("PYTHONPATH", "DRY_RUN"))) or \
                    ((fenced or indented) and re.match(r"^[A-Z_][A-Z0-9_]*=\S*\s", text)):
                parts = [_strip_comment(text)]
                while parts[-1].endswith("\\") and i + 1 < len(lines):
                    i += 1
                    parts[-1] = parts[-1][:-1]
                    parts.append(_strip_comment(lines[i].strip()))
                found.append((f"{path.relative_to(REPO)}:{start + 1}", " ".join(p.strip() for p in parts)))
            i += 1
    return found


COMMANDS = doc_commands()


def test_the_docs_have_commands_to_check():
    files = {where.split(":")[0] for where, _ in COMMANDS}
    assert "README.md" in files and "docs/data_prep.md" in files and len(COMMANDS) >= 20


def _split(command: str) -> tuple[dict[str, str], list[str]]:
    """Leading VAR=value assignments, then the argv."""
    words = shlex.split(command)
    env = {}
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    return env, words


def _provide(sandbox: Path, argv: list[str]) -> None:
    for flag, value in zip(argv, argv[1:]):
        if flag not in PROVIDED or value.startswith(("azureml:", "http")):
            continue
        target = sandbox / value
        if target.exists():
            continue
        if flag == "--exclude-ids":
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("12345\n")
        elif target.suffix in (".txt", ".json"):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(VOCAB, target)
        else:
            target.mkdir(parents=True)
            shutil.copyfile(TINY_CONFIG, target / "config.json")
            shutil.copyfile(VOCAB, target / "vocab.txt")
            if flag.endswith(("init_checkpoint", "init-checkpoint")):  # dry runs check its weights, as the run does
                from transformers import BertConfig, BertForPreTraining

                BertForPreTraining(BertConfig.from_json_file(str(TINY_CONFIG))).save_pretrained(target)


def _load_script(relative: str):
    """A script of the checkout as a module (its main() is then run like the entry points')."""
    import importlib.util

    name = "doc_script_" + re.sub(r"\W", "_", relative)
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / relative)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses resolve annotations through sys.modules
        spec.loader.exec_module(module)
    return sys.modules[name]


def _in_process(module, argv: list[str], sandbox: Path) -> tuple[int, str]:
    """Run MODULE.main(argv) here (torch is imported once for all commands), in the sandbox folder."""
    import importlib

    main = (importlib.import_module(module if module != "data_prep" else "data_prep.cli") if isinstance(module, str) else module).main
    out, old = io.StringIO(), Path.cwd()
    os.chdir(sandbox)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                rc = main(argv)
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    finally:
        os.chdir(old)
    return (rc if isinstance(rc, int) else 0), out.getvalue()


def _flags(argv: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in argv if a.startswith("--")]


@pytest.mark.parametrize(("where", "command"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_documented_command(where, command, tmp_path):
    env, words = _split(command)
    program = words[0]
    if program in ("bash",) and len(words) > 1:
        program, words = words[1], words[1:]
    if program.startswith("bert-"):
        words = ["python", "-m", console_scripts()[program], *words[1:]]
        program = "python"
    if program in ("python", "python3", ".venv/bin/python") and len(words) > 2 and words[1] == "-m":
        module, argv = words[2], words[3:]
        if module in NOT_RUN_MODULES:
            pytest.skip(f"{where}: python -m {module}: {NOT_RUN_MODULES[module]}")
        assert module in MODULES, f"{where}: `python -m {module}` is not classified in MODULES: {command}"
        _provide(tmp_path, argv)
        kind = MODULES[module]
        if kind == "help":
            rc, out = _in_process(module, ["--help"], tmp_path)
            assert rc == 0, out
            unknown = [f for f in _flags(argv) if f not in out]
            assert not unknown, f"{where}: {unknown} not accepted by `python -m {module}`: {command}"
            return
        if kind == "dry" and "--dry-run" not in argv:
            argv = [*argv, "--dry-run"]
        rc, out = _in_process(module, argv, tmp_path)
        assert rc == 0 and "Traceback" not in out, f"{where}: `{command}` exited {rc}:\n{out}"
        return
    if program in ("python", "python3", ".venv/bin/python") and len(words) > 1 and words[1].endswith(".py"):
        script, argv = words[1], words[2:]
        if script in SCRIPTS:  # azureml/submit.py, loaded by path (azureml/ is no package) and run here
            _provide(tmp_path, argv)
            argv = [a for a in argv if a != "--stream"]
            argv += [] if "--dry-run" in argv else ["--dry-run"]
            argv += [] if "--output-yaml" in argv else ["--output-yaml", str(tmp_path / "job.yaml")]
            rc, out = _in_process(_load_script(script), argv, tmp_path)
            assert rc == 0 and "Traceback" not in out, f"{where}: `{command}` exited {rc}:\n{out}"
            return
        # benchmarks: flags only
        assert script.startswith("benchmarks/"), f"{where}: script {script} is not classified: {command}"
        rc, out = _in_process(_load_script(script), ["--help"], tmp_path)
        assert rc == 0, out
        unknown = [f for f in _flags(argv) if f not in out]
        assert not unknown, f"{where}: {unknown} not accepted by {script}: {command}"
        return
    elif program in ("python", "python3", ".venv/bin/python") and len(words) > 1 and words[1] == "-c":
        pytest.skip(f"{where}: python -c: inline Python that reads what the commands before it made")
    elif program in SCRIPTS:
        cmd, argv = ["bash", str(REPO / program), *words[1:]], words[1:]
        run_env = {"DRY_RUN": "1", "PYTHON": sys.executable}
    else:
        reason = NOT_RUN.get(program) or NOT_RUN.get(program.split("/")[0] if "/" not in program else program)
        assert reason, f"{where}: `{program}` is neither run nor listed in NOT_RUN: {command}"
        pytest.skip(f"{where}: {program}: {reason}")
    full_env = dict(os.environ, PYTHONPATH=str(REPO), **OFFLINE, **env, **run_env)
    full_env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=full_env)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, f"{where}: `{command}` exited {proc.returncode}:\n{proc.stderr}"
