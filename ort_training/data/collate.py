"""Collators: how an objective turns raw token sequences into the batch its loss reads (Hugging Face's
data-collator idea; torchtitan pairs one with each train spec). Readers yield sequences and per-sample random
generators (`ort_training.data.packed`); the objective picks its collator (`Objective.collator`), so the reader
knows nothing of masking, shifting or spans.

A collator is built with the objective's settings, then bound once to the data it reads (`bind(attrs,
max_seq_length)`: the tokenizer's special ids and the padded length). The bound collator is a pure function of
the sequences and their generators: a resumed run makes bitwise the batches of an uninterrupted one.
Every batch is padded to `max_seq_length`, so shapes are static (ORT and torch.compile never re-export).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from bundle import packed_schema
from bundle.masking import replacement_kinds
from ort_training.data.hdf5 import DataError, IGNORE_INDEX


def max_predictions(max_seq_length: int, mask_rate: float) -> int:
    """P, the width of ``masked_lm_positions`` / ``masked_lm_labels``: ceil(mask_rate * max_seq_length).
    Rounded to 9 decimals first, so 0.15 * 100 (15.000000000000002 in floating point) gives 15, not 16."""
    return max(1, math.ceil(round(mask_rate * max_seq_length, 9)))


def _padded(seqs: list[np.ndarray], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids [B, length] padded with pad_id, mask [B, length] 1 on real tokens)."""
    ids = np.full((len(seqs), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), length), dtype=np.int64)
    for b, seq in enumerate(seqs):
        ids[b, :len(seq)] = seq
        mask[b, :len(seq)] = 1
    return ids, mask


@dataclass(frozen=True)
class MaskingCollator:
    """Masked LM (BERT, RoBERTa, ModernBERT): ``num = round(mask_rate * n)`` of a sequence's n non-special tokens
    (at least 1, at most P) are prediction targets, replaced by bundle.masking's 80/10/10 rule. The batch has the
    NVIDIA reader's keys, so MLM and MLM+NSP read either format: ``input_ids``, ``input_mask``, ``segment_ids`` (0),
    ``masked_lm_positions`` [B, P] (ascending, unused slots 0), ``masked_lm_labels`` [B, P] (IGNORE_INDEX in unused
    slots), ``next_sentence_labels`` (0)."""

    mask_rate: float
    needs_rng = True

    def __post_init__(self):
        if not 0 < self.mask_rate < 1:
            raise DataError(f"mask_rate {self.mask_rate}: must be in (0, 1)")

    def bind(self, attrs: packed_schema.PackedAttrs, max_seq_length: int) -> "BoundMasking":
        return BoundMasking(attrs, self.mask_rate, max_seq_length)


class BoundMasking:
    def __init__(self, attrs: packed_schema.PackedAttrs, mask_rate: float, max_seq_length: int):
        self.attrs, self.mask_rate, self.max_seq_length = attrs, mask_rate, max_seq_length
        self.max_preds = max_predictions(max_seq_length, mask_rate)
        is_special = np.zeros(attrs.vocab_size, dtype=bool)
        is_special[list(attrs.special_ids)] = True
        self.is_special = is_special
        self.replace_ids = np.flatnonzero(~is_special).astype(np.int64)
        if self.replace_ids.size == 0:
            raise DataError("the tokenizer's every id is special: nothing to draw random replacements from")

    def mask(self, seq: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(masked ids, ascending positions, original ids at those positions) of one sequence."""
        candidates = np.flatnonzero(~self.is_special[seq])
        if candidates.size == 0:
            return seq.astype(np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        k = min(self.max_preds, max(1, int(round(self.mask_rate * candidates.size))))
        positions = np.sort(rng.choice(candidates, size=k, replace=False))
        u = rng.random(k)
        random_ids = self.replace_ids[rng.integers(0, self.replace_ids.size, size=k)]
        out = seq.astype(np.int64)
        labels = out[positions].copy()
        to_mask, to_random = replacement_kinds(u)
        out[positions[to_mask]] = self.attrs.mask_id
        out[positions[to_random]] = random_ids[to_random]
        return out, positions, labels

    def __call__(self, seqs: list[np.ndarray], rngs: list[np.random.Generator]) -> dict[str, torch.Tensor]:
        B, L, P = len(seqs), self.max_seq_length, self.max_preds
        masked = [self.mask(seq, rng) for seq, rng in zip(seqs, rngs)]
        input_ids, input_mask = _padded([m[0] for m in masked], L, self.attrs.pad_id)
        positions = np.zeros((B, P), dtype=np.int64)
        labels = np.full((B, P), IGNORE_INDEX, dtype=np.int64)
        for b, (_, pos, lab) in enumerate(masked):
            positions[b, :len(pos)] = pos
            labels[b, :len(lab)] = lab
        return {"input_ids": torch.from_numpy(input_ids), "input_mask": torch.from_numpy(input_mask),
                "segment_ids": torch.zeros((B, L), dtype=torch.int64), "masked_lm_positions": torch.from_numpy(positions),
                "next_sentence_labels": torch.zeros(B, dtype=torch.int64), "masked_lm_labels": torch.from_numpy(labels)}


@dataclass(frozen=True)
class CausalCollator:
    """Next-token prediction (decoders): the sequences right-padded, with the mask that tells real tokens from
    padding. The objective shifts inside its loss (position t predicts token t+1) and counts a target only where
    both are real tokens, so padding never enters the loss (fms-ehrs chunks padded timelines and trains on the
    padding; run_clm avoids it by concatenating documents, which would let one stay's events predict another's)."""

    needs_rng = False

    def bind(self, attrs: packed_schema.PackedAttrs, max_seq_length: int) -> "BoundCausal":
        return BoundCausal(attrs.pad_id, max_seq_length)


@dataclass(frozen=True)
class BoundCausal:
    pad_id: int
    max_seq_length: int

    def __call__(self, seqs: list[np.ndarray], rngs=None) -> dict[str, torch.Tensor]:
        input_ids, input_mask = _padded(seqs, self.max_seq_length, self.pad_id)
        return {"input_ids": torch.from_numpy(input_ids), "input_mask": torch.from_numpy(input_mask)}
