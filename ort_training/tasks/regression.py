"""Regression data and metrics (fine-tuning's `--task regression`): one numeric target per text.

The loss is the MSE of standardised targets (z-scores with the training split's mean and standard
deviation), so a target in days or years trains like one near 0; at the end the standardisation is folded
into the classifier layer (weights x std, bias x std + mean), so the exported model, the test report and
ort_training.predict give values in the target's own unit.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bundle.atomic import atomic_path, save_figure
from ort_training.data.text import Table, TextDataError


MAX_TARGET = 1e30
"""The largest |target| accepted: the model is float32 (max 3.4e38) and the target scale is folded into its last
layer, so a value of 1e200 would overflow there (and the standard deviation overflows float64 near 1e154)."""


def read_targets(table: Table) -> np.ndarray:
    """The label column as float64; a value that is not a finite number, or whose magnitude exceeds MAX_TARGET, is an
    error naming file, row, column."""
    out = np.empty(len(table), dtype=np.float64)
    for i, v in enumerate(table.labels):
        try:
            out[i] = float(v)
        except (TypeError, ValueError, OverflowError):
            out[i] = math.nan
        if not math.isfinite(out[i]):
            raise TextDataError(f"{table.path}: row {i + 1} has {v!r} in column {table.label_column!r} (--label_column); "
                                "regression needs a finite number in every row")
        if abs(out[i]) > MAX_TARGET:
            raise TextDataError(f"{table.path}: row {i + 1} has {v!r} in column {table.label_column!r} (--label_column), beyond "
                                f"±{MAX_TARGET:g}: the float32 model cannot carry it; rescale the target (e.g. log, or other units)")
    return out


@dataclass
class Standardizer:
    mean: float
    std: float

    @classmethod
    def fit(cls, y: np.ndarray) -> "Standardizer":
        std = float(np.std(y))
        return cls(float(np.mean(y)), std if std > 0 else 1.0)

    def encode(self, y: np.ndarray) -> np.ndarray:
        return ((y - self.mean) / self.std).astype(np.float32)

    def decode(self, z: np.ndarray) -> np.ndarray:
        return z * self.std + self.mean

    @torch.no_grad()
    def fold_into(self, hf_model) -> None:
        """Make the model output decoded values: its last linear layer (`classifier`, BERT and ModernBERT) scaled."""
        layer = hf_model.classifier
        layer.weight.mul_(self.std)
        layer.bias.mul_(self.std).add_(self.mean)


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict:
    """MAE, RMSE, R² (scikit-learn), Spearman and Pearson correlation (scipy), MSE."""
    from scipy import stats
    from sklearn import metrics as skm

    y, pred = np.asarray(y, dtype=np.float64), np.asarray(pred, dtype=np.float64).reshape(-1)
    constant = np.ptp(y) == 0 or np.ptp(pred) == 0
    return {"documents": int(len(y)), "mae": float(skm.mean_absolute_error(y, pred)),
            "rmse": float(math.sqrt(skm.mean_squared_error(y, pred))), "mse": float(skm.mean_squared_error(y, pred)),
            "r2": float(skm.r2_score(y, pred)) if len(y) > 1 else None,
            "spearman": None if constant else float(stats.spearmanr(y, pred).statistic),
            "pearson": None if constant else float(stats.pearsonr(y, pred).statistic),
            "target_mean": float(y.mean()), "target_std": float(y.std())}


def plot_scatter(y: np.ndarray, pred: np.ndarray, path: Path, title: str) -> Path:
    """Predicted against true, with the diagonal (a perfect model's points lie on it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pred = np.asarray(pred).reshape(-1)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.scatter(y, pred, s=10, alpha=0.5)
    lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--", label="predicted = true")
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    return save_figure(fig, path)


def write_predictions(path: Path, table: Table, pred: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["row", "target", "predicted"])
        for i, (true, p) in enumerate(zip(table.labels, np.asarray(pred).reshape(-1))):
            w.writerow([i, true, f"{p:.6g}"])
