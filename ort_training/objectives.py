"""Training objectives: which Hugging Face model holds the weights (the config's architecture family
answers that, models/), which batch keys the loss reads,
the loss itself, and the metrics it reports.

The trainer, the metrics log, the plots and the evaluation follow the objective chosen by
`--objective`; a new objective is a new class registered in OBJECTIVES (torchtitan's train-spec idea),
plus data that carries its labels. The loss is computed inside the model's forward, so ORTModule
exports (and optimizes) forward, loss and gradients as one graph.

`forward` returns (loss, stats): `stats` is a 1-D tensor of the values named in `stat_names`, summed
over micro-batches and averaged over ranks by the trainer, then turned into metrics by `metrics`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F
from transformers import PretrainedConfig, PreTrainedModel

from ort_training.data.hdf5 import IGNORE_INDEX
from ort_training.models import FAMILIES, ModelFamily, family_of
from ort_training.errors import UsageError


class Objective(ABC):
    name: ClassVar[str]
    inputs_keys: ClassVar[tuple[str, ...]]
    """Batch entries forward takes, in this order (ORTModule exports positional inputs most reliably);
    `segment_ids` is left out for families without segment ids (`batch_keys`)."""
    stat_names: ClassVar[tuple[str, ...]]
    curves: ClassVar[tuple[str, ...]]
    """Metrics drawn in training_curves.png beside the loss."""
    family: ModelFamily | None = None
    """Set by `build`: the architecture family of the config."""

    @property
    def batch_keys(self) -> tuple[str, ...]:
        if self.family is not None and not self.family.token_types:
            return tuple(k for k in self.inputs_keys if k != "segment_ids")
        return self.inputs_keys

    def build(self, config: PretrainedConfig) -> PreTrainedModel:
        """The config's family's Hugging Face class for this objective (also the class of the export)."""
        self.family = family_of(config)
        return self.family.hf_class(self.name)(config)

    def inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        missing = [k for k in self.batch_keys if k not in batch]
        if missing:
            raise KeyError(f"objective {self.name!r} needs batch keys {missing}; the data holds {sorted(batch)}")
        return tuple(batch[k] for k in self.batch_keys)

    def _encoder_inputs(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, tuple]:
        """(input_ids, segment_ids or None, input_mask, the rest) of forward's positional inputs."""
        if self.family.token_types:
            input_ids, segment_ids, input_mask, *rest = inputs
        else:
            (input_ids, input_mask, *rest), segment_ids = inputs, None
        return input_ids, segment_ids, input_mask, tuple(rest)

    @abstractmethod
    def forward(self, model: PreTrainedModel, dense_seq_output: bool, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ...

    @abstractmethod
    def metrics(self, sums: dict[str, float], micro_batches: int) -> dict[str, float]:
        """Step metrics from the stats summed over `micro_batches` micro-batches (mean over ranks)."""


def masked_lm_loss(head, sequence_output, masked_lm_positions, masked_lm_labels, dense_seq_output: bool):
    """MLM cross-entropy, correct predictions and target count.

    With `dense_seq_output` the head (transform + vocab projection) runs only on the `max_pred`
    masked slots instead of every position: the vocab projection is most of a small model's cost.
    Gathering a fixed `max_pred` slots (padding included, ignored by the loss) keeps shapes static,
    which ORT and torch.compile both prefer over a data-dependent selection."""
    batch, seq, hidden = sequence_output.shape
    if dense_seq_output:
        offsets = torch.arange(batch, device=sequence_output.device).unsqueeze(1) * seq
        masked_output = sequence_output.reshape(-1, hidden).index_select(0, (masked_lm_positions + offsets).reshape(-1))
        labels = masked_lm_labels.reshape(-1)
    else:
        masked_output = sequence_output.reshape(-1, hidden)
        full = torch.full((batch, seq), IGNORE_INDEX, dtype=masked_lm_labels.dtype, device=masked_lm_labels.device)
        labels = full.scatter(1, masked_lm_positions, masked_lm_labels)
        labels[:, 0] = IGNORE_INDEX  # padding slots scatter to position 0, [CLS], which is never a target
        labels = labels.reshape(-1)
    scores = head(masked_output).float()
    loss = F.cross_entropy(scores, labels, ignore_index=IGNORE_INDEX)
    valid = labels != IGNORE_INDEX
    correct = ((scores.argmax(-1) == labels) & valid).sum().float()
    return loss, correct, valid.sum().float()


class MaskedLMWithNSP(Objective):
    """BERT's original objective: masked LM + next-sentence prediction (NVIDIA's recipe)."""

    name = "mlm_nsp"
    inputs_keys = ("input_ids", "segment_ids", "input_mask", "masked_lm_positions", "masked_lm_labels", "next_sentence_labels")
    stat_names = ("mlm_loss", "nsp_loss", "mlm_correct", "mlm_count")
    curves = ("mlm_loss", "nsp_loss")

    def build(self, config):
        family = family_of(config)
        if self.name not in family.task_classes:
            raise UsageError(f"--objective mlm_nsp needs a next-sentence head, which {family.name} has not; "
                             f"train {family.name} with --objective mlm")
        return super().build(config)

    def forward(self, model, dense_seq_output, *inputs):
        input_ids, segment_ids, input_mask, (masked_lm_positions, masked_lm_labels, next_sentence_labels) = self._encoder_inputs(inputs)
        sequence_output, pooled_output = self.family.encode(model, input_ids, segment_ids, input_mask)
        mlm_loss, correct, count = masked_lm_loss(self.family.mlm_head(model), sequence_output, masked_lm_positions, masked_lm_labels,
                                                  dense_seq_output)
        nsp_loss = F.cross_entropy(model.cls.seq_relationship(pooled_output).float(), next_sentence_labels.reshape(-1))
        return mlm_loss + nsp_loss, torch.stack([mlm_loss.detach(), nsp_loss.detach(), correct.detach(), count.detach()])

    def metrics(self, sums, micro_batches):
        return {"mlm_loss": sums["mlm_loss"] / micro_batches, "nsp_loss": sums["nsp_loss"] / micro_batches,
                "mlm_accuracy": sums["mlm_correct"] / max(sums["mlm_count"], 1.0)}


class MaskedLM(Objective):
    """Masked LM only (RoBERTa, NYUTron, ModernBERT): no NSP head, no pooler; next_sentence_labels are not read."""

    name = "mlm"
    inputs_keys = ("input_ids", "segment_ids", "input_mask", "masked_lm_positions", "masked_lm_labels")
    stat_names = ("mlm_loss", "mlm_correct", "mlm_count")
    curves = ("mlm_loss",)

    def forward(self, model, dense_seq_output, *inputs):
        input_ids, segment_ids, input_mask, (masked_lm_positions, masked_lm_labels) = self._encoder_inputs(inputs)
        sequence_output, _ = self.family.encode(model, input_ids, segment_ids, input_mask)
        mlm_loss, correct, count = masked_lm_loss(self.family.mlm_head(model), sequence_output, masked_lm_positions, masked_lm_labels,
                                                  dense_seq_output)
        return mlm_loss, torch.stack([mlm_loss.detach(), correct.detach(), count.detach()])

    def metrics(self, sums, micro_batches):
        return {"mlm_loss": sums["mlm_loss"] / micro_batches, "mlm_accuracy": sums["mlm_correct"] / max(sums["mlm_count"], 1.0)}


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
            pretraining_task = next(t for t in ("mlm_nsp", "mlm") if t in self.family.task_classes)
            source = self.family.hf_class(pretraining_task)(config)
            self.import_report = load_into(source, self.init_checkpoint)
            base = self.family.weights.prefix.rstrip(".")
            target = getattr(model, base)
            # A token classifier's encoder has no pooler (BertForTokenClassification): take only what it holds.
            target.load_state_dict({k: v for k, v in getattr(source, base).state_dict().items() if k in target.state_dict()})
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


OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (MaskedLMWithNSP, MaskedLM, SequenceClassification, TokenClassification)}
assert set(OBJECTIVES) == {task for family in FAMILIES.values() for task in family.task_classes}, "an objective per family task"


def get_objective(name: str) -> Objective:
    try:
        return OBJECTIVES[name]()
    except KeyError:
        raise UsageError(f"--objective {name!r} is not known; choose one of {sorted(OBJECTIVES)}") from None
