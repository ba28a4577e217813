"""How one optimizer step runs: forward/backward over micro-batches, then the update.

`PlainEngine` covers one process and DDP (gradients all-reduced once, on the last micro-batch) with
torch's GradScaler for fp16; `DeepSpeedEngine` hands the same steps to a DeepSpeed ZeRO engine. The
trainer calls only `zero_grad`, `forward_backward`, `step`, `loss_scale`, `optimizer_state_dict`,
`optimizer_shard` and `load_optimizer_state`, so it has no DeepSpeed branches.

Optimizer state in a checkpoint: `optimizer_state_dict()` is what checkpoint.pt holds (the whole state, or under
ZeRO only the number of shards) and `optimizer_shard()` what each rank writes beside it (None: nothing, the
whole state is in checkpoint.pt). `load_optimizer_state` takes either form back (checkpoint.py).
"""

from __future__ import annotations

import contextlib

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from ort_training.config import PretrainConfig
from ort_training.errors import UsageError
from ort_training.loop.checkpoint import load_optimizer_shard
from ort_training.loop.distributed import DistEnv


class PlainEngine:
    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: PretrainConfig, env: DistEnv,
                 device: torch.device):
        self.optimizer = optimizer
        self.accumulation = cfg.gradient_accumulation_steps
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        if env.is_distributed:
            model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        self.model = model
        self._scale_before = 1.0

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self._scale_before = self.loss_scale

    def forward_backward(self, inputs: tuple[torch.Tensor, ...], micro_index: int, autocast) -> tuple[torch.Tensor, torch.Tensor]:
        last = micro_index == self.accumulation - 1
        # DDP all-reduces only on the last micro-batch of the optimizer step.
        sync = contextlib.nullcontext() if last or not isinstance(self.model, DDP) else self.model.no_sync()
        with sync:
            with autocast:
                loss, stats = self.model(*inputs)
            self.scaler.scale(loss / self.accumulation).backward()
        return loss.detach(), stats

    def step(self) -> bool:
        """Apply the update; True if it was skipped (fp16 gradients overflowed)."""
        self.scaler.step(self.optimizer)  # unscales first; skips the step on inf/NaN gradients
        self.scaler.update()
        return self.scaler.is_enabled() and self.scaler.get_scale() < self._scale_before

    @property
    def loss_scale(self) -> float:
        return self.scaler.get_scale() if self.scaler.is_enabled() else 1.0

    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.scaler.load_state_dict(state["scaler"])

    def optimizer_state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def optimizer_shard(self) -> None:
        return None

    def load_optimizer_state(self, state: dict) -> None:
        if "zero_shards" in state:
            raise UsageError(f"{state.get('folder', 'the checkpoint')}: its optimizer state is partitioned over "
                             f"{state['zero_shards']} ranks by DeepSpeed ZeRO; resume with the same --deepspeed config")
        self.optimizer.load_state_dict(state)


# What a ZeRO optimizer's loss scaler must carry over a resume for fp16 to continue exactly (DeepSpeed's
# DynamicLossScaler; the static one has only cur_scale).
_SCALER_FIELDS = ("cur_scale", "cur_iter", "last_overflow_iter", "cur_hysteresis")


