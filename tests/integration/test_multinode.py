"""Two torchrun agents on one host play two nodes (c10d rendezvous on 127.0.0.1, gloo, one rank each).

One "node" is killed mid-run (its agent and worker, SIGKILL: a lost machine, no checkpoint on the way
out); the other node's rank fails on its next collective and its agent exits. Both agents are started
again with --resume_from_checkpoint, as a Slurm requeue or a restarted job would: the job continues
from the last periodic checkpoint and ends with bitwise the same weights and loss as a run that was
never interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cli_runs
import pytest
import torch

from ort_training.data.synthetic import tiny_setup
from ort_training.loop.distributed import free_port
from ort_training.loop.checkpoint import list_checkpoints, load_checkpoint

REPO = Path(__file__).resolve().parents[2]
STEPS, EVERY = 200, 20
pytestmark = [pytest.mark.slow, pytest.mark.stack_free]


def start_agents(setup: dict, out: Path, log_dir: Path, tag: str, resume: bool) -> list[subprocess.Popen]:
    port = free_port()
    trainer = ["-m", "ort_training.run_pretraining", "--input_dir", setup["input_dir"], "--config_file", setup["config_file"],
               "--output_dir", str(out), "--backend", "eager", "--max_steps", str(STEPS), "--train_batch_size", "8",
               "--learning_rate", "5e-3", "--num_steps_per_checkpoint", str(EVERY), "--disable_progress_bar", "--skip_hf_export"]
    if resume:
        trainer.append("--resume_from_checkpoint")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    agents = []
    for node in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
               "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", f"test-{tag}", "--max_restarts", "0", *trainer]
        log = open(log_dir / f"{tag}-node{node}.log", "w")
        agents.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    return agents


def kill_node(agent: subprocess.Popen) -> None:
    """SIGKILL the agent and its workers at once, like losing the machine (torchrun starts each worker in a
    session of its own, so the agent's process group alone would leave the worker training)."""
    cli_runs.signal_tree(agent.pid, signal.SIGKILL)


def wait_all(agents: list[subprocess.Popen], timeout: float, log_dir: Path) -> list[int]:
    deadline = time.monotonic() + timeout
    try:
        return [a.wait(timeout=max(1.0, deadline - time.monotonic())) for a in agents]
    except subprocess.TimeoutExpired:
        for a in agents:
            if a.poll() is None:
                kill_node(a)
        raise AssertionError("agents did not finish in time:\n" + "\n".join(p.read_text()[-2000:] for p in sorted(log_dir.glob("*.log"))))


def final_state(out: Path) -> tuple[dict, float]:
    ckpt = load_checkpoint(out)
    assert ckpt["train_state"]["global_step"] == STEPS
    summary = json.loads((out / "summary.json").read_text())
    return ckpt["model"], summary["final_loss"]


def test_killed_node_resumes_from_checkpoint_to_the_uninterrupted_result(tmp_path):
    setup = tiny_setup(tmp_path / "data", n_files=4, n_per_file=64, seq_len=64, max_pred=8, hidden=64, dropout=0.1)
    logs = tmp_path / "logs"
    logs.mkdir()

    reference = tmp_path / "reference"
    assert wait_all(start_agents(setup, reference, logs, "reference", resume=False), 150, logs) == [0, 0]
    ref_model, ref_loss = final_state(reference)

    out = tmp_path / "interrupted"
    agents = start_agents(setup, out, logs, "first", resume=False)
    deadline = time.monotonic() + 240
    while not list_checkpoints(out):  # wait for the first periodic checkpoint, then lose node 1
        assert time.monotonic() < deadline and all(a.poll() is None for a in agents), \
            "no checkpoint before the agents ended:\n" + (logs / "first-node0.log").read_text()[-3000:]
        time.sleep(0.05)
    kill_node(agents[1])
    codes = wait_all(agents, 180, logs)
    assert codes[1] == -signal.SIGKILL and codes[0] != 0, codes  # node 0 lost its peer and failed too
    done = [step for step, _ in list_checkpoints(out)]
    assert done and max(done) < STEPS, f"the kill came too late to interrupt anything: {done}"
    assert not (out / "summary.json").exists()

    assert wait_all(start_agents(setup, out, logs, "resumed", resume=True), 150, logs) == [0, 0]
    resumed_log = (logs / "resumed-node0.log").read_text() + (logs / "resumed-node1.log").read_text()
    assert f"at step {max(done)}" in resumed_log, resumed_log[-3000:]  # continued, not restarted from step 0
    model, loss = final_state(out)
    assert loss == ref_loss
    assert model.keys() == ref_model.keys()
    different = [k for k in model if not torch.equal(model[k], ref_model[k])]
    assert not different, f"{len(different)} tensors differ from the uninterrupted run, e.g. {different[:3]}"
