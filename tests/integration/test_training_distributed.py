"""Two CPU processes over gloo: each rank reads different samples, parameters stay identical."""

import json
import math
import os
from pathlib import Path

import cli_runs
import pytest
import torch

from ort_training.data.synthetic import tiny_setup
from ort_training.loop.distributed import DistEnv, resolve_dist_env

REPO = Path(__file__).resolve().parents[2]

WORKER = r'''
import json, sys, torch
from ort_training.config import PretrainConfig
from ort_training.loop.trainer import Trainer
setup, out, backend, opts = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
cfg = PretrainConfig(**setup, output_dir=out, backend=backend, max_steps=opts.get("max_steps", 4), train_batch_size=8,
                     gradient_accumulation_steps=2, learning_rate=1e-2, disable_progress_bar=True, skip_hf_export=True,
                     num_steps_per_checkpoint=100, resume_from_checkpoint=opts.get("resume", False))
tr = Trainer(cfg)
seen = []
orig = tr._micro_batches
def recording(it):  # fingerprints of the samples this rank actually trained on
    for i, batch in orig(it):
        seen.extend(batch["input_ids"].sum(1).mul(1000003).add(batch["input_ids"][:, 1]).tolist())
        yield i, batch
tr._micro_batches = recording
def stop(t, rec):
    if t.global_step == opts.get("stop_at"):
        t.request_stop()  # what the SIGTERM handler does (all ranks agree through an all-reduce)
tr.hooks.append(stop)
tr.train()
rank = tr.env.rank
torch.save({"params": [p.detach() for p in tr.model.parameters()], "seen": seen}, f"{out}/rank{rank}.pt")
tr.close()
'''


def torchrun(tmp_path, setup, out, backend, **opts):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    res = cli_runs.torchrun([str(worker), json.dumps(setup), str(out), backend, json.dumps(opts)],
                            {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    return res


@pytest.mark.parametrize("backend", ["eager", pytest.param("ort", marks=pytest.mark.ort)])
def test_two_ranks_gloo(tmp_path, backend):
    setup = tiny_setup(tmp_path / "d", n_files=3, n_per_file=24, seq_len=32, max_pred=5, hidden=32, dropout=0.1)
    torchrun(tmp_path, setup, tmp_path, backend)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert len(r0["seen"]) == len(r1["seen"]) == 4 * 8
    assert not set(r0["seen"]) & set(r1["seen"])  # different data on each rank
    for a, b in zip(r0["params"], r1["params"]):
        assert torch.equal(a, b)  # DDP kept replicas identical (dropout differs per rank, gradients are averaged)
    ckpt = torch.load(tmp_path / "checkpoints" / "step-4" / "checkpoint.pt", weights_only=True)
    assert len(ckpt["data"]) == len(ckpt["rng"]) == 2  # every rank's data position and RNG, for an exact resume
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # Four steps on random tokens need not lower the loss (the current stack's numerics did not): finite is the claim.
    assert [m["step"] for m in metrics] == [1, 2, 3, 4] and all(math.isfinite(m["loss"]) for m in metrics)


def test_resolve_dist_env_launchers():
    assert resolve_dist_env({}) == DistEnv()
    torchrun = resolve_dist_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "node0", "MASTER_PORT": "1234"})
    assert torchrun == DistEnv(3, 8, 1, "node0", "1234", "env")
    aml = resolve_dist_env({"RANK": "0", "WORLD_SIZE": "2", "AZUREML_RUN_ID": "x", "MASTER_ADDR": "10.0.0.4", "MASTER_PORT": "6105"})
    assert aml.launcher == "azureml" and aml.master_addr == "10.0.0.4"
    mpi = resolve_dist_env({"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "16", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
                            "AZ_BATCH_MASTER_NODE": "10.0.0.9:6000"})
    assert mpi == DistEnv(5, 16, 1, "10.0.0.9", "6000", "mpi")
    mpi2 = resolve_dist_env({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2", "AZ_BATCHAI_MPI_MASTER_NODE": "host1"})
    assert (mpi2.master_addr, mpi2.master_port, mpi2.is_distributed) == ("host1", "29500", True)


def test_two_ranks_kill_and_resume_is_exact(tmp_path):
    """Per-rank data positions and RNG states (dropout on) make a 2-rank resume bitwise in eager fp32."""
    setup = tiny_setup(tmp_path / "d", n_files=3, n_per_file=20, seq_len=32, max_pred=5, hidden=32, dropout=0.1)
    torchrun(tmp_path, setup, tmp_path / "ref", "eager", max_steps=6)
    torchrun(tmp_path, setup, tmp_path / "job", "eager", max_steps=6, stop_at=3)
    torchrun(tmp_path, setup, tmp_path / "job", "eager", max_steps=6, resume=True)
    ref = [json.loads(line) for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    job = [json.loads(line) for line in (tmp_path / "job" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in job] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in job] == [r["loss"] for r in ref]
    for rank in (0, 1):
        a = torch.load(tmp_path / "ref" / f"rank{rank}.pt", weights_only=True)["params"]
        b = torch.load(tmp_path / "job" / f"rank{rank}.pt", weights_only=True)["params"]
        assert all(torch.equal(x, y) for x, y in zip(a, b))
