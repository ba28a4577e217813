"""Helpers several test modules share (`from cli_runs import ...`: pytest puts tests/, where conftest.py is, on sys.path)."""

from __future__ import annotations

import csv
import os
import signal
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


def run_or_dump_stacks(cmd: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    """subprocess.run(cmd, capture_output=True) from the checkout, except on a hang: every Python process of the run
    (torchrun's workers start sessions of their own, so its process tree) dumps its threads' stacks (faulthandler,
    SIGABRT) and the failure shows them, instead of a bare TimeoutExpired that says nothing of where it stuck."""
    proc = subprocess.Popen(cmd, cwd=REPO, env={**env, "PYTHONFAULTHANDLER": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        native = "".join(_native_stacks(p.pid) for p in process_tree(proc.pid))
        tree = signal_tree(proc.pid, signal.SIGABRT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            signal_tree(proc.pid, signal.SIGKILL, tree)
            out, err = proc.communicate()
        raise AssertionError(f"{' '.join(cmd[:8])} ... did not end in {timeout} s; stdout tail: {out[-2000:]}\n"
                             f"stderr tail with the stacks of its processes:\n{err[-20000:]}\n{native}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def process_tree(pid: int) -> list:
    """The process and all its descendants (psutil): torchrun starts each worker in a session of its own, so its process
    group alone leaves the workers out."""
    import psutil

    root = psutil.Process(pid)
    return root.children(recursive=True) + [root]


def signal_tree(pid: int, sig: int, tree: list | None = None) -> list:
    """Send `sig` to process_tree(pid) (or to `tree`, a list it returned before); those already gone are skipped."""
    import psutil

    tree = process_tree(pid) if tree is None else tree
    for p in tree:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    return tree


def _native_stacks(pid: int) -> str:
    """The C/C++ stacks of a hung process's threads (gdb, where installed): a hang inside a library's destructor or a
    collective shows no Python frame below the call that reached it."""
    import shutil

    if shutil.which("gdb") is None:
        return ""
    try:
        bt = subprocess.run(["gdb", "-p", str(pid), "-batch", "-nx", "-ex", "thread apply all bt 25"], capture_output=True, text=True,
                            timeout=120).stdout
    except (subprocess.TimeoutExpired, OSError) as exc:
        return f"\n--- gdb on pid {pid}: {exc}\n"
    frames = "\n".join(line for line in bt.splitlines() if line.startswith(("#", "Thread ")))
    return f"\n--- native stacks of pid {pid}:\n{frames[-12000:]}\n"


def torchrun(target: list[str], env: dict, timeout: float, nproc: int = 2) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --nproc_per_node NPROC TARGET...` on a free port (run_or_dump_stacks)."""
    from ort_training.loop.distributed import free_port

    return run_or_dump_stacks([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                               "--master_port", str(free_port()), *target], env, timeout)
