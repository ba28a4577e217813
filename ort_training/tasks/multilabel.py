"""Multi-label classification data and metrics (fine-tuning's `--task multi_label`).

Labels come as one column holding a list per text (a JSON list, `["a", "b"]`, or a string split on
`--label_separator`, `a|b`; `[]` = no label) or as several 0/1 columns (`--label_column a,b,c`). The model
gives each label a sigmoid probability; a label is predicted when its probability reaches the label's
threshold, chosen on the validation set (the threshold that maximises that label's F1), and stored in the
exported config as `label_thresholds` so scoring (ort_training.predict) decides as the test report did.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from bundle.atomic import atomic_path
from ort_training.data.text import Table, TextDataError, read_table

DEFAULT_THRESHOLD = 0.5
"""For a label whose validation set has no positive (or no negative) text: no F1 curve to choose from."""
TRUE_VALUES, FALSE_VALUES = ("1", "true", "yes"), ("0", "false", "no")


def label_columns(label_column: str) -> list[str]:
    """`--label_column a,b,c` names several 0/1 columns; one name is a column of label lists."""
    return [c.strip() for c in label_column.split(",") if c.strip()]


def read_multilabel(path: str | Path, text_column: str, label_column: str, separator: str) -> Table:
    """A Table whose `labels` are JSON lists of label names (sorted), from a list column or 0/1 columns."""
    columns = label_columns(label_column)
    if len(columns) == 1:
        table = read_table(path, text_column, columns[0])
        table.labels = [json.dumps(parse_label_list(v, separator, table, i)) for i, v in enumerate(table.labels)]
        return table
    per_column = [read_table(path, text_column, c) for c in columns]
    table = per_column[0]
    flags = []
    for col, t in zip(columns, per_column):
        values = []
        for i, v in enumerate(t.labels):
            low = v.strip().lower()
            if low not in TRUE_VALUES + FALSE_VALUES:
                raise TextDataError(f"{t.path}: row {i + 1} has {v!r} in column {col!r} (--label_column); a label column holds 0 or 1")
            values.append(low in TRUE_VALUES)
        flags.append(values)
    table.labels = [json.dumps([c for c, f in zip(columns, row) if f]) for row in zip(*flags)]
    table.label_column = label_column
    return table


def parse_label_list(value: str, separator: str, table: Table, row: int) -> list[str]:
    value = value.strip()
    if value.startswith("["):
        try:
            items = json.loads(value)
        except ValueError:
            raise TextDataError(f"{table.path}: row {row + 1} of column {table.label_column!r} (--label_column) starts with '[' but is "
                                f"not a JSON list: {value[:80]!r}") from None
    else:
        items = value.split(separator)
    return sorted({str(x).strip() for x in items if str(x).strip()})


class MultiLabelSet:
    """The labels: the training file's (sorted), or the 0/1 columns in the order given."""

    def __init__(self, labels: list[str]):
        self.labels = list(labels)
        self.index = {label: i for i, label in enumerate(self.labels)}

    @classmethod
    def from_table(cls, table: Table, label_column: str) -> "MultiLabelSet":
        columns = label_columns(label_column)
        if len(columns) > 1:
            return cls(columns)
        seen = sorted({lab for v in table.labels for lab in json.loads(v)})
        if not seen:
            raise TextDataError(f"{table.path}: column {label_column!r} (--label_column) holds no label in any row")
        return cls(seen)

    def encode(self, table: Table) -> np.ndarray:
        """[rows, labels] float32 0/1; a label the training data lacks is an error naming file and column."""
        out = np.zeros((len(table), len(self.labels)), dtype=np.float32)
        unknown: dict[str, int] = {}
        for i, v in enumerate(table.labels):
            for lab in json.loads(v):
                if lab in self.index:
                    out[i, self.index[lab]] = 1.0
                else:
                    unknown[lab] = unknown.get(lab, 0) + 1
        if unknown:
            raise TextDataError(f"{table.path}: column {table.label_column!r} (--label_column) has label(s) the training data lacks: "
                                f"{dict(list(unknown.items())[:10])} (label: rows); drop them or add training examples of them")
        return out


def choose_thresholds(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per label, the probability threshold with the best F1 on (y, probs) (scikit-learn's PR curve);
    DEFAULT_THRESHOLD where a label has no positive or no negative text."""
    from sklearn.metrics import precision_recall_curve

    out = np.full(y.shape[1], DEFAULT_THRESHOLD)
    for j in range(y.shape[1]):
        pos = int(y[:, j].sum())
        if pos == 0 or pos == len(y):
            continue
        precision, recall, thresholds = precision_recall_curve(y[:, j], probs[:, j])
        f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
        out[j] = float(thresholds[int(np.argmax(f1))])
    return out


def multilabel_metrics(y: np.ndarray, probs: np.ndarray, thresholds: np.ndarray, labels: list[str]) -> dict:
    """micro / macro precision, recall and F1 at the thresholds, exact-match accuracy, per-label figures and
    AUROC (macro over the labels with positive and negative texts), mean BCE."""
    from sklearn import metrics as skm

    y = np.asarray(y, dtype=np.int64)
    pred = (probs >= thresholds[None, :]).astype(np.int64)
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, average=None, zero_division=0)
    aurocs = [float(skm.roc_auc_score(y[:, j], probs[:, j])) if 0 < y[:, j].sum() < len(y) else None for j in range(len(labels))]
    present = [a for a in aurocs if a is not None]
    clipped = np.clip(probs, 1e-7, 1 - 1e-7)
    out = {"documents": int(len(y)), "labels": list(labels),
           "micro_f1": float(skm.f1_score(y, pred, average="micro", zero_division=0)),
           "macro_f1": float(skm.f1_score(y, pred, average="macro", zero_division=0)),
           "micro_precision": float(skm.precision_score(y, pred, average="micro", zero_division=0)),
           "micro_recall": float(skm.recall_score(y, pred, average="micro", zero_division=0)),
           "exact_match": float((pred == y).all(1).mean()),
           "macro_auroc": float(np.mean(present)) if present else None,
           "loss": float(-(y * np.log(clipped) + (1 - y) * np.log(1 - clipped)).mean())}
    out["per_label"] = {lab: {"precision": float(p[j]), "recall": float(r[j]), "f1": float(f[j]), "support": int(s[j]),
                              "auroc": aurocs[j], "threshold": float(thresholds[j])} for j, lab in enumerate(labels)}
    return out


def write_predictions(path: Path, table: Table, probs: np.ndarray, thresholds: np.ndarray, labels: list[str]) -> None:
    """row, the true labels, the predicted ones ('|'-joined), p_<label> per label."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["row", "labels", "predicted", *[f"p_{lab}" for lab in labels]])
        for i, (true, p) in enumerate(zip(table.labels, probs)):
            w.writerow([i, "|".join(json.loads(true)), predicted(p, thresholds, labels), *[f"{x:.5f}" for x in p]])


def predicted(p: np.ndarray, thresholds: np.ndarray, labels: list[str]) -> str:
    return "|".join(lab for lab, x, t in zip(labels, p, thresholds) if x >= t)
