"""Collators of the encoder-decoder objectives: T5's span corruption and DEPTH's sentence un-shuffling
(ort_training.objectives.span_corruption, .depth). Written from Hugging Face's `run_t5_mlm_flax.py` (as nanoT5's
`copied_utils.py` carries it: random_spans_noise_mask, the sentinel layout, compute_input_and_target_lengths) and
DEPTH's `encoder_decoder_utils/corruption.py` (sentence tokens, shuffled sentences, a target that restores their order
together with the masked spans).

The ids these objectives add to the data's tokenizer are reserved above it, in this order (`reserved_tokens`):
`<extra_id_0>` .. `<extra_id_99>` (sentinels), `<eosen>` (end of sentence), `<sent_0>` .. `<sent_19>` (sentence
tokens): with a tokenizer of V ids, `<extra_id_i>` is V + i. Any packed data trains (the WordPiece and BPE tokenizers
data_prep makes have no sentinels); the model config's vocab_size must leave room for them (checked when the collator
is bound), and the export appends the same tokens to the tokenizer, so they decode to their names (export.export_hf).

Each sequence is corrupted with its own numpy Generator (the reader's: a pure function of seed, epoch, file and
sample), and every batch has static shapes: encoder and decoder lengths are the longest any sequence of the data's
length can give (`corrupted_lengths`), so ORT exports the graph once.
"""

from __future__ import annotations

import numpy as np
import torch

from bundle import packed_schema
from ort_training.data.hdf5 import DataError, IGNORE_INDEX

SENTINELS = 100
"""T5's extra ids."""
SENTENCE_TOKENS = 20
"""DEPTH's sentence tokens: a sequence's sentences each get a distinct one, drawn at random (so their ids say nothing
about the order); a sequence with more sentences has its last ones merged into the 20th."""


def reserved_tokens() -> tuple[str, ...]:
    """The tokens reserved above the data tokenizer's ids, in id order."""
    return (tuple(f"<extra_id_{i}>" for i in range(SENTINELS)) + ("<eosen>",)
            + tuple(f"<sent_{i}>" for i in range(SENTENCE_TOKENS)))


def noise_counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) of a sequence of `length` tokens, as T5's random_spans_noise_mask fixes them:
    round(length * density) noise tokens (at least 1, at most length - 1), round(noise / mean span) spans (at least 1).
    Sequences shorter than 2 tokens get no noise."""
    if length < 2:
        return 0, 0
    noise = min(max(int(np.round(length * noise_density)), 1), length - 1)
    spans = max(int(np.round(noise / mean_noise_span_length)), 1)
    return noise, min(spans, noise, length - noise)


def random_spans_noise_mask(length: int, noise_density: float, mean_noise_span_length: float,
                            rng: np.random.Generator) -> np.ndarray:
    """Boolean mask [length]: noise spans alternating with non-noise spans, beginning with non-noise; the counts are
    `noise_counts`', the split of each into spans uniformly random (all such masks equally likely), drawn from `rng`."""
    noise, spans = noise_counts(length, noise_density, mean_noise_span_length)
    if spans == 0:
        return np.zeros(length, dtype=bool)

    def segmentation(items: int, segments: int) -> np.ndarray:
        cuts = np.sort(rng.choice(items - 1, size=segments - 1, replace=False)) + 1 if segments > 1 else np.zeros(0, np.int64)
        return np.diff(np.concatenate([[0], cuts, [items]]))

    noise_lengths = segmentation(noise, spans)
    nonnoise_lengths = segmentation(length - noise, spans)
    kinds = np.tile([False, True], spans)
    return np.repeat(kinds, np.stack([nonnoise_lengths, noise_lengths], 1).reshape(-1))