class DeepSpeedEngine:
    """ZeRO stage 0-2 with our LAMB; DeepSpeed does its own fp16 loss scaling and accumulation.

    ZeRO stage 1/2 partitions each parameter group, flattened, over the ranks; our optimizer, wrapped by DeepSpeed,
    then holds one flat fp32 partition per group and sees only its gradients. Two things follow: its global-norm clip
    is all-reduced over the data-parallel group (`optimizer.norm_group`, optim.py), and its state is saved one shard
    per rank (`optimizer_shard`), with, under bf16/fp16, the fp32 master partitions (the model's weights in
    checkpoint.pt are rounded there) and the fp16 loss scaler, so a resume continues exactly."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: PretrainConfig, env: DistEnv,
                 device: torch.device):
        from ort_training.loop.deepspeed_support import initialize_deepspeed

        self.optimizer = optimizer
        self.fp16 = cfg.precision == "fp16"
        # Under bf16/fp16 the model's weights (checkpoint.pt) are rounded copies of DeepSpeed's fp32 master partitions,
        # which the shards then carry; in fp32 they are the same numbers, saved once.
        self._save_master = cfg.precision != "fp32"
        self.engine = initialize_deepspeed(model, optimizer, cfg)
        self.model = self.engine
        self._skipped_before = 0
        self.zero_stage = self.engine.zero_optimization_stage()
        self.rank, self.world_size = self.engine.global_rank, self.engine.world_size
        self._zero = self.engine.optimizer if self.zero_stage >= 1 else None  # DeepSpeed's wrapper around ours
        if self._zero is not None and self.world_size > 1:
            # Each rank's optimizer sees one partition of the gradients: its clip needs the norm over all of them.
            optimizer.norm_group = getattr(self._zero, "dp_process_group", None) or torch.distributed.group.WORLD

    def zero_grad(self) -> None:
        self._skipped_before = self.engine.skipped_steps

    def forward_backward(self, inputs, micro_index, autocast):
        with autocast:
            loss, stats = self.engine(*inputs)
        self.engine.backward(loss)
        self.engine.step()  # an update only at the accumulation boundary, which DeepSpeed tracks
        return loss.detach(), stats

    def step(self) -> bool:
        return self.engine.skipped_steps > self._skipped_before

    @property
    def loss_scale(self) -> float:
        return float(getattr(self.engine.optimizer, "cur_scale", 1.0)) if self.fp16 else 1.0

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def _fp32_partitions(self) -> list[torch.Tensor]:
        # DeepSpeedZeroOptimizer (stage 1/2) names them so; BF16_Optimizer (bf16 with stage 1) names them otherwise.
        for name in ("single_partition_of_fp32_groups", "fp32_groups_flat_partition"):
            if getattr(self._zero, name, None) is not None:
                return list(getattr(self._zero, name))
        raise RuntimeError(f"{type(self._zero).__name__}: no fp32 partitions found (DeepSpeed version not supported)")

    def optimizer_state_dict(self) -> dict:
        if self._zero is None:  # stage 0: every rank holds the whole state
            return self.optimizer.state_dict()
        return {"zero_shards": self.world_size, "zero_stage": self.zero_stage}

    def optimizer_shard(self) -> dict | None:
        if self._zero is None:
            return None
        scaler = getattr(self._zero, "loss_scaler", None)
        shard = {"rank": self.rank, "world_size": self.world_size, "zero_stage": self.zero_stage,
                 "optimizer": self.optimizer.state_dict(),  # our optimizer's state of this rank's flat partitions
                 "loss_scaler": {k: getattr(scaler, k) for k in _SCALER_FIELDS if hasattr(scaler, k)}}
        if self._save_master:
            shard["fp32_partitions"] = self._fp32_partitions()
        return shard

    def load_optimizer_state(self, state: dict) -> None:
        # ZeRO re-groups the parameters into flat partitions when it wraps the optimizer; the saved
        # state describes those partitions, so it can only be loaded now, after the wrap.
        if "zero_shards" not in state:  # the whole state in checkpoint.pt (stage 0, or one rank before shards)
            self.optimizer.load_state_dict(state)
            return
        if self._zero is None:
            raise UsageError(f"{state.get('folder', 'the checkpoint')}: its optimizer state is ZeRO stage "
                             f"{state.get('zero_stage')}'s, partitioned over ranks; this run has stage 0")
        shard = load_optimizer_shard(state, self.rank, self.world_size)
        self.optimizer.load_state_dict(shard["optimizer"])
        if "fp32_partitions" in shard:  # bf16/fp16: the weights in checkpoint.pt were rounded
            with torch.no_grad():
                for mine, saved in zip(self._fp32_partitions(), shard["fp32_partitions"], strict=True):
                    mine.copy_(saved)
        scaler = getattr(self._zero, "loss_scaler", None)
        for key, value in shard.get("loss_scaler", {}).items():
            setattr(scaler, key, value)


def build_engine(model, optimizer, cfg: PretrainConfig, env: DistEnv, device: torch.device):
    cls = DeepSpeedEngine if cfg.deepspeed else PlainEngine
    return cls(model, optimizer, cfg, env, device)
