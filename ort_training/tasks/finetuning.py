"""The fine-tuning run every task type shares (ort_training/tasks/): its settings (`FinetuneConfig`), the model and
tokenizer it starts from, the Trainer run with early stopping on the task's validation metric (`train`), the best
weights kept and exported (`finish`), and the metrics and plots of the reports. The task types (sequence.py,
token_classification.py) build on it; the command (`python -m ort_training.finetune`) and the search (hpo.py) sit
above them, so imports point one way."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch

from bundle.atomic import atomic_path, atomic_write_text, save_figure
from bundle.digest import file_sha256
from ort_training.config import PretrainConfig, TrainingArgs, check_optimisation, setting
from ort_training.data.text import input_identity
from ort_training.loop.checkpoint import list_checkpoints, load_checkpoint
from ort_training.loop.distributed import resolve_dist_env
from ort_training.models import family_of, load_model_config, resolve_config_file
from ort_training.models.pretraining import check_vocab_fits
from ort_training.errors import UsageError

logger = logging.getLogger(__name__)

HISTORY_FILE = "validation.jsonl"
BEST_DIR = "best_model"
REPORT_FILE = "test_report.json"


@dataclass
class FinetuneConfig(TrainingArgs):
    """Settings of one fine-tuning run (flags generated from these fields); the settings it shares with pretraining are
    TrainingArgs' (config.py), redeclared here only where fine-tuning's default differs."""

    # --- task
    task: Literal["single_label", "multi_label", "regression", "token_classification"] = setting(
        "single_label", "single_label: one class per text (--label_column); multi_label: a set of labels per text (sigmoid + "
                        "BCE, per-label thresholds chosen on validation); regression: a number per text (MSE on z-scores; "
                        "ort_training/tasks/sequence.py); token_classification: entity tagging of words (CoNLL-style or JSONL "
                        "files of tokens + IOB2 tags; entity-level F1 with seqeval; ort_training/tasks/token_classification.py).")
    # --- data
    train_file: str = setting(None, "Training data: .csv / .tsv / .parquet / .jsonl with a text and a label column (token_classification: "
                               "CoNLL-style .conll/.iob/.bio/.tsv/.txt or .jsonl with --tokens_column / --tags_column).")
    validation_file: Optional[str] = setting(None, "Validation data (early stopping); default: --validation_fraction of --train_file.")
    test_file: Optional[str] = setting(None, "Test data (the final report); default: --test_fraction of --train_file (0: no test report).")
    text_column: str = setting("text", "Column holding the text.", aliases=("--text-column",))
    label_column: str = setting("label", "Column holding the class label (strings or integers); --task multi_label: a column of label "
                                    "lists (JSON list or --label_separator) or several 0/1 columns a,b,c; --task regression: a number.",
                           aliases=("--label-column",))
    label_separator: str = setting("|", "--task multi_label: separator of a label list written as a string (a|b); a JSON list is read as one.")
    group_column: Optional[str] = setting(None, "Column of a subgroup (site, age band, journal ...): every test metric per group in test_report.json.")
    temperature_scaling: bool = setting(False, "Classification: fit a temperature on the validation set and fold it into the exported classifier.")
    tokens_column: str = setting("tokens", "token_classification, JSONL: column holding the list of words.")
    tags_column: str = setting("tags", "token_classification, JSONL: column holding the list of IOB2 tags (one per word).")
    label_all_subtokens: bool = setting(False, "token_classification: train on every sub-token of a word (B- turned into I- after the "
                                          "first), not only the first; predictions read the first sub-token either way.")
    validation_fraction: float = setting(0.1, "Fraction of --train_file held out for validation when --validation_file is not given.")
    test_fraction: float = setting(0.1, "Fraction of --train_file held out for the test report when --test_file is not given.")
    split_seed: int = setting(12345, "Seed of the stratified split of --train_file.")
    max_seq_length: int = setting(128, "Tokens per sequence ([CLS] and [SEP] included).")
    long_text: Optional[Literal["truncate", "window"]] = setting(None, "Texts longer than --max_seq_length: truncate (keep the start) or "
                                                                  "window (overlapping windows; predictions averaged per document, or "
                                                                  "per word read from its most central window). Default: window for "
                                                                  "token_classification, else truncate.")
    stride: Optional[int] = setting(None, "With --long_text window: tokens shared by consecutive windows. Default: "
                                     "min(32, (--max_seq_length - 2) // 2), so every --max_seq_length has a valid default.")
    # --- model
    do_lower_case: Optional[bool] = setting(None, "Lower-case text with --vocab_file (default: true).")
    # --- optimisation (the pretraining trainer's optimizer and poly schedule; see --weight_decay)
    output_dir: str = setting("finetune_output", "Checkpoints, metrics, best model, hf_model/, test report and plots.")
    train_batch_size: int = setting(32, "Sequences per rank per optimizer step.")
    warmup_proportion: float = setting(0.1, "Fraction of the steps spent in linear warm-up.")
    max_steps: Optional[int] = setting(None, "Optimizer steps (default: --num_train_epochs epochs of the training data).")
    num_train_epochs: float = setting(3.0, "Epochs, when --max_steps is not given.")
    weight_decay: float = setting(0.0, "Decoupled weight decay. The trainer's optimizer is LAMB, which (as apex's FusedLAMB) applies "
                                  "its layer-wise trust ratio only with weight decay: at 0 each step is an Adam step (after global "
                                  "gradient clipping), the usual fine-tuning optimizer; > 0 gives LAMB, whose steps are relative to "
                                  "each layer's weight norm (lr ~1e-3 for a pretrained model).")
    # --- evaluation / early stopping
    eval_steps: int = setting(50, "Evaluate macro-F1 on the validation set every N optimizer steps (and at the last step).")
    patience: int = setting(3, "Stop after this many evaluations without a better validation macro-F1 (0: never stop early).")
    min_delta: float = setting(0.0, "An improvement must exceed this much of the early-stopping metric.")
    early_stopping_metric: Optional[Literal["macro_f1", "auroc", "auprc", "loss"]] = setting(
        None, "--task single_label: the validation figure that picks best_model/ and stops early: macro_f1 (the default), auroc, "
              "auprc (average precision; one-vs-rest macro with more than 2 classes: the figure for rare positives) or loss "
              "(cross-entropy, unweighted, minimised). Other tasks follow their own (multi_label micro-F1, regression RMSE).")
    class_weights: Optional[str] = setting(
        None, "--task single_label: weight each class in the training loss: 'balanced' (documents / (classes x the class's "
              "documents), from the training labels) or one weight per class in label order (sorted; numerically for integer "
              "labels), comma-separated, e.g. 1,20. Validation figures stay unweighted.")
    pos_weight: Optional[float] = setting(
        None, "--task single_label with two classes: the loss weight of the positive class (the second label in order: 1 of 0/1, "
              "'yes' of no/yes), the other class weighing 1; the same as --class_weights 1,W.")
    eval_batch_size: int = setting(64, "Sequences per evaluation batch.")
    # --- device, backend / precision / checkpoints (as in pretraining)
    device: Literal["auto", "cpu", "cuda"] = setting(
        "auto", "auto: a GPU where torch sees one (cuda:LOCAL_RANK under torchrun), else the CPU; cuda: refused where there "
                "is none; cpu: the CPU even on a GPU machine. Several GPUs: torchrun --nproc_per_node N -m ort_training.finetune "
                "(DDP; --train_batch_size per GPU).")
    keep_checkpoints: int = setting(2, "Keep only the newest K checkpoints.")
    log_freq: int = setting(10, "Log training metrics every N optimizer steps.")

    def __post_init__(self) -> None:
        if not self.train_file:
            raise ValueError("--train_file is required")
        if self.task == "token_classification":
            for flag in ("temperature_scaling", "group_column"):
                if getattr(self, flag):
                    raise ValueError(f"--{flag} applies to the text-level tasks (single_label, multi_label, regression), "
                                     "not --task token_classification")
        if self.task == "regression" and self.temperature_scaling:
            raise ValueError("--temperature_scaling calibrates class probabilities; --task regression has none")
        if self.hpo_trials < 0:
            raise ValueError(f"--hpo_trials must be >= 0, got {self.hpo_trials}")
        if self.hpo_space and not self.hpo_trials:
            raise ValueError("--hpo_space without --hpo_trials N: say how many trials to run")
        if self.hpo_space and not Path(self.hpo_space).is_file():
            raise ValueError(f"--hpo_space {self.hpo_space}: no such file")
        check_optimisation(self)  # batch, accumulation, learning rate: the trainer's checks (config.py)
        if self.long_text is None:
            self.long_text = "window" if self.task == "token_classification" else "truncate"
        for name in ("max_seq_length", "eval_steps", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.max_seq_length < 8:
            raise ValueError(f"--max_seq_length must be >= 8, got {self.max_seq_length}")
        if self.patience < 0:
            raise ValueError(f"--patience must be >= 0, got {self.patience}")
        check_loss_and_selection(self)  # --early_stopping_metric, --class_weights, --pos_weight
        for name in ("validation_fraction", "test_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"--{name} must be in [0, 1), got {getattr(self, name)}")
        if not self.validation_file and self.validation_fraction <= 0:
            raise ValueError("no validation data: pass --validation_file or a --validation_fraction > 0 (early stopping needs it)")
        if self.stride is None:  # a default never refuses a valid --max_seq_length (32 would with 32)
            self.stride = default_stride(self.max_seq_length)
        if self.long_text == "window" and not 0 <= self.stride < self.max_seq_length - 2:
            raise ValueError(f"--stride {self.stride} must be >= 0 and < --max_seq_length - 2 ({self.max_seq_length - 2})")
        if not self.init_checkpoint and not self.config_file:
            raise ValueError("random initialisation (no --init_checkpoint) needs --config_file (e.g. tiny, base)")
        if not self.init_checkpoint and not self.vocab_file:
            raise ValueError("random initialisation (no --init_checkpoint) needs --vocab_file for the tokenizer")
        if self.config_file:
            resolve_config_file(self.config_file)
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"--max_steps must be >= 1, got {self.max_steps}")
        if not (math.isfinite(self.num_train_epochs) and self.num_train_epochs > 0):
            raise ValueError(f"--num_train_epochs must be > 0 and finite, got {self.num_train_epochs}")
        if self.hpo_trials:
            from ort_training.tasks.hpo import load_space

            # the space's values and every corner of it against these flags: refused here, before OUTPUT_DIR is made
            load_space(self.hpo_space, self.max_steps, cfg=self)


def default_stride(max_seq_length: int) -> int:
    """--stride's default: 32 tokens shared by consecutive windows, at most half of a window's text tokens."""
    return max(0, min(32, (max_seq_length - 2) // 2))


def parse_class_weights(value: str | None) -> str | list[float] | None:
    """--class_weights: None, 'balanced', or the list of per-class weights (each finite and > 0)."""
    if value is None or value.strip() == "balanced":
        return value and "balanced"
    try:
        weights = [float(w) for w in value.split(",")]
    except ValueError:
        raise ValueError(f"--class_weights {value!r}: give 'balanced' or one number per class, comma-separated (e.g. 1,20)") from None
    if len(weights) < 2 or not all(math.isfinite(w) and w > 0 for w in weights):
        raise ValueError(f"--class_weights {value!r}: give one weight > 0 per class (at least two), e.g. 1,20")
    return weights


def check_loss_and_selection(cfg: FinetuneConfig) -> None:
    """The single-label options for imbalanced (clinical) labels, checked with the other flags."""
    given = [f"--{name}" for name in ("early_stopping_metric", "class_weights", "pos_weight") if getattr(cfg, name) is not None]
    if given and cfg.task != "single_label":
        raise ValueError(f"{', '.join(given)}: apply to --task single_label; --task {cfg.task} follows its own metric and loss")
    parse_class_weights(cfg.class_weights)
    if cfg.pos_weight is not None:
        if cfg.class_weights is not None:
            raise ValueError("--pos_weight and --class_weights both weight the classes: give one (--pos_weight W = --class_weights 1,W)")
        if not (math.isfinite(cfg.pos_weight) and cfg.pos_weight > 0):
            raise ValueError(f"--pos_weight must be > 0, got {cfg.pos_weight}")


# ----------------------------------------------------------------------------- metrics
def classification_metrics(y_true: np.ndarray, probs: np.ndarray, labels: list[str]) -> dict:
    """scikit-learn's accuracy, macro-F1 (over the classes in y_true or the predictions), AUROC and AUPRC (average
    precision) (binary: of the second class; multi-class: one-vs-rest macro over the classes present in y_true),
    per-class precision/recall/F1/support/prevalence/AUPRC and the confusion matrix (rows: true, columns: predicted)."""
    from sklearn import metrics as skm

    k = len(labels)
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = probs.argmax(1)
    present = [c for c in range(k) if 0 < (y_true == c).sum() < len(y_true)]
    auroc = None
    if k == 2 and len(present) == 2:
        auroc = float(skm.roc_auc_score(y_true, probs[:, 1]))
    elif k > 2 and present:
        # Classes absent from the test labels have no ROC curve: average over the present ones.
        auroc = float(np.mean([skm.roc_auc_score(y_true == c, probs[:, c]) for c in present]))
    # AUPRC (average precision, sklearn's step-wise area): the figure for a rare positive class, whose baseline is its
    # prevalence (AUROC's is 0.5 however rare the class is). Binary: of the second class; more: one-vs-rest, macro.
    ap = {c: float(skm.average_precision_score(y_true == c, probs[:, c])) for c in present}
    auprc = (ap.get(1) if k == 2 else float(np.mean(list(ap.values())))) if (len(present) == 2 if k == 2 else present) else None
    precision, recall, f1, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=list(range(k)), zero_division=0)
    return {
        "documents": int(len(y_true)),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "macro_f1": float(skm.f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "auroc_ovr": auroc,
        "auprc_ovr": auprc,
        "auroc_note": (None if len(present) == k else
                       f"classes absent from the true labels left out of the AUROC and AUPRC: {[labels[c] for c in range(k) if c not in present]}"),
        "per_class": {labels[c]: {"precision": float(precision[c]), "recall": float(recall[c]), "f1": float(f1[c]),
                                  "support": int(support[c]), "prevalence": float(support[c] / max(len(y_true), 1)),
                                  "auprc": ap.get(c)} for c in range(k)},
        "labels": list(labels),
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=list(range(k))).tolist(),
    }


def plot_confusion_matrix(cm: list[list[int]], labels: list[str], path: Path, title: str) -> Path:
    """Counts in each cell, colour by the share of the true class (row), so small classes stay readable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    k = len(labels)
    size = max(4.0, 0.9 * k + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{cm[i, j]}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(k), labels, rotation=45, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    return save_figure(fig, path)


@torch.no_grad()
def window_logits(model, split, batch_size: int, device: torch.device, starts=None) -> torch.Tensor:
    """Logits of every window ([windows, num_labels], fp32, CPU), or of the batches beginning at `starts` (windows
    start .. start + batch_size each). `model` is the plain Hugging Face classifier (or an inference engine's
    stand-in); run in eval mode."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in (range(0, len(split), batch_size) if starts is None else starts):
            b = split.batch(slice(start, start + batch_size))
            width = int(b["input_mask"].sum(1).max())  # padding past the longest is masked anyway: skip it
            logits = family_of(model.config).seq_logits(model, b["input_ids"][:, :width].to(device), b["segment_ids"][:, :width].to(device),
                                                        b["input_mask"][:, :width].to(device))
            out.append(logits.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, model.config.num_labels)


def activate(logits: torch.Tensor, problem_type: str | None) -> torch.Tensor:
    """What the model's logits mean: softmax (single-label), sigmoid per label (multi-label), the value (regression)."""
    if problem_type == "multi_label_classification":
        return torch.sigmoid(logits)
    if problem_type == "regression":
        return logits
    return torch.softmax(logits, -1)


def doc_average(values: torch.Tensor, doc_index: torch.Tensor, num_docs: int) -> torch.Tensor:
    """Mean over each document's windows."""
    sums = torch.zeros(num_docs, values.shape[1], dtype=torch.float64).index_add_(0, doc_index, values.double())
    return sums / torch.bincount(doc_index, minlength=num_docs).clamp(min=1).double()[:, None]


def predict(model, split, batch_size: int, device: torch.device) -> np.ndarray:
    """Per document ([documents, num_labels]): class probabilities (softmax; sigmoid per label for a multi-label
    model) or the predicted value (regression) of every window, averaged over a document's windows."""
    probs = activate(window_logits(model, split, batch_size, device), getattr(model.config, "problem_type", None))
    return doc_average(probs, split.doc_index, split.num_docs).numpy()


def predict_across_ranks(model, split, batch_size: int, device: torch.device) -> np.ndarray:
    """`predict` computed once over the ranks of a process group: batch b of the split goes to rank b % WORLD_SIZE and
    every rank gets all the logits back (all_gather), so each rank holds the same figures with 1/WORLD_SIZE of the
    work, and they are the numbers one process gives (the same batches, the same weights). Without a group: `predict`."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return predict(model, split, batch_size, device)
    rank, world = dist.get_rank(), dist.get_world_size()
    starts = list(range(0, len(split), batch_size))
    mine = starts[rank::world]
    parts = [None] * world
    dist.all_gather_object(parts, window_logits(model, split, batch_size, device, mine))
    # rank r computed batches r, r + world, ...: put them back in order
    by_start = {}
    for r, logits in enumerate(parts):
        sizes = [min(batch_size, len(split) - start) for start in starts[r::world]]
        for start, chunk in zip(starts[r::world], torch.split(logits, sizes)):
            by_start[start] = chunk
    logits = torch.cat([by_start[start] for start in starts])
    probs = activate(logits, getattr(model.config, "problem_type", None))
    return doc_average(probs, split.doc_index, split.num_docs).numpy()


def resolve_device(cfg: FinetuneConfig, environ=None) -> str:
    """--device against this machine: 'cuda' where asked for (refused in one line where torch sees no GPU, or fewer
    GPUs than LOCAL_RANK needs), 'cpu' (GPUs hidden from this process), or what auto finds. The trainer then picks
    cuda:LOCAL_RANK when torch sees a GPU, else the CPU (loop/distributed.py)."""
    environ = os.environ if environ is None else environ
    if cfg.device == "cpu":
        # The trainer takes a GPU whenever torch sees one: hide them from this process, before CUDA is initialised.
        environ["CUDA_VISIBLE_DEVICES"] = ""
        if torch.cuda.is_initialized():
            raise UsageError("--device cpu: CUDA was initialised in this process before the flag was read; set "
                             "CUDA_VISIBLE_DEVICES= in the environment instead")
        return "cpu"
    available = torch.cuda.is_available()
    if cfg.device == "cuda":
        if not available:
            raise UsageError("--device cuda: torch.cuda.is_available() is false here (no GPU, no driver, or a CPU-only torch "
                             f"{torch.__version__}); use --device cpu or auto, or run on a GPU machine")
        local = resolve_dist_env(environ).local_rank
        if local >= torch.cuda.device_count():
            raise UsageError(f"--device cuda: LOCAL_RANK {local} but this machine shows {torch.cuda.device_count()} GPU(s); "
                             "start at most one rank per GPU (torchrun --nproc_per_node)")
    return "cuda" if available else "cpu"


# ----------------------------------------------------------------------------- model, tokenizer, data
def resolve_model_source(cfg: FinetuneConfig) -> tuple[str, Optional[str]]:
    """(config file for the trainer, init format) from --config_file / --init_checkpoint."""
    if not cfg.init_checkpoint:
        return resolve_config_file(cfg.config_file), None
    from ort_training.weights_import import detect_format, hf_config_path

    fmt = detect_format(cfg.init_checkpoint)
    if cfg.config_file:
        return resolve_config_file(cfg.config_file), fmt
    if fmt == "hf":
        return str(hf_config_path(cfg.init_checkpoint)), fmt
    if fmt == "bundle":  # the checkpoint carries its model config ("bert_config" before the model seam)
        ckpt = load_checkpoint(cfg.init_checkpoint)
        saved = dict(ckpt.get("model_config") or ckpt["bert_config"])
        saved["vocab_size"] = saved.pop("original_vocab_size", saved["vocab_size"])
        for key in ("architectures", "id2label", "label2id", "num_labels", "problem_type", "_name_or_path"):
            saved.pop(key, None)
        path = Path(cfg.output_dir) / "init_model_config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(saved, indent=2) + "\n")
        return str(path), fmt
    raise UsageError(f"--init_checkpoint {cfg.init_checkpoint} is an NVIDIA checkpoint without a config: pass --config_file "
                     "(its bert_config.json)")


def load_tokenizer(cfg: FinetuneConfig):
    """--vocab_file (a vocab.txt, tokenizer.json or tokenizer folder), else the --init_checkpoint folder's."""
    from ort_training.export import load_tokenizer as load_source

    if cfg.vocab_file:
        if not Path(cfg.vocab_file).exists():
            raise UsageError(f"--vocab_file {cfg.vocab_file}: no such file or folder")
        return load_source(cfg.vocab_file, True if cfg.do_lower_case is None else cfg.do_lower_case)
    folder = Path(cfg.init_checkpoint)
    folder = folder if folder.is_dir() else folder.parent
    if not any((folder / f).is_file() for f in ("vocab.txt", "tokenizer.json")):
        raise UsageError(f"--init_checkpoint {cfg.init_checkpoint}: no tokenizer there (vocab.txt / tokenizer.json); pass --vocab_file")
    tok = load_source(folder)
    if cfg.do_lower_case is not None and hasattr(tok, "do_lower_case") and tok.do_lower_case != cfg.do_lower_case:
        logger.warning("--do_lower_case %s ignored: the tokenizer of %s has do_lower_case=%s", cfg.do_lower_case, folder, tok.do_lower_case)
    return tok


def held_out_fractions(cfg: FinetuneConfig) -> dict[str, float]:
    """The splits taken from --train_file: validation unless --validation_file is given, test unless --test_file is
    given or --test_fraction is 0; each task's loader splits by these."""
    return {**({"validation": cfg.validation_fraction} if not cfg.validation_file else {}),
            **({"test": cfg.test_fraction} if not cfg.test_file and cfg.test_fraction > 0 else {})}


def tokenizer_source_digest(cfg: FinetuneConfig) -> str:
    """sha256 (16 hex) of the tokenizer's files: --vocab_file (a file, or a folder's tokenizer files), else the
    --init_checkpoint folder's. Another vocabulary gives other token ids, so it is part of a run's identity."""
    from ort_training.inference import tokenizer_digest

    source = Path(cfg.vocab_file or cfg.init_checkpoint)
    folder = source if source.is_dir() else (source.parent if not cfg.vocab_file else None)
    if folder is None:
        return file_sha256(source)[:16]
    return tokenizer_digest(folder)[:16]


def training_identity(cfg: FinetuneConfig) -> dict:
    """The task, the sha256 of every input file (training, validation, test: another validation file would mix
    validation sets and keep a best step chosen on the old one), the tokenizer's files, and the settings that pick
    the rows and cut the texts: checkpoints record it, and a resume on another file (even one of the same length),
    another tokenizer or as another task is refused naming both."""
    split = {"split_seed": cfg.split_seed, **({"validation_fraction": cfg.validation_fraction} if not cfg.validation_file else {}),
             **({"test_fraction": cfg.test_fraction} if not cfg.test_file else {})}
    inputs = {f"{name}_sha256": file_sha256(getattr(cfg, name))[:16] for name in ("validation_file", "test_file")
              if getattr(cfg, name)}
    inputs["tokenizer_sha256"] = tokenizer_source_digest(cfg)
    return input_identity(cfg.train_file, **inputs, task=cfg.task, text_column=cfg.text_column, label_column=cfg.label_column,
                          max_seq_length=cfg.max_seq_length, long_text=cfg.long_text, **({"stride": cfg.stride} if cfg.long_text == "window" else {}),
                          **({"label_separator": cfg.label_separator} if cfg.task == "multi_label" else {}), **split)


# ----------------------------------------------------------------------------- validation and early stopping
class EarlyStopping:
    """Trainer hook: validation every --eval_steps steps (`evaluate`: the task's figures); best weights to
    OUTPUT_DIR/best_model; stop after --patience evaluations without improvement of `metric` (in the direction
    `higher_is_better` gives). Its record (validation.jsonl) is cut back to the resumed step on resume, and the
    evaluations after it are redone (the resumed run is bitwise the same), so the best step and the patience
    count are those of an uninterrupted run. `on_evaluation(step, value)` (the hyperparameter search's pruner)
    may answer True: the run stops there, marked pruned."""

    metric: str
    """The validation figure that picks the best step; `evaluate` returns it."""
    higher_is_better: bool = True

    def __init__(self, cfg: FinetuneConfig, split, is_main: bool, device: torch.device, resumed_step: int | None, on_evaluation=None):
        self.cfg, self.split, self.is_main, self.device = cfg, split, is_main, device
        self.on_evaluation = on_evaluation
        self.pruned = False
        self.out = Path(cfg.output_dir)
        self.path = self.out / HISTORY_FILE
        self.history: list[dict] = []
        if resumed_step is not None and self.path.is_file():
            self.history = [r for r in map(json.loads, self.path.read_text().splitlines()) if r["step"] <= resumed_step]
        if is_main:
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.history))
        self.best: dict | None = None
        self.bad = 0
        for r in self.history:
            self._update(r)

    def _update(self, record: dict) -> bool:
        value, best, delta = record[self.metric], self.best and self.best[self.metric], self.cfg.min_delta
        improved = self.best is None or (value > best + delta if self.higher_is_better else value < best - delta)
        if improved:
            self.best, self.bad = record, 0
        else:
            self.bad += 1
        return improved

    @property
    def exhausted(self) -> bool:
        return self.cfg.patience > 0 and self.bad >= self.cfg.patience

    def evaluate(self, hf_model) -> dict:
        """One validation pass: a record holding `metric` and `loss`."""
        raise NotImplementedError

    def __call__(self, trainer, record: dict) -> None:
        step = trainer.global_step
        if step % self.cfg.eval_steps and step != trainer.cfg.max_steps:
            return
        rec = {"step": step, **self.evaluate(trainer.model.hf_model)}
        improved = self._update(rec)
        self.history.append(rec)
        if self.is_main:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            if improved:
                save_best(trainer.model.hf_model, self.out / BEST_DIR, rec)
        logger.info("step %d validation: %s%s", step, " ".join(f"{k} {v:.4f}" for k, v in rec.items() if isinstance(v, float)),
                    " (best)" if improved else f" (best {self.metric} {self.best[self.metric]:.4f} at step {self.best['step']}; "
                                               f"{self.bad}/{self.cfg.patience or 'inf'} without improvement)")
        if self.exhausted:
            logger.info("early stopping at step %d: no better validation %s in %d evaluations", step, self.metric, self.bad)
            trainer.finished_early = True
        if self.on_evaluation is not None and self.on_evaluation(step, rec[self.metric]):
            logger.info("pruned at step %d (validation %s %.4f)", step, self.metric, rec[self.metric])
            self.pruned = trainer.finished_early = True


