"""Held-out evaluation during a phase (every --eval_every steps) and early stopping on its loss, as fms-ehrs trains
its decoders (evaluation loss, patience 3). The trainer asks `due(step)` and merges the result into that step's
metrics record; the state (best loss, evaluations since) is rebuilt from the metrics a resumed run keeps, so a
resume stops where the uninterrupted run would.

With early stopping on, the export holds the best evaluated weights, as Hugging Face's Trainer does with
`load_best_model_at_end`: each improvement writes the weights to OUTPUT_DIR/best_weights.pt (atomically; a resumed run
that redoes the step writes the same file again, since resume is bitwise), and the phase's end loads them before the
export. Checkpoints (and a following phase) keep the last step's weights."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from bundle.atomic import atomic_path

logger = logging.getLogger(__name__)

BEST_WEIGHTS = "best_weights.pt"


class PeriodicEvaluation:
    def __init__(self, every: int, patience: int, loss_key: str, min_delta: float = 0.0, history: list[dict] = (),
                 output_dir: str | Path | None = None):
        self.every, self.patience, self.loss_key, self.min_delta = every, patience, f"eval_{loss_key}", min_delta
        self.best, self.since_best = math.inf, 0
        self.best_file = Path(output_dir) / BEST_WEIGHTS if output_dir is not None and patience else None
        for record in history:  # the evaluations of the steps a resumed run restored
            if self.loss_key in record:
                self._update(record[self.loss_key])

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def _update(self, loss: float) -> bool:
        if loss < self.best - self.min_delta:
            self.best, self.since_best = loss, 0
            return True
        self.since_best += 1
        return False

    def __call__(self, trainer) -> dict:
        """Evaluate the current weights (every rank computes the same numbers, so every rank takes the same stop
        decision without a collective); keep them when they are the best so far; set trainer.finished_early when the
        loss has not improved for `patience` evaluations."""
        result = trainer.evaluate()
        if self._update(result[self.loss_key]) and self.best_file is not None and trainer.is_main:
            with atomic_path(self.best_file) as tmp:
                torch.save({"step": trainer.global_step, self.loss_key: self.best,
                            "state_dict": trainer.model.hf_model.state_dict()}, tmp)
        if self.patience and self.since_best >= self.patience:
            logger.info("early stopping at step %d: %s has not improved on %.4f for %d evaluations", trainer.global_step,
                        self.loss_key, self.best, self.since_best)
            trainer.finished_early = True
        return {**result, "eval_best_loss": self.best}

    def load_best(self, model, global_step: int) -> dict | None:
        """Load the best evaluated weights into `model` (the export's); returns {"step", loss} or None when early
        stopping is off or no evaluation was kept."""
        if self.best_file is None or not self.best_file.is_file():
            return None
        saved = torch.load(self.best_file, map_location="cpu", weights_only=True)
        if saved["step"] > global_step:  # cannot happen with a bitwise resume; never export weights from the future
            logger.warning("%s holds step %d, after this run's step %d: exporting the last step's weights", self.best_file,
                           saved["step"], global_step)
            return None
        model.load_state_dict(saved["state_dict"])
        logger.info("export: the best evaluated weights, step %d (%s %.4f)", saved["step"], self.loss_key, saved[self.loss_key])
        return {"step": saved["step"], self.loss_key: saved[self.loss_key]}
