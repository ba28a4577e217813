"""Process-group set-up for torchrun (env://), MPI launchers (OMPI_COMM_WORLD_*) and Azure ML.

Azure ML's PyTorch distribution sets the same variables as torchrun (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT); its MPI distribution sets OMPI_COMM_WORLD_* and names the master node
in AZ_BATCH_MASTER_NODE ("host:port") or AZ_BATCHAI_MPI_MASTER_NODE ("host").
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: str = "29500"
    launcher: str = "none"

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def resolve_dist_env(environ: Mapping[str, str]) -> DistEnv:
    """Pure: read rank/world/master from whichever launcher's variables are present."""
    addr = environ.get("MASTER_ADDR", "127.0.0.1")
    port = environ.get("MASTER_PORT", "29500")
    if "RANK" in environ and "WORLD_SIZE" in environ:
        launcher = "azureml" if "AZUREML_RUN_ID" in environ else "env"
        return DistEnv(int(environ["RANK"]), int(environ["WORLD_SIZE"]), int(environ.get("LOCAL_RANK", 0)), addr, port, launcher)
    if "OMPI_COMM_WORLD_RANK" in environ:
        master = environ.get("AZ_BATCH_MASTER_NODE") or environ.get("AZ_BATCHAI_MPI_MASTER_NODE")
        if master:
            addr, _, maybe_port = master.partition(":")
            port = maybe_port or port
        return DistEnv(
            int(environ["OMPI_COMM_WORLD_RANK"]),
            int(environ["OMPI_COMM_WORLD_SIZE"]),
            int(environ.get("OMPI_COMM_WORLD_LOCAL_RANK", 0)),
            addr,
            port,
            "mpi",
        )
    return DistEnv()


def init_distributed() -> tuple[DistEnv, torch.device]:
    """Initialise the default process group (gloo on CPU, NCCL on GPU) and pick this rank's device."""
    env = resolve_dist_env(os.environ)
    if torch.cuda.is_available():
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if env.is_distributed and not dist.is_initialized():
        # env:// reads these; MPI launchers do not set them.
        os.environ.update(RANK=str(env.rank), WORLD_SIZE=str(env.world_size), LOCAL_RANK=str(env.local_rank),
                          MASTER_ADDR=env.master_addr, MASTER_PORT=env.master_port)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://")
        logger.info("rank %d/%d (%s launcher, %s backend) on %s", env.rank, env.world_size, env.launcher, backend, device)
    return env, device


def free_port() -> int:
    """A TCP port free on this host now (for a one-process group that needs a rendezvous address)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t


def all_gather_object(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] (just [obj] without a process group)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


GLOO_SETTLE_SECONDS = 0.5
"""How long `destroy` hands the GIL to gloo's worker threads before the group goes (see there)."""


def destroy() -> None:
    """End the process group after the last collective. Before that, sleep GLOO_SETTLE_SECONDS: a gloo worker thread
    frees a finished collective's work *after* waking the caller, and freeing it can need the GIL (a barrier keeps
    weak references to earlier works, so the last barrier's release frees an all_gather_object's Python tensors);
    ProcessGroupGloo's destructor, run when DDP's reducer lets the group go, joins that thread while holding the GIL.
    CI hung there once in ~100 two-rank runs on each stack (gdb: the main thread in ~ProcessGroupGloo ->
    thread::join, a pt_gloo_runloop thread in ~AsyncBarrierWork -> ~AsyncAllgatherWork -> decref_pyobject ->
    take_gil). Sleeping releases the GIL, so the worker finishes first."""
    if dist.is_initialized():
        if dist.get_backend() == "gloo":
            time.sleep(GLOO_SETTLE_SECONDS)
        dist.destroy_process_group()
