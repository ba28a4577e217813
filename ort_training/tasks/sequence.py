"""The sequence-level fine-tuning tasks (`--task` of ort_training.finetune): how each reads its labels,
what the loss sees, which validation metric early stopping (and the hyperparameter search) follows and in
which direction, and what the test report, plots and predictions hold.

    task          problem_type (Hugging Face)     loss           early stopping / HPO objective
    single_label  single_label_classification     cross-entropy  macro-F1, maximised (--early_stopping_metric: AUROC,
                                                  (--class_weights,  AUPRC, maximised; loss, minimised)
                                                  --pos_weight)
    multi_label   multi_label_classification      sigmoid + BCE  micro-F1 at per-label thresholds chosen on validation, maximised
    regression    regression                      MSE (z-scores) RMSE, minimised

The training loop, checkpoints, export and scoring are shared (finetune.py); a task only maps data to
targets and model outputs to metrics.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ort_training.data.text import LabelSet, Table, TextDataError, random_split, read_table, split_rows
from ort_training.errors import UsageError
from ort_training.objectives import SequenceClassification
from ort_training.tasks import calibration, multilabel, regression

logger = logging.getLogger(__name__)


class SequenceTask:
    name: str
    problem_type: str
    metric: str
    """The validation metric early stopping and the hyperparameter search follow."""
    higher_is_better: bool = True
    classification: bool = True

    def __init__(self, cfg):
        self.cfg = cfg
        self.labels: list[str] = []

    # --- data
    def read(self, path: str) -> Table:
        return read_table(path, self.cfg.text_column, self.cfg.label_column)

    def split(self, table: Table, fractions: dict[str, float], seed: int) -> tuple[Table, dict[str, Table]]:
        """Seeded random split (the label sets or values are too many to stratify by)."""
        return random_split(table, fractions, seed)

    def fit_labels(self, train: Table) -> None:
        raise NotImplementedError

    def encode(self, table: Table) -> np.ndarray:
        """What the loss compares the model's output with (checked against the labels fixed by `fit_labels`)."""
        raise NotImplementedError

    def truth(self, table: Table) -> np.ndarray:
        """What the metrics compare the outputs with."""
        return self.encode(table)

    def load_splits(self) -> dict[str, Table]:
        """{"train"|"validation"|"test": Table}, split from --train_file where a file is not given, each checked
        against the training labels; with --group_column the test table carries each row's group."""
        from ort_training.tasks.finetuning import held_out_fractions

        cfg = self.cfg
        train = self.read(cfg.train_file)
        need_groups = bool(cfg.group_column)
        if need_groups and not cfg.test_file:
            train.groups = self._groups(cfg.train_file)
        fractions = held_out_fractions(cfg)
        tables = {}
        if fractions:
            self.fit_labels(train)  # one class only: say so about the file, before splitting
            train, held = self.split(train, fractions, cfg.split_seed)
            tables.update(held)
        tables["train"] = train
        if cfg.validation_file:
            tables["validation"] = self.read(cfg.validation_file)
        if cfg.test_file:
            tables["test"] = self.read(cfg.test_file)
            if need_groups:
                tables["test"].groups = self._groups(cfg.test_file)
        self.fit_labels(train)
        for name, table in tables.items():
            if not len(table):
                raise TextDataError(f"{table.path}: the {name} split is empty; give a larger file or fraction")
            self.encode(table)  # unknown labels, bad values: an error naming the file and column
        return {name: tables[name] for name in ("train", "validation", "test") if name in tables}

    def _groups(self, path: str) -> list[str]:
        return read_table(path, self.cfg.text_column, self.cfg.group_column, "--group_column").labels

    def objective(self, init_checkpoint):
        """The training objective (its loss); `init_checkpoint` None when resuming."""
        return SequenceClassification(self.labels, init_checkpoint=init_checkpoint, problem_type=self.problem_type)

    # --- outputs and metrics (outputs: finetune.predict's per-document probabilities, or values)
    def outputs(self, predicted: np.ndarray) -> np.ndarray:
        return predicted

    def validation(self, y: np.ndarray, out: np.ndarray) -> dict:
        """The figures of one validation pass; holds `metric` and `loss`."""
        raise NotImplementedError

    def finalize(self, hf_model, y_val: np.ndarray, out_val: np.ndarray) -> dict:
        """Before the export, with the best (and, with --temperature_scaling, calibrated) weights and their
        validation outputs: put what the task learns on validation into the model (thresholds, target
        scale); returns what the report records of it."""
        return {}

    def test_metrics(self, y: np.ndarray, out: np.ndarray) -> dict:
        raise NotImplementedError

    def calibration(self, y: np.ndarray, out: np.ndarray) -> dict:
        conf, outcome = calibration.confidence_outcome(y, out, self.problem_type == "multi_label_classification")
        return calibration.reliability(conf, outcome)

    def write_outputs(self, out_dir: Path, table: Table, y: np.ndarray, out: np.ndarray, report: dict, title: str) -> None:
        raise NotImplementedError

    def summary(self, metrics: dict) -> dict:
        """The few figures finetune_summary.json and the command's last line show."""
        return {k: metrics.get(k) for k in self.headline}

    headline: tuple[str, ...] = ()