class SequenceEarlyStopping(EarlyStopping):
    """EarlyStopping on a text-level task's validation metric and direction (tasks/sequence.py: macro-F1 or micro-F1
    maximised, RMSE minimised); `y`: the validation split's truth as the task's metrics read it."""

    def __init__(self, cfg: FinetuneConfig, split, is_main: bool, device: torch.device, resumed_step: int | None, task, y,
                 on_evaluation=None):
        self.task, self.y = task, y
        self.metric, self.higher_is_better = task.metric, task.higher_is_better
        super().__init__(cfg, split, is_main, device, resumed_step, on_evaluation)

    def evaluate(self, hf_model) -> dict:
        probs = predict_across_ranks(hf_model, self.split, self.cfg.eval_batch_size, self.device)
        return self.task.validation(self.y, self.task.outputs(probs))


def validation_metric(cfg: FinetuneConfig) -> tuple[str, bool]:
    """(metric, higher_is_better): what early stopping (and the hyperparameter search) follows for --task."""
    if cfg.task == "token_classification":
        from ort_training.tasks.token_classification import EntityEarlyStopping

        return EntityEarlyStopping.metric, EntityEarlyStopping.higher_is_better
    from ort_training.tasks.sequence import get_task

    task = get_task(cfg)
    return task.metric, task.higher_is_better


