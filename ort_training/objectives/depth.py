"""DEPTH (Bamberger et al., "DEPTH: Discourse Education through Pre-Training Hierarchically"): T5's span corruption
plus sentence un-shuffling. Each sentence carries a sentence token (drawn at random, so its id says nothing of its
place) and ends with <eosen>; the sentences are shuffled with `shuffle_probability`, and the target restores the
original order (the sentence tokens in turn) together with the masked spans (ort_training.data.collate_t5.DepthCollator).
As DEPTH does, the step metrics report the reconstruction (span tokens) and the sentence order (sentence tokens)
apart; the loss is over both.

Settings: noise density --mask_rate (default 0.3, DEPTH's), mean span length 3 and shuffle probability 0.5 are
constructor arguments. `--objective depth_hierarchical` adds DEPTH's hierarchical encoder attention (a sentence
token attends within its own sentence only; models/t5.py's hierarchical_mask); `depth` keeps T5's plain mask.
"""

from __future__ import annotations

import math

import torch

from ort_training.data.collate_t5 import DepthCollator
from ort_training.models import family_of
from ort_training.models.t5 import hierarchical_logits
from ort_training.objectives.span_corruption import SpanCorruption, seq2seq_logits, target_stats


class Depth(SpanCorruption):
    name = "depth"
    inputs_keys = ("input_ids", "input_mask", "decoder_input_ids", "labels", "labels_sentence")
    stat_names = ("nll_sum", "target_count", "span_correct", "span_count", "sentence_correct", "sentence_count")
    curves = ("depth_loss", "sentence_accuracy")
    headline = "depth_loss"
    scores_exports = False  # a DEPTH export is scored on span corruption, the same batches as a span-corruption one
    noise_density = 0.3
    shuffle_probability = 0.5

    def __init__(self, mean_noise_span_length: float | None = None, shuffle_probability: float | None = None):
        super().__init__(mean_noise_span_length)
        if shuffle_probability is not None:
            self.shuffle_probability = shuffle_probability

    def collator(self, family, mask_rate=None):
        return DepthCollator(mask_rate if mask_rate is not None else self.noise_density, self.mean_noise_span_length,
                             self.shuffle_probability, owner=self)

    def _logits(self, model, input_ids, input_mask, decoder_input_ids, *hierarchy):
        return seq2seq_logits(model, input_ids, input_mask, decoder_input_ids)

    def _stats(self, model, input_ids, input_mask, decoder_input_ids, labels, labels_sentence, *hierarchy):
        logits = self._logits(model, input_ids, input_mask, decoder_input_ids, *hierarchy)
        nll_sum, _, count = target_stats(logits, labels)
        _, span_correct, span_count = target_stats(logits, labels, 1 - labels_sentence)
        _, sentence_correct, sentence_count = target_stats(logits, labels, labels_sentence)
        return nll_sum, count, span_correct, span_count, sentence_correct, sentence_count

    def forward(self, model, dense_seq_output, *inputs):
        stats = self._stats(model, *inputs)
        loss = stats[0] / stats[1].clamp(min=1.0)
        return loss, torch.stack([s.detach() for s in stats])

    def metrics(self, sums, micro_batches):
        loss = sums["nll_sum"] / max(sums["target_count"], 1.0)
        return {"depth_loss": loss, "span_accuracy": sums["span_correct"] / max(sums["span_count"], 1.0),
                "sentence_accuracy": sums["sentence_correct"] / max(sums["sentence_count"], 1.0)}

    @torch.no_grad()
    def evaluate(self, model, batches):
        """Held-out loss over every target token, and teacher-forced accuracy of span tokens and of sentence tokens."""
        model.eval()
        self.family = self.family or family_of(model.config)
        sums = dict.fromkeys(self.stat_names, 0.0)
        sequences = 0
        for batch in batches:
            stats = self._stats(model, *(batch[k] for k in self.inputs_keys))
            for name, value in zip(self.stat_names, stats):
                sums[name] += float(value)
            sequences += int(batch["input_ids"].shape[0])
        out = self.metrics(sums, 1)
        return {**out, "depth_perplexity": math.exp(min(out["depth_loss"], 50.0)), "tokens": int(sums["target_count"]),
                "sequences": sequences}


class DepthHierarchical(Depth):
    """DEPTH with its hierarchical encoder self-attention: a sentence token attends only to its own sentence's tokens
    (models.t5.hierarchical_logits); every other token attends to every real token, as in `depth`."""

    name = "depth_hierarchical"
    inputs_keys = Depth.inputs_keys + ("input_sentence", "input_sentence_token")

    def _logits(self, model, input_ids, input_mask, decoder_input_ids, *hierarchy):
        return hierarchical_logits(model, input_ids, input_mask, decoder_input_ids, *hierarchy)