# --early_stopping_metric -> (the key of the validation record, higher is better)
SELECTION_METRICS = {"macro_f1": ("macro_f1", True), "auroc": ("auroc_ovr", True), "auprc": ("auprc_ovr", True), "loss": ("loss", False)}


class SingleLabel(SequenceTask):
    name, problem_type, metric, headline = ("single_label", "single_label_classification", "macro_f1",
                                            ("accuracy", "macro_f1", "auroc_ovr", "auprc_ovr"))

    def __init__(self, cfg):
        super().__init__(cfg)
        self.metric, self.higher_is_better = SELECTION_METRICS[getattr(cfg, "early_stopping_metric", None) or "macro_f1"]
        self.class_weights: list[float] | None = None
        """The training loss's weight per class (label order), from --class_weights / --pos_weight; None: unweighted."""

    def split(self, table, fractions, seed):
        return split_rows(table, fractions, seed)  # stratified by class

    def fit_labels(self, train):
        self._set = LabelSet.from_table(train)
        self.labels = self._set.labels
        self.class_weights = self._weights(self._set.encode(train))

    def _weights(self, y_train: np.ndarray) -> list[float] | None:
        from ort_training.tasks.finetuning import parse_class_weights

        cfg, k = self.cfg, len(self.labels)
        given = parse_class_weights(getattr(cfg, "class_weights", None))
        pos_weight = getattr(cfg, "pos_weight", None)
        if pos_weight is not None:
            if k != 2:
                raise UsageError(f"--pos_weight is for two classes; the training labels are {k}: {self.labels}. Use --class_weights")
            return [1.0, float(pos_weight)]
        if given == "balanced":  # scikit-learn's "balanced": documents / (classes x documents of the class)
            counts = np.bincount(y_train, minlength=k)
            return [float(len(y_train) / (k * c)) for c in counts]
        if given is not None and len(given) != k:
            raise UsageError(f"--class_weights {cfg.class_weights}: {len(given)} weight(s) for {k} classes {self.labels} (label order)")
        return given

    def objective(self, init_checkpoint):
        if self.class_weights is None:
            return super().objective(init_checkpoint)
        return WeightedSequenceClassification(self.labels, self.class_weights, init_checkpoint=init_checkpoint)

    def load_splits(self):
        tables = super().load_splits()
        if self.metric in ("auroc_ovr", "auprc_ovr"):  # undefined on a validation set of one class: say so before training
            present = sorted(set(tables["validation"].labels))
            if len(present) < 2:
                raise UsageError(f"--early_stopping_metric {self.cfg.early_stopping_metric}: the validation split "
                                 f"({tables['validation'].path}) holds one class only ({present}); it needs both a positive and a "
                                 "negative. Use a larger validation set or --early_stopping_metric loss")
        if self.class_weights is not None:
            logger.info("training loss weights per class: %s", ", ".join(f"{lab} {w:.4g}" for lab, w in zip(self.labels, self.class_weights)))
        return tables

    def encode(self, table):
        return self._set.encode(table)

    def validation(self, y, out):
        from ort_training.tasks.finetuning import classification_metrics

        m = classification_metrics(y, out, self.labels)
        loss = float(-np.log(np.clip(out[np.arange(len(out)), y], 1e-12, None)).mean())
        return {"macro_f1": m["macro_f1"], "accuracy": m["accuracy"], "auroc_ovr": m["auroc_ovr"], "auprc_ovr": m["auprc_ovr"],
                "loss": loss}

    def test_metrics(self, y, out):
        from ort_training.tasks.finetuning import classification_metrics

        return classification_metrics(y, out, self.labels)

    def write_outputs(self, out_dir, table, y, out, report, title):
        from ort_training.tasks.finetuning import plot_confusion_matrix, write_predictions

        plot_confusion_matrix(report["confusion_matrix"], self.labels, out_dir / "confusion_matrix.png",
                              f"{title}: accuracy {report['accuracy']:.3f}, macro-F1 {report['macro_f1']:.3f}"
                              + (f", AUROC {report['auroc_ovr']:.3f}" if report["auroc_ovr"] is not None else "")
                              + f"\n{report['documents']} documents, best step {report['best_step']}")
        write_predictions(out_dir / "test_predictions.csv", table, out, self.labels)


