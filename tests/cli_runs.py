"""Helpers several test modules share (`from cli_runs import ...`: pytest puts tests/, where conftest.py is, on sys.path)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_data_prep(*args, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m data_prep ARGS` from the checkout, as a user runs it; asserts success unless check=False."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.run([sys.executable, "-m", "data_prep", *map(str, args)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def flags(settings: dict) -> list[str]:
    """{"max_steps": 12, "disable_progress_bar": True, "x": None} -> ["--max_steps", "12", "--disable_progress_bar"]."""
    argv = []
    for k, v in settings.items():
        if v is True:
            argv.append(f"--{k}")
        elif v is not None:
            argv += [f"--{k}", str(v)]
    return argv


NOTE_WORDS = "the patient was given a dose of drug and the tumour responded well after two weeks of therapy".split()


def notes_corpus(folder: Path, files: int = 2, docs: int = 30) -> Path:
    """Plain-text clinical-style documents (blank-line separated), deterministic: FOLDER/notes_<i>.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        text = "\n\n".join(" ".join(f"{' '.join(NOTE_WORDS[(d + k + i) % 7:][:9]).capitalize()} {i} {d}." for k in range(3))
                           for d in range(docs))
        (folder / f"notes_{i}.txt").write_text(text + "\n", encoding="utf-8")
    return folder


def write_csv(path, rows: list[dict]) -> str:
    """ROWS (dicts with the same keys) as a CSV with a header; returns the path as a string."""
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return str(path)