def save_best(hf_model, folder: Path, record: dict) -> None:
    """The best weights so far (the state dict of the classifier) and the record that made them best."""
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "model.pt") as tmp:
        torch.save(hf_model.state_dict(), tmp)
    atomic_write_text(folder / "best.json", json.dumps(record) + "\n")


def load_best(out: Path, trainer, stopper) -> dict:
    """Put the best validation step's weights (OUTPUT_DIR/best_model) into the trainer's model; its record."""
    best_file = out / BEST_DIR / "model.pt"
    best = json.loads((out / BEST_DIR / "best.json").read_text()) if best_file.is_file() else None
    if stopper.best is None or best is None or best["step"] != stopper.best["step"]:
        raise UsageError(f"{out / BEST_DIR}: holds step {best and best['step']}, but the validation record's best is step "
                           f"{stopper.best and stopper.best['step']}; the folder was changed by another run. Start in a new --output_dir")
    trainer.model.hf_model.load_state_dict(torch.load(best_file, map_location="cpu", weights_only=True))
    return best


def export_best(trainer, tokenizer, out_dir: Path) -> Path:
    """hf_model/: the objective's class of the family (*ForSequenceClassification, *ForTokenClassification; vocab rows
    trimmed to the tokenizer) + the tokenizer."""
    import copy

    from ort_training.export import export_hf

    if not trainer.model.family.token_types:
        # A pipeline passes every input the tokenizer names; ModernBERT's forward (transformers 4.x) refuses token_type_ids.
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.model_input_names = tokenizer.init_kwargs["model_input_names"] = ["input_ids", "attention_mask"]
    return export_hf(trainer.model, out_dir, tokenizer=tokenizer)