class WeightedSequenceClassification(SequenceClassification):
    """Single-label cross-entropy with a weight per class (--class_weights, --pos_weight). The weights are a constant of
    the loss (ORTModule exports them into the graph); the model, its export and the training metrics are the base
    class's. A subclass here, not a change of objectives.py: the loss is its line with `weight=`."""

    def __init__(self, labels, class_weights, init_checkpoint=None):
        super().__init__(labels, init_checkpoint=init_checkpoint, problem_type="single_label_classification")
        self.class_weights = torch.tensor(class_weights, dtype=torch.float32)

    def forward(self, model, dense_seq_output, *inputs):
        input_ids, segment_ids, input_mask, (labels,) = self._encoder_inputs(inputs)
        logits = self.family.seq_logits(model, input_ids, segment_ids, input_mask).float()
        target = labels.reshape(-1)
        loss = F.cross_entropy(logits, target, weight=self.class_weights.to(logits.device))
        correct = (logits.argmax(-1) == target).sum().float()
        return loss, torch.stack([correct.detach(), (labels >= 0).sum().float().detach()])


class MultiLabel(SequenceTask):
    name, problem_type, metric, headline = ("multi_label", "multi_label_classification", "micro_f1",
                                            ("micro_f1", "macro_f1", "macro_auroc", "exact_match"))
    thresholds: np.ndarray

    def read(self, path):
        return multilabel.read_multilabel(path, self.cfg.text_column, self.cfg.label_column, self.cfg.label_separator)

    def fit_labels(self, train):
        self._set = multilabel.MultiLabelSet.from_table(train, self.cfg.label_column)
        self.labels = self._set.labels

    def encode(self, table):
        return self._set.encode(table)

    def validation(self, y, out):
        m = multilabel.multilabel_metrics(y, out, multilabel.choose_thresholds(y, out), self.labels)
        return {k: m[k] for k in ("micro_f1", "macro_f1", "macro_auroc", "exact_match", "loss")}

    def finalize(self, hf_model, y_val, out_val):
        self.thresholds = multilabel.choose_thresholds(y_val, out_val)
        hf_model.config.label_thresholds = {lab: float(t) for lab, t in zip(self.labels, self.thresholds)}
        return {"thresholds": hf_model.config.label_thresholds, "thresholds_chosen_on": "validation (best F1 per label)"}

    def test_metrics(self, y, out):
        return multilabel.multilabel_metrics(y, out, self.thresholds, self.labels)

    def write_outputs(self, out_dir, table, y, out, report, title):
        multilabel.write_predictions(out_dir / "test_predictions.csv", table, out, self.thresholds, self.labels)


class Regression(SequenceTask):
    name, problem_type, metric, higher_is_better, classification = "regression", "regression", "rmse", False, False
    headline = ("rmse", "mae", "r2", "spearman")

    def fit_labels(self, train):
        self.labels = [self.cfg.label_column]
        self.scale = regression.Standardizer.fit(regression.read_targets(train))

    def encode(self, table):
        return self.scale.encode(regression.read_targets(table))

    def truth(self, table):
        return regression.read_targets(table)

    def outputs(self, predicted):
        """During training the model predicts z-scores; after `finalize` its outputs are in the target's unit."""
        z = np.asarray(predicted).reshape(-1)
        return z if getattr(self, "_folded", False) else self.scale.decode(z)

    def validation(self, y, out):
        m = regression.regression_metrics(y, out)
        return {"rmse": m["rmse"], "mae": m["mae"], "r2": m["r2"], "spearman": m["spearman"], "loss": m["mse"]}

    def finalize(self, hf_model, y_val, out_val):
        self.scale.fold_into(hf_model)
        self._folded = True
        return {"target_mean": self.scale.mean, "target_std": self.scale.std,
                "note": "trained on z-scores; the exported model outputs the target's unit"}

    def test_metrics(self, y, out):
        return regression.regression_metrics(y, out)

    def write_outputs(self, out_dir, table, y, out, report, title):
        regression.plot_scatter(y, out, out_dir / "scatter.png",
                                f"{title}: RMSE {report['rmse']:.4g}, MAE {report['mae']:.4g}, R² {report['r2']:.3f}"
                                + (f", Spearman {report['spearman']:.3f}" if report["spearman"] is not None else "")
                                + f"\n{report['documents']} documents, best step {report['best_step']}")
        regression.write_predictions(out_dir / "test_predictions.csv", table, out)


TASKS: dict[str, type[SequenceTask]] = {cls.name: cls for cls in (SingleLabel, MultiLabel, Regression)}


def get_task(cfg) -> SequenceTask:
    try:
        return TASKS[cfg.task](cfg)
    except KeyError:
        raise UsageError(f"--task {cfg.task!r} is not a sequence task here; choose one of {sorted(TASKS)}") from None


def by_group(task: SequenceTask, groups: list[str], y: np.ndarray, out: np.ndarray) -> dict:
    """Every test metric (and, for classification, the calibration error) per group, largest group first."""
    groups_arr = np.asarray(groups)
    result = {}
    for g, n in sorted(zip(*np.unique(groups_arr, return_counts=True)), key=lambda gn: (-gn[1], str(gn[0]))):
        sel = np.flatnonzero(groups_arr == g)
        m = task.test_metrics(y[sel], out[sel])
        m.pop("labels", None)
        if task.classification:
            m["ece"] = task.calibration(y[sel], out[sel])["ece"]
        result[str(g)] = json.loads(json.dumps(m))
    return result
