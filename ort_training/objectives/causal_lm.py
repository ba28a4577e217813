"""Causal LM (decoders: Llama on EHR timelines or text): position t predicts token t+1, loss on real tokens only."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ort_training.data.collate import CausalCollator
from ort_training.models import family_of
from ort_training.objectives.base import Objective


def next_token_stats(logits: torch.Tensor, input_ids: torch.Tensor, input_mask: torch.Tensor):
    """(summed negative log-likelihood, correct argmax predictions, target count) of next-token prediction over
    the pairs (t, t+1) whose target is a real token. `logits` [B, L-1, V] are the scores of positions 0..L-2."""
    targets = input_ids[:, 1:]
    valid = input_mask[:, 1:].float()
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="none")
    correct = ((logits.argmax(-1) == targets).float() * valid).sum()
    return (nll * valid.reshape(-1)).sum(), correct, valid.sum()


def unigram_baseline(input_dir: str | Path, held_out: list[Path], max_files: int = 8) -> dict:
    """Per-token loss and perplexity on the held-out files' next-token targets (every token but a sequence's first) of
    a model that knows only token frequencies: the unigram distribution of the training files beside the held-out
    ones (at most `max_files`; else of the held-out files), add-one smoothed over the tokenizer's ids."""
    from bundle import packed_schema

    train = [f for f in sorted(Path(input_dir).rglob("*.hdf5")) if "training" in f.name and f not in held_out]
    files, source = (train[:max_files], "training") if train else (held_out, "held-out")
    vocab = packed_schema.read_attrs(held_out[0]).vocab_size
    counts = np.ones(vocab, dtype=np.float64)
    for f in files:
        tokens, _ = packed_schema.read_sequences(f)
        counts += np.bincount(tokens, minlength=vocab)[:vocab]
    log_p = np.log(counts / counts.sum())
    nll = n = 0.0
    for f in held_out:
        tokens, offsets = packed_schema.read_sequences(f)
        targets = np.ones(len(tokens), dtype=bool)
        targets[offsets[:-1][offsets[:-1] < len(tokens)]] = False  # a sequence's first token is never a target
        nll -= float(log_p[tokens[targets]].sum())
        n += float(targets.sum())
    loss = nll / max(n, 1.0)
    return {"clm_loss": loss, "perplexity": math.exp(loss), "source": f"{source} token counts ({len(files)} files)"}


class CausalLM(Objective):
    """Next-token prediction. Right-padded sequences (ort_training.data.collate.CausalCollator): a pair enters the
    loss only when its target is a real token, and the model's attention mask hides padding as keys, so a batch of
    short timelines trains exactly as the timelines alone would."""

    name = "clm"
    inputs_keys = ("input_ids", "input_mask")
    stat_names = ("nll_sum", "clm_correct", "clm_count")
    curves = ("clm_loss",)
    headline = "clm_loss"
    eval_loss = "clm_loss"
    scores_exports = True

    def collator(self, family, mask_rate=None):
        return CausalCollator()

    def _stats(self, model, input_ids, input_mask):
        hidden, _ = self.family.encode(model, input_ids, None, input_mask)
        logits = self.family.head(model, "lm")(hidden[:, :-1])
        return next_token_stats(logits, input_ids, input_mask)

    def forward(self, model, dense_seq_output, *inputs):
        input_ids, input_mask = inputs
        nll_sum, correct, count = self._stats(model, input_ids, input_mask)
        loss = nll_sum / count.clamp(min=1.0)  # mean over this micro-batch's targets; a batch without any gives 0
        return loss, torch.stack([nll_sum.detach(), correct.detach(), count.detach()])

    def metrics(self, sums, micro_batches):
        loss = sums["nll_sum"] / max(sums["clm_count"], 1.0)
        return {"clm_loss": loss, "clm_accuracy": sums["clm_correct"] / max(sums["clm_count"], 1.0),
                "perplexity": math.exp(min(loss, 50.0))}

    def baselines(self, model, held_out, train_dir, max_files):
        return {"unigram": unigram_baseline(train_dir, held_out, max_files)}

    @torch.no_grad()
    def evaluate(self, model, batches):
        """Per-token loss, perplexity and next-token accuracy over every real target of the held-out batches."""
        model.eval()
        self.family = self.family or family_of(model.config)
        nll = correct = count = 0.0
        sequences = 0
        for batch in batches:
            n, c, k = self._stats(model, batch["input_ids"], batch["input_mask"])
            nll, correct, count = nll + float(n), correct + float(c), count + float(k)
            sequences += int(batch["input_ids"].shape[0])
        loss = nll / max(count, 1.0)
        return {"clm_loss": loss, "perplexity": math.exp(min(loss, 50.0)), "clm_accuracy": correct / max(count, 1.0),
                "tokens": int(count), "sequences": sequences}