def corrupted_lengths(max_tokens: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """(encoder length, decoder length) that fit the corruption of any sequence of 1..max_tokens tokens: the
    uncorrupted tokens plus a sentinel per span plus EOS, and the noise tokens plus a sentinel per span plus EOS."""
    enc = dec = 0
    for n in range(1, max_tokens + 1):
        noise, spans = noise_counts(n, noise_density, mean_noise_span_length)
        enc, dec = max(enc, n - noise + spans + 1), max(dec, noise + spans + 1)
    return enc, dec


def compute_input_and_target_lengths(inputs_length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """Hugging Face's rule (run_t5_mlm_flax.py) the other way round: the raw length whose corruption fills an encoder
    input of `inputs_length` tokens, and the target length it gives (e.g. 568 raw tokens for 512 at 0.15 / 3: pass
    `data_prep packed --max-seq-length 569`, one more for the [CLS] a packed sequence starts with)."""
    def lengths(tokens: int) -> tuple[int, int]:
        noise, spans = noise_counts(tokens, noise_density, mean_noise_span_length)
        return tokens - noise + spans + 1, noise + spans + 1

    tokens = inputs_length
    while lengths(tokens + 1)[0] <= inputs_length:
        tokens += 1
    return tokens, lengths(tokens)[1]


class _Layout:
    """The reserved ids of a bound collator (`reserved_tokens` above a tokenizer of `vocab_size` ids)."""

    def __init__(self, vocab_size: int):
        self.sentinel0 = vocab_size
        self.eosen = vocab_size + SENTINELS
        self.sent0 = self.eosen + 1
        self.end = self.sent0 + SENTENCE_TOKENS


def _content(seq: np.ndarray, attrs: packed_schema.PackedAttrs) -> tuple[np.ndarray, int]:
    """A packed sequence's text tokens: the leading [CLS] dropped (T5 has none) and the final [SEP] (the EOS here:
    the family's eos_token_id is the data's [SEP]) dropped, to be appended after corruption. Returns (tokens, how many
    leading tokens were dropped)."""
    lead = 1 if len(seq) and seq[0] == attrs.cls_id else 0
    tail = 1 if len(seq) > lead and seq[-1] == attrs.sep_id else 0
    return np.asarray(seq[lead:len(seq) - tail], dtype=np.int64), lead


class _Bound:
    """What both bound collators share: the static lengths, the reserved ids, padding into the batch."""

    def __init__(self, attrs, max_seq_length, noise_density, mean_noise_span_length, owner, extra_enc=0, extra_dec=0,
                 extra_spans=0):
        self.attrs = attrs
        self.layout = _Layout(attrs.vocab_size)
        self.noise_density, self.mean_noise_span_length = noise_density, mean_noise_span_length
        self.max_tokens = max_seq_length - 1  # without the [CLS]
        enc, dec = corrupted_lengths(self.max_tokens, noise_density, mean_noise_span_length)
        self.encoder_length, self.decoder_length = enc + extra_enc, dec + extra_dec
        spans = noise_counts(self.max_tokens, noise_density, mean_noise_span_length)[1] + extra_spans
        if spans > SENTINELS:
            raise DataError(f"sequences of {max_seq_length} tokens at noise density {noise_density} and mean span "
                            f"{mean_noise_span_length} need up to {spans} sentinels; T5 has {SENTINELS}: use shorter sequences")
        limit = getattr(owner, "vocab_limit", None)
        if limit is not None and self.layout.end > limit:
            raise DataError(f"the data's tokenizer has {attrs.vocab_size} ids and {owner.name} reserves {len(reserved_tokens())} "
                            f"more above them (sentinels, <eosen>, sentence tokens): {self.layout.end} ids, but the model "
                            f"config's vocab_size is {limit}; use a config with vocab_size >= {self.layout.end}")

    def batch(self, encoder: list[np.ndarray], target: list[np.ndarray]) -> dict[str, torch.Tensor]:
        B, pad = len(encoder), self.attrs.pad_id
        input_ids = np.full((B, self.encoder_length), pad, dtype=np.int64)
        input_mask = np.zeros((B, self.encoder_length), dtype=np.int64)
        labels = np.full((B, self.decoder_length), IGNORE_INDEX, dtype=np.int64)
        decoder_input_ids = np.full((B, self.decoder_length), pad, dtype=np.int64)
        for b, (e, t) in enumerate(zip(encoder, target)):
            input_ids[b, :len(e)], input_mask[b, :len(e)] = e, 1
            labels[b, :len(t)] = t
            decoder_input_ids[b, 1:len(t)] = t[:-1]  # teacher forcing: the decoder starts from pad (T5's start id)
        return {"input_ids": torch.from_numpy(input_ids), "input_mask": torch.from_numpy(input_mask),
                "decoder_input_ids": torch.from_numpy(decoder_input_ids), "labels": torch.from_numpy(labels)}


class SpanCorruptionCollator:
    """T5's span corruption: in each sequence's text, `noise_density` of the tokens in spans of mean length
    `mean_noise_span_length` are replaced by one sentinel per span in the encoder input; the target is each sentinel
    followed by the tokens it hides, then EOS. Keys: input_ids, input_mask [B, E]; decoder_input_ids, labels [B, D]
    (labels IGNORE_INDEX on padding)."""

    needs_rng = True
    needs_sentences = False

    def __init__(self, noise_density: float = 0.15, mean_noise_span_length: float = 3.0, owner=None):
        if not 0 < noise_density < 1:
            raise DataError(f"noise density {noise_density}: must be in (0, 1)")
        if mean_noise_span_length < 1:
            raise DataError(f"mean noise span length {mean_noise_span_length}: must be >= 1")
        self.mask_rate, self.mean_noise_span_length, self.owner = noise_density, mean_noise_span_length, owner

    def bind(self, attrs: packed_schema.PackedAttrs, max_seq_length: int) -> "BoundSpanCorruption":
        return BoundSpanCorruption(attrs, max_seq_length, self.mask_rate, self.mean_noise_span_length, self.owner)


def corrupt(tokens: np.ndarray, noise: np.ndarray, first_sentinel: int) -> tuple[list[int], list[int], int]:
    """(encoder tokens, target tokens, sentinels used) of `tokens` under the noise mask: each run of noise becomes
    sentinel first_sentinel + k in the encoder, and that sentinel followed by the run in the target."""
    enc: list[int] = []
    tgt: list[int] = []
    k = 0
    for i, (tok, is_noise) in enumerate(zip(tokens.tolist(), noise.tolist())):
        if not is_noise:
            enc.append(tok)
            continue
        if i == 0 or not noise[i - 1]:
            enc.append(first_sentinel + k)
            tgt.append(first_sentinel + k)
            k += 1
        tgt.append(tok)
    return enc, tgt, k


class BoundSpanCorruption(_Bound):
    def __init__(self, attrs, max_seq_length, noise_density, mean_noise_span_length, owner=None):
        super().__init__(attrs, max_seq_length, noise_density, mean_noise_span_length, owner)

    def __call__(self, seqs: list[np.ndarray], rngs: list[np.random.Generator]) -> dict[str, torch.Tensor]:
        encoder, target = [], []
        eos = self.attrs.sep_id
        for seq, rng in zip(seqs, rngs):
            tokens, _ = _content(seq, self.attrs)
            noise = random_spans_noise_mask(len(tokens), self.noise_density, self.mean_noise_span_length, rng)
            enc, tgt, _ = corrupt(tokens, noise, self.layout.sentinel0)
            encoder.append(np.asarray(enc + [eos], dtype=np.int64))
            target.append(np.asarray(tgt + [eos], dtype=np.int64))
        return self.batch(encoder, target)


class DepthCollator:
    """DEPTH (Bamberger et al.): the text's sentences, each opened by a sentence token (distinct, drawn at random per
    sequence; at most one sentence per 16 tokens of the data's length, a longer tail merged into the last) and
    closed by `<eosen>`, are span-corrupted as T5 does (`noise_density` 0.3, spans of mean 3: DEPTH's settings; a
    span never crosses a sentence boundary) and then, with probability `shuffle_probability`, shuffled; sentinels are
    numbered left to right as the encoder shows them (after the shuffle), so they carry no hint of the order. The target
    restores the original order: each sentence's token in turn, with the sentinels and tokens of that sentence's
    spans, then EOS. Sentence boundaries come from the packed data (format version 2, `sentence_starts`); a
    sequence's first text token always starts a sentence (a document cut across sequences continues mid-sentence).
    Keys: SpanCorruptionCollator's, plus labels_sentence [B, D] (1 where the label is a sentence token: the order
    the model restores, reported apart from the spans as DEPTH does), and for the hierarchical encoder mask
    input_sentence [B, E] (each encoder token's sentence, 1..S; 0 for EOS and padding) and input_sentence_token [B, E]."""

    needs_rng = True
    needs_sentences = True

    def __init__(self, noise_density: float = 0.3, mean_noise_span_length: float = 3.0, shuffle_probability: float = 0.5,
                 owner=None):
        SpanCorruptionCollator(noise_density, mean_noise_span_length)  # the same checks
        if not 0 <= shuffle_probability <= 1:
            raise DataError(f"shuffle probability {shuffle_probability}: must be in [0, 1]")
        self.mask_rate, self.mean_noise_span_length = noise_density, mean_noise_span_length
        self.shuffle_probability, self.owner = shuffle_probability, owner

    def bind(self, attrs: packed_schema.PackedAttrs, max_seq_length: int) -> "BoundDepth":
        return BoundDepth(attrs, max_seq_length, self.mask_rate, self.mean_noise_span_length, self.shuffle_probability,
                          self.owner)


def split_sentences(tokens: np.ndarray, starts: np.ndarray, limit: int = SENTENCE_TOKENS) -> list[np.ndarray]:
    """The text split where sentences start (positions in `tokens`; 0 always starts one), at most `limit` sentences:
    the sentences past the limit are merged into the last."""
    cuts = np.unique(np.concatenate([[0], starts[(starts > 0) & (starts < len(tokens))]])).astype(np.int64)
    cuts = cuts[:limit]
    return [tokens[a:b] for a, b in zip(cuts, np.append(cuts[1:], len(tokens))) if b > a]


class BoundDepth(_Bound):
    def __init__(self, attrs, max_seq_length, noise_density, mean_noise_span_length, shuffle_probability, owner=None):
        # At most one sentence per 16 tokens (PubMed's sentences average ~25 BPE tokens), and never more than the
        # sentence tokens: the static encoder length pays 3 tokens per possible sentence, so a 128-token sequence
        # keeps 7 (a longer tail is merged into the 7th) instead of padding for 20.
        k = self.max_sentences = min(SENTENCE_TOKENS, max(2, (max_seq_length - 1) // 16))
        # Per sentence: its token and <eosen> in the encoder, its token in the target; a span cut by a sentence
        # boundary is one more span (sentinel) in both, at most k - 1 of them.
        super().__init__(attrs, max_seq_length, noise_density, mean_noise_span_length, owner, extra_enc=3 * k - 1,
                         extra_dec=2 * k - 1, extra_spans=k - 1)
        self.shuffle_probability = shuffle_probability

    def example(self, seq: np.ndarray, rng: np.random.Generator, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
        """(encoder ids, target ids, 1 where the target is a sentence token, the order in which the encoder shows the
        sentences) of one sequence."""
        tokens, lead = _content(seq, self.attrs)
        sentences = split_sentences(tokens, np.asarray(starts, dtype=np.int64) - lead, self.max_sentences)
        ids = self.layout.sent0 + rng.permutation(SENTENCE_TOKENS)[:len(sentences)]
        noise = random_spans_noise_mask(len(tokens), self.noise_density, self.mean_noise_span_length, rng)
        order = (rng.permutation(len(sentences)) if rng.random() < self.shuffle_probability
                 else np.arange(len(sentences))).tolist()
        # Sentinels are numbered in the order the encoder shows the sentences (left to right, as T5 numbers them),
        # not in the original order: numbered in the original order, the sentinel ids of a shuffled input told the
        # order (the sentence holding <extra_id_0> came first), a shortcut around the task being measured.
        bounds = np.cumsum([0] + [len(s) for s in sentences])
        masks = [noise[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        spans = [int(m[0]) + int(np.sum(m[1:] & ~m[:-1])) for m in masks]
        first = np.zeros(len(sentences), np.int64)
        first[order] = np.cumsum([0] + [spans[i] for i in order])[:-1]
        units, target, is_sentence = [], [], []
        for sent_id, sentence, mask, base in zip(ids.tolist(), sentences, masks, first.tolist()):
            enc, tgt, _ = corrupt(sentence, mask, self.layout.sentinel0 + base)
            units.append([sent_id] + enc + [self.layout.eosen])
            target += [sent_id] + tgt
            is_sentence += [1] + [0] * len(tgt)
        eos = self.attrs.sep_id
        encoder = [t for i in order for t in units[i]] + [eos]
        self.last_sentence_index = np.asarray([i + 1 for i in order for _ in units[i]] + [0], np.int64)
        return (np.asarray(encoder, np.int64), np.asarray(target + [eos], np.int64), np.asarray(is_sentence + [0], np.int64),
                order)

    def __call__(self, seqs, rngs, sentences=None, where=None) -> dict[str, torch.Tensor]:
        if sentences is None:
            raise DataError(f"{where or 'the packed data'}: holds no sentence boundaries (packed format version 1, or written "
                            "without them), which --objective depth needs: rebuild the data with `python -m data_prep packed` "
                            "(it writes format version 2 with sentence starts)")
        made, index = [], np.zeros((len(seqs), self.encoder_length), dtype=np.int64)
        for b, (seq, rng, starts) in enumerate(zip(seqs, rngs, sentences)):
            made.append(self.example(seq, rng, starts))
            index[b, :len(self.last_sentence_index)] = self.last_sentence_index
        batch = self.batch([m[0] for m in made], [m[1] for m in made])
        kinds = np.zeros(batch["labels"].shape, dtype=np.int64)
        for b, m in enumerate(made):
            kinds[b, :len(m[2])] = m[2]
        batch["labels_sentence"] = torch.from_numpy(kinds)
        ids = batch["input_ids"]
        batch["input_sentence"] = torch.from_numpy(index)  # the sentence (1..S) of each encoder token; 0: EOS, padding
        batch["input_sentence_token"] = ((ids >= self.layout.sent0) & (ids < self.layout.end)).long()
        return batch
