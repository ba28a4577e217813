"""Masked-LM objectives: BERT's MLM + next-sentence prediction (NVIDIA's recipe) and MLM only (RoBERTa, NYUTron,
ModernBERT). Both read NVIDIA-schema HDF5 (masks stored) or packed sequences masked as read."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ort_training.data.collate import MaskingCollator
from ort_training.data.hdf5 import IGNORE_INDEX
from ort_training.errors import UsageError
from ort_training.models import family_of
from ort_training.objectives.base import Objective


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


@torch.no_grad()
def mlm_accuracy(model: torch.nn.Module, batches, baseline_token: int | None = None) -> dict:
    """Accuracy of argmax predictions on masked positions, plus the mean MLM loss. `model` is an HF
    masked-LM model (the export) or BERT's pretraining model (the trainer's weights, end-of-phase eval).
    With `baseline_token`: also the accuracy of predicting that one token everywhere."""
    model.eval()
    token_types = family_of(model.config).token_types
    correct = total = sequences = baseline = 0
    loss_sum = 0.0
    for batch in batches:
        types = {"token_type_ids": batch["segment_ids"]} if token_types else {}
        out = model(input_ids=batch["input_ids"], attention_mask=batch["input_mask"], **types)
        logits = out.logits if hasattr(out, "logits") else out.prediction_logits
        picked = logits.gather(1, batch["masked_lm_positions"].unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
        labels = batch["masked_lm_labels"]
        valid = labels != IGNORE_INDEX
        correct += int(((picked.argmax(-1) == labels) & valid).sum())
        total += int(valid.sum())
        sequences += int(labels.shape[0])
        if baseline_token is not None:
            baseline += int(((labels == baseline_token) & valid).sum())
        loss_sum += float(torch.nn.functional.cross_entropy(picked.reshape(-1, picked.shape[-1]).float(), labels.reshape(-1),
                                                            ignore_index=IGNORE_INDEX, reduction="sum"))
    result = {"mlm_accuracy": correct / max(total, 1), "mlm_loss": loss_sum / max(total, 1), "masked_tokens": total,
              "sequences": sequences}
    if baseline_token is not None:
        result["most_frequent_token_accuracy"] = baseline / max(total, 1)
    return result


class MaskedLM(Objective):
    """Masked LM only (RoBERTa, NYUTron, ModernBERT): no NSP head, no pooler; next_sentence_labels are not read."""

    name = "mlm"
    inputs_keys = ("input_ids", "segment_ids", "input_mask", "masked_lm_positions", "masked_lm_labels")
    stat_names = ("mlm_loss", "mlm_correct", "mlm_count")
    curves = ("mlm_loss",)
    headline = "mlm_accuracy"
    eval_loss = "mlm_loss"
    premasked_data = True
    scores_exports = True

    def collator(self, family, mask_rate=None):
        return MaskingCollator(mask_rate or family.mask_rate)

    def _mlm(self, model, dense_seq_output, inputs):
        input_ids, segment_ids, input_mask, rest = self._encoder_inputs(inputs)
        sequence_output, pooled_output = self.family.encode(model, input_ids, segment_ids, input_mask)
        loss, correct, count = masked_lm_loss(self.family.head(model, "mlm"), sequence_output, rest[0], rest[1], dense_seq_output)
        return loss, correct, count, pooled_output, rest[2:]

    def forward(self, model, dense_seq_output, *inputs):
        mlm_loss, correct, count, _, _ = self._mlm(model, dense_seq_output, inputs)
        return mlm_loss, torch.stack([mlm_loss.detach(), correct.detach(), count.detach()])

    def metrics(self, sums, micro_batches):
        return {"mlm_loss": sums["mlm_loss"] / micro_batches, "mlm_accuracy": sums["mlm_correct"] / max(sums["mlm_count"], 1.0)}

    def evaluate(self, model, batches):
        result = mlm_accuracy(model, batches)
        return {"mlm_accuracy": result["mlm_accuracy"], "mlm_loss": result["mlm_loss"], "masked_tokens": result["masked_tokens"]}


class MaskedLMWithNSP(MaskedLM):
    """BERT's original objective: masked LM + next-sentence prediction (NVIDIA's recipe)."""

    name = "mlm_nsp"
    inputs_keys = ("input_ids", "segment_ids", "input_mask", "masked_lm_positions", "masked_lm_labels", "next_sentence_labels")
    stat_names = ("mlm_loss", "nsp_loss", "mlm_correct", "mlm_count")
    curves = ("mlm_loss", "nsp_loss")
    scores_exports = False  # packed data has no sentence pairs: exports are scored on masked LM

    def build(self, config):
        family = family_of(config)
        if self.name not in family.task_classes:
            raise UsageError(f"--objective mlm_nsp needs a next-sentence head, which {family.name} has not; "
                             f"train {family.name} with --objective mlm")
        return super().build(config)

    def forward(self, model, dense_seq_output, *inputs):
        mlm_loss, correct, count, pooled_output, (next_sentence_labels,) = self._mlm(model, dense_seq_output, inputs)
        nsp_loss = F.cross_entropy(self.family.head(model, "nsp")(pooled_output).float(), next_sentence_labels.reshape(-1))
        return mlm_loss + nsp_loss, torch.stack([mlm_loss.detach(), nsp_loss.detach(), correct.detach(), count.detach()])

    def metrics(self, sums, micro_batches):
        return {"mlm_loss": sums["mlm_loss"] / micro_batches, "nsp_loss": sums["nsp_loss"] / micro_batches,
                "mlm_accuracy": sums["mlm_correct"] / max(sums["mlm_count"], 1.0)}