def write_predictions(path: Path, table, probs: np.ndarray, labels: list[str]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["row", "label", "predicted", *[f"p_{lab}" for lab in labels]])
            for i, (lab, p) in enumerate(zip(table.labels, probs)):
                w.writerow([i, lab, labels[int(p.argmax())], *[f"{x:.5f}" for x in p]])


# ----------------------------------------------------------------------------- the run
def model_and_tokenizer(cfg: FinetuneConfig) -> tuple[str, object]:
    """(config file for the trainer, tokenizer), checked against each other and --max_seq_length."""
    config_file, fmt = resolve_model_source(cfg)
    tokenizer = load_tokenizer(cfg)
    model_config = load_model_config(config_file)
    check_vocab_fits(len(tokenizer), "the tokenizer", model_config, config_file)
    family_of(model_config).check_sequence_length(model_config, cfg.max_seq_length, f"--max_seq_length {cfg.max_seq_length}", config_file)
    return config_file, tokenizer


def micro_batch_size(cfg: FinetuneConfig) -> int:
    return cfg.train_batch_size // cfg.gradient_accumulation_steps  # divisible: FinetuneConfig checked it (check_optimisation)


def train(cfg: FinetuneConfig, config_file: str, loader, make_objective, make_stopper, run_info: dict):
    """The Trainer run every task shares: steps (--max_steps, or epochs of `loader`), the objective
    (`make_objective(init_checkpoint)`; None when resuming), the early-stopping hook (`make_stopper(is_main,
    device, resumed_step)`), finetune_config.json (the settings plus `run_info`). Returns (trainer, stopper, summary)."""
    from ort_training.loop.trainer import Trainer

    out = Path(cfg.output_dir)
    max_steps = cfg.max_steps or max(1, math.ceil(cfg.num_train_epochs * loader.batches_per_epoch / cfg.gradient_accumulation_steps))
    resuming = cfg.resume_from_checkpoint and bool(list_checkpoints(out))
    objective = make_objective(None if resuming else cfg.init_checkpoint)
    # The shared settings as they are; what the fine-tuning run does itself (weights, tokenizer, export, search) off.
    pcfg = PretrainConfig(**{**cfg.shared(), "config_file": config_file, "init_checkpoint": None, "vocab_file": None,
                             "hpo_trials": 0, "hpo_space": None},
                          objective=objective.name, max_steps=max_steps, skip_hf_export=True, prefetch=False)
    trainer = Trainer(pcfg, objective=objective, loader=loader)
    try:
        if trainer.is_main:
            atomic_write_text(out / "finetune_config.json", json.dumps({**asdict(cfg), "max_steps": max_steps, **run_info}, indent=2) + "\n")
        stopper = make_stopper(trainer.is_main, trainer.device, trainer.global_step if resuming else None)
        trainer.hooks.append(stopper)
        if stopper.exhausted:
            logger.info("this run already stopped early at step %d (best step %d)", trainer.global_step, stopper.best["step"])
            summary = {"global_step": trainer.global_step, "already_finished": True}
        else:
            summary = trainer.train()
    finally:
        trainer.close()
    if not summary.get("preempted"):
        summary.update(finished_early=stopper.exhausted, max_steps=max_steps, pruned=stopper.pruned,
                       best_validation=stopper.best and stopper.best[stopper.metric])
    return trainer, stopper, summary


