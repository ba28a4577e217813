"""scripts/slurm/finetune.sbatch and score.sbatch: thin launchers that parse (`bash -n`), pass shellcheck, and leave
every check to the Python side: DRY_RUN=1 runs finetune's --dry-run with the given flags (a bad flag: its one-line
error, exit 2) and predict's --help."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.stack_free

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = [REPO / "scripts" / "slurm" / n for n in ("finetune.sbatch", "score.sbatch")]
VOCAB = REPO / "tests" / "assets" / "pubmed" / "bert-base-uncased-vocab.txt"


def _run(script: Path, *args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DRY_RUN": "1", "PYTHON": sys.executable, "CODEDIR": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(["bash", str(script), *args], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_the_launchers_parse_and_pass_shellcheck(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    exe = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which("shellcheck")
    if exe:
        proc = subprocess.run([exe, "-x", "-s", "bash", str(script)], cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout


def test_finetune_launcher_asks_the_python_side(tmp_path):
    (tmp_path / "train.csv").write_text("note,readmitted\na,0\nb,1\n")
    ok = _run(SCRIPTS[0], "--train_file", "train.csv", "--config_file", "tiny", "--vocab_file", str(VOCAB), "--text_column", "note",
              "--label_column", "readmitted", "--early_stopping_metric", "auprc", "--output_dir", "ft", tmp_path=tmp_path)
    assert ok.returncode == 0 and "dry run: settings checked" in ok.stdout, ok.stderr
    bad = _run(SCRIPTS[0], "--train_file", "train.csv", "--config_file", "tiny", "--vocab_file", str(VOCAB), "--pos_weight", "-1",
               tmp_path=tmp_path)
    assert bad.returncode == 2 and "--pos_weight must be > 0" in bad.stderr
    assert not (tmp_path / "ft").exists()


def test_score_launcher_reaches_predict(tmp_path):
    proc = _run(SCRIPTS[1], tmp_path=tmp_path)
    assert proc.returncode == 0 and "--model_dir" in proc.stdout and "--output_file" in proc.stdout
