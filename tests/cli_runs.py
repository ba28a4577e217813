"""Helpers several test modules share (`from cli_runs import ...`: pytest puts tests/, where conftest.py is, on sys.path)."""

from __future__ import annotations

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
