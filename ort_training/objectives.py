"""Training objectives: which Hugging Face model holds the weights, which batch keys the loss reads,
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
from transformers import BertConfig, BertForMaskedLM, BertForPreTraining, BertForSequenceClassification, PreTrainedModel

from .data import IGNORE_INDEX


class Objective(ABC):
    name: ClassVar[str]
    hf_class: ClassVar[type[PreTrainedModel]]
    """The Hugging Face class that holds the weights; also the class of the export."""
    batch_keys: ClassVar[tuple[str, ...]]
    """Batch entries forward takes, in this order (ORTModule exports positional inputs most reliably)."""
    stat_names: ClassVar[tuple[str, ...]]
    curves: ClassVar[tuple[str, ...]]
    """Metrics drawn in training_curves.png beside the loss."""

    def build(self, config: BertConfig) -> PreTrainedModel:
        return self.hf_class(config)

    def inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        missing = [k for k in self.batch_keys if k not in batch]
        if missing:
            raise KeyError(f"objective {self.name!r} needs batch keys {missing}; the data holds {sorted(batch)}")
        return tuple(batch[k] for k in self.batch_keys)

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
    hf_class = BertForPreTraining
    batch_keys = ("input_ids", "segment_ids", "input_mask", "masked_lm_positions", "masked_lm_labels", "next_sentence_labels")
    stat_names = ("mlm_loss", "nsp_loss", "mlm_correct", "mlm_count")
    curves = ("mlm_loss", "nsp_loss")

    def forward(self, model, dense_seq_output, input_ids, segment_ids, input_mask, masked_lm_positions, masked_lm_labels,
                next_sentence_labels):
        sequence_output, pooled_output = model.bert(input_ids=input_ids, token_type_ids=segment_ids, attention_mask=input_mask,
                                                    return_dict=False)[:2]
        mlm_loss, correct, count = masked_lm_loss(model.cls.predictions, sequence_output, masked_lm_positions, masked_lm_labels,
                                                  dense_seq_output)
        nsp_loss = F.cross_entropy(model.cls.seq_relationship(pooled_output).float(), next_sentence_labels.reshape(-1))
        return mlm_loss + nsp_loss, torch.stack([mlm_loss.detach(), nsp_loss.detach(), correct.detach(), count.detach()])

    def metrics(self, sums, micro_batches):
        return {"mlm_loss": sums["mlm_loss"] / micro_batches, "nsp_loss": sums["nsp_loss"] / micro_batches,
                "mlm_accuracy": sums["mlm_correct"] / max(sums["mlm_count"], 1.0)}


class MaskedLM(Objective):
    """Masked LM only (RoBERTa, NYUTron): no NSP head, no pooler; next_sentence_labels are not read."""

    name = "mlm"
    hf_class = BertForMaskedLM
    batch_keys = ("input_ids", "segment_ids", "input_mask", "masked_lm_positions", "masked_lm_labels")
    stat_names = ("mlm_loss", "mlm_correct", "mlm_count")
    curves = ("mlm_loss",)

    def forward(self, model, dense_seq_output, input_ids, segment_ids, input_mask, masked_lm_positions, masked_lm_labels):
        sequence_output = model.bert(input_ids=input_ids, token_type_ids=segment_ids, attention_mask=input_mask,
                                     return_dict=False)[0]
        mlm_loss, correct, count = masked_lm_loss(model.cls.predictions, sequence_output, masked_lm_positions, masked_lm_labels,
                                                  dense_seq_output)
        return mlm_loss, torch.stack([mlm_loss.detach(), correct.detach(), count.detach()])

    def metrics(self, sums, micro_batches):
        return {"mlm_loss": sums["mlm_loss"] / micro_batches, "mlm_accuracy": sums["mlm_correct"] / max(sums["mlm_count"], 1.0)}


class SequenceClassification(Objective):
    """Fine-tuning: [CLS] pooled output -> linear classifier, cross-entropy over `num_labels` classes
    (`python -m ort_training.finetune`). The labels (id2label / label2id) go into the config, so the
    export is a Hugging Face `BertForSequenceClassification` that names its classes.

    `init_checkpoint`: weights for the encoder (and pooler) from anything `weights_import.load_into`
    reads (Hugging Face folder, NVIDIA .pt, this bundle's checkpoint); the classifier starts fresh."""

    name = "sequence_classification"
    hf_class = BertForSequenceClassification
    batch_keys = ("input_ids", "segment_ids", "input_mask", "labels")
    stat_names = ("correct", "count")
    curves = ()

    def __init__(self, labels: list[str] | tuple[str, ...] = ("0", "1"), init_checkpoint: str | None = None):
        if len(labels) < 2:
            raise ValueError(f"sequence classification needs at least 2 classes, got {list(labels)}")
        self.labels = [str(label) for label in labels]
        self.init_checkpoint = init_checkpoint
        self.import_report = None

    def build(self, config: BertConfig) -> PreTrainedModel:
        config.num_labels = len(self.labels)
        config.id2label = dict(enumerate(self.labels))
        config.label2id = {label: i for i, label in enumerate(self.labels)}
        config.problem_type = "single_label_classification"
        model = BertForSequenceClassification(config)
        if self.init_checkpoint:
            from .weights_import import load_into

            # load_into fills a pretraining model (it knows every source's naming); the classifier
            # shares its encoder and pooler. A source without a pooler keeps the fresh one (logged there).
            source = BertForPreTraining(config)
            self.import_report = load_into(source, self.init_checkpoint)
            model.bert.load_state_dict(source.bert.state_dict())
        return model

    def forward(self, model, dense_seq_output, input_ids, segment_ids, input_mask, labels):
        pooled_output = model.bert(input_ids=input_ids, token_type_ids=segment_ids, attention_mask=input_mask,
                                   return_dict=False)[1]
        logits = model.classifier(model.dropout(pooled_output)).float()
        loss = F.cross_entropy(logits, labels.reshape(-1))
        correct = (logits.argmax(-1) == labels.reshape(-1)).sum().float()
        count = (labels >= 0).sum().float()
        return loss, torch.stack([correct.detach(), count.detach()])

    def metrics(self, sums, micro_batches):
        return {"train_accuracy": sums["correct"] / max(sums["count"], 1.0)}


OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (MaskedLMWithNSP, MaskedLM, SequenceClassification)}


def get_objective(name: str) -> Objective:
    try:
        return OBJECTIVES[name]()
    except KeyError:
        raise ValueError(f"--objective {name!r} is not known; choose one of {sorted(OBJECTIVES)}") from None
