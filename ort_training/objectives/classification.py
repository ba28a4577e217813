"""Fine-tuning objectives: a sequence classifier (single-label, multi-label, regression) and a token classifier,
each the family's Hugging Face head class, so the export loads with the matching Auto* class."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from transformers import PretrainedConfig, PreTrainedModel

from ort_training.data.hdf5 import IGNORE_INDEX
from ort_training.errors import UsageError
from ort_training.objectives.base import Objective


class SequenceClassification(Objective):
    """Fine-tuning: the family's sequence classifier ([CLS] pooled output for BERT, the config's pooling for
    ModernBERT) -> cross-entropy over `num_labels` classes (`python -m ort_training.finetune`). The labels
    (id2label / label2id) go into the config, so the export is a Hugging Face `*ForSequenceClassification`
    that names its classes.

    `init_checkpoint`: weights for the encoder from anything `weights_import.load_into` reads (Hugging Face
    folder, NVIDIA .pt, this bundle's checkpoint); the classifier starts fresh.

    `problem_type` is Hugging Face's, so the export loads with AutoModelForSequenceClassification and computes
    the same loss: single_label_classification (cross-entropy, int labels [batch]),
    multi_label_classification (sigmoid + BCE, 0/1 float labels [batch, labels]) or regression (MSE, one
    float target per text [batch]; `labels` names the target column)."""

    PROBLEM_TYPES: ClassVar[tuple[str, ...]] = ("single_label_classification", "multi_label_classification", "regression")

    name = "sequence_classification"
    inputs_keys = ("input_ids", "segment_ids", "input_mask", "labels")
    stat_names = ("correct", "count")
    curves = ()

    def __init__(self, labels: list[str] | tuple[str, ...] = ("0", "1"), init_checkpoint: str | None = None,
                 problem_type: str = "single_label_classification"):
        if problem_type not in self.PROBLEM_TYPES:
            raise ValueError(f"problem_type {problem_type!r}: choose one of {self.PROBLEM_TYPES}")
        if problem_type == "regression" and len(labels) != 1:
            raise UsageError(f"regression predicts one value, got targets {list(labels)}")
        if problem_type == "multi_label_classification" and len(labels) < 1:
            raise UsageError("multi-label classification needs at least 1 label")
        if problem_type == "single_label_classification" and len(labels) < 2:
            raise UsageError(f"sequence classification needs at least 2 classes, got {list(labels)}")
        self.labels = [str(label) for label in labels]
        self.init_checkpoint = init_checkpoint
        self.problem_type = problem_type
        self.import_report = None
        if problem_type == "regression":
            self.stat_names = ("squared_error", "count")
        elif problem_type == "multi_label_classification":
            self.stat_names = ("correct", "count")  # label decisions (at 0.5) right, out of texts x labels

    def build(self, config: PretrainedConfig) -> PreTrainedModel:
        config.num_labels = len(self.labels)
        config.id2label = dict(enumerate(self.labels))
        config.label2id = {label: i for i, label in enumerate(self.labels)}
        config.problem_type = self.problem_type
        model = super().build(config)
        if self.init_checkpoint:
            from ort_training.weights_import import load_into

            # load_into fills a pretraining model (it knows every source's naming); the classifier shares
            # its base model (and BERT's pooler). A source without a pooler keeps the fresh one (logged there).
            source = self.family.hf_class(self.family.pretraining_tasks[0])(config)
            self.import_report = load_into(source, self.init_checkpoint)
            base = self.family.weights.prefix.rstrip(".")
            target = getattr(model, self.family.classifier_base or base)
            # A token classifier's encoder has no pooler (BertForTokenClassification), T5's classifier no decoder:
            # take only what it holds.
            weights = (getattr(source, base) if base else source).state_dict()
            target.load_state_dict({k: v for k, v in weights.items() if k in target.state_dict()})
        return model

    def forward(self, model, dense_seq_output, *inputs):
        input_ids, segment_ids, input_mask, (labels,) = self._encoder_inputs(inputs)
        logits = self.family.seq_logits(model, input_ids, segment_ids, input_mask).float()
        if self.problem_type == "regression":
            error = logits.reshape(-1) - labels.reshape(-1).float()
            loss = (error * error).mean()
            return loss, torch.stack([(error * error).sum().detach(), torch.ones_like(error).sum().detach()])
        if self.problem_type == "multi_label_classification":
            targets = labels.float()
            loss = F.binary_cross_entropy_with_logits(logits, targets)
            correct = ((logits > 0).float() == targets).sum().float()
            return loss, torch.stack([correct.detach(), torch.ones_like(targets).sum().detach()])
        loss = F.cross_entropy(logits, labels.reshape(-1))
        correct = (logits.argmax(-1) == labels.reshape(-1)).sum().float()
        count = (labels >= 0).sum().float()
        return loss, torch.stack([correct.detach(), count.detach()])

    def metrics(self, sums, micro_batches):
        if self.problem_type == "regression":
            return {"train_mse": sums["squared_error"] / max(sums["count"], 1.0)}
        if self.problem_type == "multi_label_classification":
            return {"train_label_accuracy": sums["correct"] / max(sums["count"], 1.0)}
        return {"train_accuracy": sums["correct"] / max(sums["count"], 1.0)}


class TokenClassification(SequenceClassification):
    """Fine-tuning for entity tagging: the family's token classifier (a linear layer over every position's hidden
    state) -> cross-entropy over the IOB2 tags of the labelled sub-tokens (IGNORE_INDEX elsewhere; see
    data/tagged.py). The export is a Hugging Face `*ForTokenClassification` whose config names its tags, so
    `pipeline("token-classification")` reads it. Encoder initialisation as in SequenceClassification."""

    name = "token_classification"

    def build(self, config: PretrainedConfig) -> PreTrainedModel:
        model = super().build(config)
        model.config.problem_type = None  # the sequence classifier's single-label setting means nothing per token
        return model

    def forward(self, model, dense_seq_output, *inputs):
        input_ids, segment_ids, input_mask, (labels,) = self._encoder_inputs(inputs)
        logits = self.family.seq_logits(model, input_ids, segment_ids, input_mask).float()
        labels = labels.reshape(-1)
        logits = logits.reshape(labels.shape[0], -1)
        valid = labels != IGNORE_INDEX
        count = valid.sum().float()
        # Mean over the labelled sub-tokens; a micro-batch with none gives 0, not NaN.
        loss = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum") / count.clamp(min=1.0)
        correct = ((logits.argmax(-1) == labels) & valid).sum().float()
        return loss, torch.stack([correct.detach(), count.detach()])

    def metrics(self, sums, micro_batches):
        return {"train_token_accuracy": sums["correct"] / max(sums["count"], 1.0)}
