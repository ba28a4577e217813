"""How one optimizer step runs: forward/backward over micro-batches, then the update.

`PlainEngine` covers one process and DDP (gradients all-reduced once, on the last micro-batch) with
torch's GradScaler for fp16; `DeepSpeedEngine` hands the same steps to a DeepSpeed ZeRO engine. The
trainer calls only `zero_grad`, `forward_backward`, `step`, `loss_scale` and `load_optimizer_state`, so
it has no DeepSpeed branches.
"""

from __future__ import annotations

import contextlib

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from ort_training.config import PretrainConfig
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

    def load_optimizer_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)


class DeepSpeedEngine:
    """ZeRO stage 0-2 with our LAMB; DeepSpeed does its own fp16 loss scaling and accumulation."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: PretrainConfig, env: DistEnv,
                 device: torch.device):
        from ort_training.loop.deepspeed_support import initialize_deepspeed

        self.optimizer = optimizer
        self.fp16 = cfg.precision == "fp16"
        self.engine = initialize_deepspeed(model, optimizer, cfg)
        self.model = self.engine
        self._skipped_before = 0

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

    def load_optimizer_state(self, state: dict) -> None:
        # ZeRO re-groups the parameters into flat partitions when it wraps the optimizer; the saved
        # state describes those partitions, so it can only be loaded now, after the wrap.
        self.optimizer.load_state_dict(state)


def build_engine(model, optimizer, cfg: PretrainConfig, env: DistEnv, device: torch.device):
    cls = DeepSpeedEngine if cfg.deepspeed else PlainEngine
    return cls(model, optimizer, cfg, env, device)
