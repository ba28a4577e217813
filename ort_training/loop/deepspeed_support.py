"""`--deepspeed CONFIG`: ZeRO stage 1/2 around our model with our LAMB passed in.

DeepSpeed's FusedLamb is CUDA-only, so the optimizer is ours. The batch fields of the DeepSpeed
config are overwritten from our flags so there is one source of truth for the batch size.
On CPU DeepSpeed picks the `ccl` backend by default; we initialise torch.distributed with gloo
first (distributed.init_distributed), which DeepSpeed then reuses.

ZeRO 1/2 runs on any number of ranks: the engine all-reduces our optimizer's gradient-norm clip over the
partitions and saves one optimizer shard per rank (engine.DeepSpeedEngine, checkpoint.py).
"""

from __future__ import annotations

import json
import logging
import os

import torch

from ort_training.config import PretrainConfig, resolve_deepspeed_config
from ort_training.loop.distributed import free_port
from ort_training.errors import MissingDependencyError, UsageError

logger = logging.getLogger(__name__)


def load_deepspeed_config(cfg: PretrainConfig, world_size: int) -> dict:
    path = resolve_deepspeed_config(cfg.deepspeed)
    try:
        with open(path) as fh:
            ds = json.load(fh)
    except ValueError as exc:
        raise UsageError(f"--deepspeed {path}: not valid JSON ({exc})") from None
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2):
        raise UsageError(f"--deepspeed {cfg.deepspeed}: ZeRO stage {stage} is not supported (use 1 or 2)")
    for key in ("optimizer", "scheduler"):
        if key in ds:
            raise UsageError(f"--deepspeed {cfg.deepspeed}: remove the '{key}' section; LAMB and the poly schedule come from our flags")
    ds["train_micro_batch_size_per_gpu"] = cfg.micro_batch_size
    ds["gradient_accumulation_steps"] = cfg.gradient_accumulation_steps
    ds["train_batch_size"] = cfg.train_batch_size * world_size
    # LAMB clips by the global norm itself (before the moments); a second clip in DeepSpeed would differ.
    ds["gradient_clipping"] = 0.0
    # DeepSpeed only whitelists its own optimizers for ZeRO; ours is a plain torch Optimizer.
    ds["zero_allow_untested_optimizer"] = True
    ds.setdefault("fp16", {})["enabled"] = cfg.precision == "fp16"
    ds.setdefault("bf16", {})["enabled"] = cfg.precision == "bf16"
    return ds


def initialize_deepspeed(model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: PretrainConfig):
    try:
        import deepspeed
    except ImportError as exc:
        raise MissingDependencyError("--deepspeed needs DeepSpeed: pip install 'deepspeed>=0.15' (the [deepspeed] extra)") from exc
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    if not torch.distributed.is_initialized():
        # DeepSpeed always needs a process group and the variables torchrun sets (it asserts LOCAL_RANK),
        # even for one process: give a plain `python -m` run what torchrun would, a one-rank group on a
        # free local port, so the launcher script and Azure ML work without torchrun too.
        for key, value in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())).items():
            os.environ.setdefault(key, value)
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend, init_method="env://")
    ds_config = load_deepspeed_config(cfg, world)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    logger.info("DeepSpeed ZeRO stage %d engine ready", ds_config.get("zero_optimization", {}).get("stage", 0))
    return engine
