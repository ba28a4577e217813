"""Preemption: SIGTERM (what a preemptible VM, Slurm or Azure ML sends) asks the loop to finish its step,
checkpoint and end with the preemption contract (exit 143, preempted.json; run_status.py). Caught from the
moment a trainer is constructed, so a SIGTERM during start-up (loading, the ORT export) also ends that way."""

from __future__ import annotations

import logging
import signal
import threading

import torch

logger = logging.getLogger(__name__)


class Preemption:
    def __init__(self) -> None:
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        logger.warning("SIGTERM: checkpointing after the current step and exiting")
        self.requested = True

    def request(self) -> None:
        self.requested = True

    def agreed(self, env, device: torch.device) -> bool:
        """Whether any rank was asked to stop: every rank must agree before a checkpoint (the save has a barrier)."""
        if env.is_distributed:
            flag = torch.tensor([float(self.requested)], device=device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            self.requested = bool(flag.item())
        return self.requested

    def restore(self) -> None:
        """Put the previous SIGTERM handler back (the trainer is closed or failed to start)."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
