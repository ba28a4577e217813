"""T5 span corruption (encoder-decoders): the encoder reads a sequence whose noise spans are replaced by sentinels,
the decoder writes each sentinel followed by the tokens it hides (ort_training.data.collate_t5). The loss is the
per-token cross-entropy over the real target tokens; `span_loss` is what evaluation reports and what the DEPTH
objective's model is compared on (`evaluate` of either model on the same span-corrupted held-out batches).

Settings: the noise density is --mask_rate (default 0.15, T5's), the mean span length 3 (T5's) is this class's
`mean_noise_span_length` (a constructor argument: no command-line flag yet).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ort_training.data.collate_t5 import SpanCorruptionCollator, reserved_tokens
from ort_training.models import family_of
from ort_training.objectives.base import Objective


def seq2seq_logits(model, input_ids, input_mask, decoder_input_ids) -> torch.Tensor:
    """[B, D, V] scores of an encoder-decoder's target positions (teacher forcing; the decoder's own causal mask,
    padding at the end of a target never reaches a real position)."""
    return model(input_ids=input_ids, attention_mask=input_mask, decoder_input_ids=decoder_input_ids, use_cache=False,
                 return_dict=False)[0]


def target_stats(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None):
    """(summed negative log-likelihood, correct argmax predictions, count) over the labels that are not
    IGNORE_INDEX (and, with `weight`, where weight is 1)."""
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), reduction="none",
                          ignore_index=-100).reshape(labels.shape)
    valid = (labels != -100).float()
    if weight is not None:
        valid = valid * weight.float()
    correct = ((logits.argmax(-1) == labels).float() * valid).sum()
    return (nll * valid).sum(), correct, valid.sum()


class SpanCorruption(Objective):
    name = "span_corruption"
    inputs_keys = ("input_ids", "input_mask", "decoder_input_ids", "labels")
    stat_names = ("nll_sum", "span_correct", "span_count")
    curves = ("span_loss",)
    headline = "span_loss"
    scores_exports = True
    noise_density = 0.15
    """T5's; --mask_rate overrides it."""
    mean_noise_span_length = 3.0
    added_tokens: tuple[str, ...] = reserved_tokens()
    """Tokens the export appends to the data's tokenizer (their ids are reserved right above it)."""
    vocab_limit: int | None = None
    """The model's vocabulary (set by `build`): the collator refuses data whose reserved ids would not fit."""

    def __init__(self, mean_noise_span_length: float | None = None):
        if mean_noise_span_length is not None:
            self.mean_noise_span_length = mean_noise_span_length

    def attach(self, model):
        super().attach(model)
        self.vocab_limit = getattr(model.config, "original_vocab_size", model.config.vocab_size)

    def collator(self, family, mask_rate=None):
        return SpanCorruptionCollator(mask_rate if mask_rate is not None else self.noise_density, self.mean_noise_span_length,
                                      owner=self)

    def forward(self, model, dense_seq_output, *inputs):
        input_ids, input_mask, decoder_input_ids, labels = inputs
        nll_sum, correct, count = target_stats(seq2seq_logits(model, input_ids, input_mask, decoder_input_ids), labels)
        loss = nll_sum / count.clamp(min=1.0)
        return loss, torch.stack([nll_sum.detach(), correct.detach(), count.detach()])

    def metrics(self, sums, micro_batches):
        loss = sums["nll_sum"] / max(sums["span_count"], 1.0)
        return {"span_loss": loss, "span_accuracy": sums["span_correct"] / max(sums["span_count"], 1.0)}

    def baselines(self, model, held_out, train_dir, max_files):
        """The uniform distribution over the model's ids (what an untrained T5 is near; a unigram model of span targets
        would have to model the sentinels too)."""
        return {"uniform_span_loss": math.log(getattr(model.config, "original_vocab_size", model.config.vocab_size))}

    @torch.no_grad()
    def evaluate(self, model, batches):
        """Per-token loss and accuracy over every real target token of the held-out batches (teacher forcing)."""
        model.eval()
        self.family = self.family or family_of(model.config)
        nll = correct = count = 0.0
        sequences = 0
        for batch in batches:
            n, c, k = target_stats(seq2seq_logits(model, batch["input_ids"], batch["input_mask"], batch["decoder_input_ids"]),
                                   batch["labels"])
            nll, correct, count = nll + float(n), correct + float(c), count + float(k)
            sequences += int(batch["input_ids"].shape[0])
        loss = nll / max(count, 1.0)
        return {"span_loss": loss, "span_perplexity": math.exp(min(loss, 50.0)), "span_accuracy": correct / max(count, 1.0),
                "tokens": int(count), "sequences": sequences}