def finish(cfg, trainer, tokenizer, task, tables, splits, stopper, summary) -> dict:
    """Best weights (calibrated with --temperature_scaling; thresholds / target scale from the task) -> hf_model/,
    test report with calibration and subgroups, the task's plots, predictions."""
    from ort_training.tasks import calibration
    from ort_training.tasks.sequence import by_group

    out = Path(cfg.output_dir)
    best = load_best(out, trainer, stopper)
    model = trainer.model.hf_model
    multi = task.problem_type == "multi_label_classification"
    val_split, y_val = splits["validation"], stopper.y
    learnt: dict = {}
    if cfg.temperature_scaling:
        logits = window_logits(model, val_split, cfg.eval_batch_size, trainer.device)
        before = task.validation(y_val, predict(model, val_split, cfg.eval_batch_size, trainer.device))["loss"]
        learnt["temperature"] = calibration.fit_temperature(logits, val_split.doc_index, y_val, multi)
        calibration.fold_temperature(model, learnt["temperature"])
        learnt["validation_loss_before_after"] = [before]
    out_val = task.outputs(predict(model, val_split, cfg.eval_batch_size, trainer.device))
    if cfg.temperature_scaling:
        learnt["validation_loss_before_after"].append(task.validation(y_val, out_val)["loss"])
    learnt.update(task.finalize(model, y_val, out_val))
    export_best(trainer, tokenizer, out / "hf_model")
    result = {**summary, "task": task.name, "best_step": best["step"], "metric": task.metric,
              "direction": "maximize" if task.higher_is_better else "minimize",
              "validation": {k: v for k, v in best.items() if k != "step"}, "labels": task.labels, "hf_model": str(out / "hf_model")}
    if "test" in splits:
        split, table = splits["test"], tables["test"]
        y = task.truth(table)
        outputs = task.outputs(predict(model, split, cfg.eval_batch_size, trainer.device))
        metrics = task.test_metrics(y, outputs)
        report = {"task": task.name, "file": split.path, "text_column": cfg.text_column, "label_column": cfg.label_column,
                  "long_text": cfg.long_text, "max_seq_length": cfg.max_seq_length, "sequences": len(split),
                  "init_checkpoint": cfg.init_checkpoint, "best_step": best["step"], **learnt, **metrics}
        if task.classification:
            rel = task.calibration(y, outputs)
            report["calibration"] = {"ece": rel["ece"], "mce": rel["mce"], "bins": rel["bins"],
                                     "of": "every (text, label) probability" if multi else "the top class's probability",
                                     "temperature_scaled": bool(cfg.temperature_scaling)}
            calibration.plot_reliability(rel, out / "reliability.png", f"{Path(split.path).name}: {report['documents']} documents"
                                         + (f", temperature {learnt['temperature']:.3f}" if "temperature" in learnt else ""),
                                         "share of labels that apply" if multi else "accuracy")
        if table.groups is not None:
            report["group_column"] = cfg.group_column
            report["groups"] = by_group(task, table.groups, y, outputs)
        atomic_write_text(out / REPORT_FILE, json.dumps(report, indent=2) + "\n")
        task.write_outputs(out, table, y, outputs, report, Path(split.path).name)
        result["test"] = {**task.summary(report), "documents": report["documents"]}
        if task.classification:
            result["test"]["ece"] = report["calibration"]["ece"]
        result["test_report"] = str(out / REPORT_FILE)
    atomic_write_text(out / "finetune_summary.json", json.dumps(result, indent=2) + "\n")
    return result


# ----------------------------------------------------------------------------- the output folder
