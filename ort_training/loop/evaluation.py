"""Held-out evaluation during a phase (every --eval_every steps) and early stopping on its loss, as fms-ehrs trains
its decoders (evaluation loss, patience 3). The trainer asks `due(step)` and merges the result into that step's
metrics record; the state (best loss, evaluations since) is rebuilt from the metrics a resumed run keeps, so a
resume stops where the uninterrupted run would."""

from __future__ import annotations

import logging
import math

logger = logging.getLogger(__name__)


class PeriodicEvaluation:
    def __init__(self, every: int, patience: int, loss_key: str, min_delta: float = 0.0, history: list[dict] = ()):
        self.every, self.patience, self.loss_key, self.min_delta = every, patience, f"eval_{loss_key}", min_delta
        self.best, self.since_best = math.inf, 0
        for record in history:  # the evaluations of the steps a resumed run restored
            if self.loss_key in record:
                self._update(record[self.loss_key])

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def _update(self, loss: float) -> None:
        if loss < self.best - self.min_delta:
            self.best, self.since_best = loss, 0
        else:
            self.since_best += 1

    def __call__(self, trainer) -> dict:
        """Evaluate the current weights (every rank computes the same numbers, so every rank takes the same stop
        decision without a collective); set trainer.finished_early when the loss has not improved for `patience`
        evaluations."""
        result = trainer.evaluate()
        self._update(result[self.loss_key])
        if self.patience and self.since_best >= self.patience:
            logger.info("early stopping at step %d: %s has not improved on %.4f for %d evaluations", trainer.global_step,
                        self.loss_key, self.best, self.since_best)
            trainer.finished_early = True
        return {**result, "eval_best_loss": self.best}
