"""Masked-LM + next-sentence instances with BERT's published algorithm (``create_pretraining_data.py``).

Pure functions over numpy arrays with explicit RNGs, no I/O. A chunk of documents arrives as one flat
token array plus per-sentence lengths and per-document sentence counts, so every segment BERT builds
is a contiguous range of that array: instances are planned as (start, length) pairs in Python
(one loop step per sentence, as BERT's) and then gathered, truncated and masked for thousands of
instances at once with numpy, instead of per-token Python as in Google's/NVIDIA's script.

Differences from the reference, all distribution-preserving and each for flat memory or speed:
- the random next sentence comes from another document of the same in-memory chunk
  (``chunk_documents``), not of the whole shard; instances are shuffled within the chunk;
- ``truncate_seq_pair`` removes the same number of tokens from the same segment, with the
  front/back coin flips drawn as a binomial instead of one at a time;
- random replacement tokens (the 10%) are drawn from the non-special vocabulary.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from bundle.masking import replacement_kinds


@dataclass(frozen=True)
class SpecialIds:
    pad: int
    unk: int
    cls: int
    sep: int
    mask: int

    @classmethod
    def from_vocab(cls, vocab: dict[str, int]) -> "SpecialIds":
        return cls(vocab["[PAD]"], vocab["[UNK]"], vocab["[CLS]"], vocab["[SEP]"], vocab["[MASK]"])


@dataclass(frozen=True)
class MaskingConfig:
    max_seq_length: int = 128
    max_predictions_per_seq: int = 20
    masked_lm_prob: float = 0.15
    short_seq_prob: float = 0.1
    whole_word_mask: bool = False


@dataclass
class Plan:
    """Instances as ranges into the chunk's flat token array (before truncation)."""

    a_start: np.ndarray
    a_len: np.ndarray
    b_start: np.ndarray
    b_len: np.ndarray
    is_random_next: np.ndarray


def plan_instances(sent_lens: np.ndarray, doc_sents: np.ndarray, max_seq_length: int, short_seq_prob: float,
                   dupe_factor: int, rng: random.Random) -> Plan:
    """BERT's ``create_instances_from_document`` for every document, ``dupe_factor`` times.

    ``sent_lens``: tokens per sentence (all documents, in order); ``doc_sents``: sentences per document.
    A Python ``random.Random`` (seeded by the caller from its numpy generator) drives this sequential
    part: it is ~20x cheaper per scalar draw than numpy, and the loop makes ~5 draws per instance.
    """
    sent_start = np.concatenate([[0], np.cumsum(sent_lens)[:-1]]).tolist() if len(sent_lens) else []
    sl = sent_lens.tolist()
    doc_first = np.concatenate([[0], np.cumsum(doc_sents)[:-1]]).tolist() if len(doc_sents) else []
    nd = doc_sents.tolist()
    n_docs = len(nd)
    max_num_tokens = max_seq_length - 3
    a_s, a_l, b_s, b_l, rnd = [], [], [], [], []
    rand = rng.random

    def randint(lo: int, hi: int) -> int:  # inclusive, like random.randint, at a third of its cost
        return lo + int(rand() * (hi - lo + 1))

    for _ in range(dupe_factor):
        for d in range(n_docs):
            first, n = doc_first[d], nd[d]
            target = max_num_tokens
            if rand() < short_seq_prob:
                target = randint(2, max_num_tokens)
            chunk_first, chunk_n, chunk_len = first, 0, 0
            i = 0
            while i < n:
                chunk_n += 1
                chunk_len += sl[first + i]
                if i == n - 1 or chunk_len >= target:
                    a_end = randint(1, chunk_n - 1) if chunk_n >= 2 else 1
                    a_start = sent_start[chunk_first]
                    a_len = sent_start[chunk_first + a_end - 1] + sl[chunk_first + a_end - 1] - a_start
                    if chunk_n == 1 or rand() < 0.5:
                        target_b = target - a_len
                        r = d
                        for _ in range(10):  # BERT's 10 tries at another document
                            r = randint(0, n_docs - 1)
                            if r != d:
                                break
                        rf, rn = doc_first[r], nd[r]
                        j = rf + randint(0, rn - 1)
                        b_start, b_len = sent_start[j], 0
                        while j < rf + rn:
                            b_len += sl[j]
                            j += 1
                            if b_len >= target_b:
                                break
                        i -= chunk_n - a_end  # put the unused sentences back
                        is_rnd = 1
                    else:
                        last = chunk_first + chunk_n - 1
                        b_start = sent_start[chunk_first + a_end]
                        b_len = sent_start[last] + sl[last] - b_start
                        is_rnd = 0
                    a_s.append(a_start)
                    a_l.append(a_len)
                    b_s.append(b_start)
                    b_l.append(b_len)
                    rnd.append(is_rnd)
                    chunk_first, chunk_n, chunk_len = first + i + 1, 0, 0
                i += 1
    as_arr = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731
    return Plan(as_arr(a_s), as_arr(a_l), as_arr(b_s), as_arr(b_l), np.asarray(rnd, dtype=np.int8))


def truncate_pairs(plan: Plan, max_num_tokens: int, rng: np.random.Generator) -> Plan:
    """BERT's ``truncate_seq_pair`` for all instances: shorten the longer segment one token at a time
    until the pair fits; each removed token comes off the front or the back with probability 1/2."""
    la, lb = plan.a_len.copy(), plan.b_len.copy()
    excess = np.maximum(la + lb - max_num_tokens, 0)
    # Removing from the longer side first equalises the two, then the removals alternate (b on ties).
    gap = np.abs(la - lb)
    first = np.minimum(excess, gap)
    rest = excess - first
    longer_a = la > lb
    cut_a = np.where(longer_a, first, 0) + rest // 2
    cut_b = np.where(longer_a, 0, first) + rest // 2
    odd = (rest % 2).astype(bool)
    # After equalising, the next removal goes to b (ties go to b), then a, ... so an odd remainder goes to b.
    cut_b += odd
    front_a = rng.binomial(cut_a, 0.5)
    front_b = rng.binomial(cut_b, 0.5)
    return Plan(plan.a_start + front_a, la - cut_a, plan.b_start + front_b, lb - cut_b, plan.is_random_next)


def assemble(tokens: np.ndarray, plan: Plan, max_seq_length: int, special: SpecialIds) -> dict[str, np.ndarray]:
    """[CLS] A [SEP] B [SEP] + zero padding, as ``input_ids`` / ``input_mask`` / ``segment_ids``."""
    n, L = len(plan.a_len), max_seq_length
    # int32 throughout: a chunk holds far fewer than 2**31 tokens, and [N, 512] int64 temporaries
    # would double the memory traffic that dominates this function.
    col = np.arange(L, dtype=np.int32)[None, :]
    a_start, b_start = plan.a_start.astype(np.int32), plan.b_start.astype(np.int32)
    la = plan.a_len.astype(np.int32)[:, None]
    length = plan.a_len + plan.b_len + 3
    # One gather for every cell (clipped for the non-token cells), then overwrite specials and padding:
    # faster than boolean-mask fancy indexing on [N, 512].
    src = np.where(col <= la, (a_start - 1)[:, None] + col, (b_start[:, None] - la - 2) + col)
    np.clip(src, 0, len(tokens) - 1, out=src)
    ids = tokens[src]
    in_seq = col < length.astype(np.int32)[:, None]
    ids[~in_seq] = special.pad
    rows = np.arange(n)
    ids[:, 0] = special.cls
    ids[rows, plan.a_len + 1] = special.sep
    ids[rows, length - 1] = special.sep
    segment_ids = (col >= la + 2) & in_seq
    return {"input_ids": ids.astype(np.int32, copy=False), "input_mask": in_seq.view(np.int8),
            "segment_ids": segment_ids.view(np.int8), "length": length}


def mask_tokens(input_ids: np.ndarray, length: np.ndarray, cfg: MaskingConfig, special: SpecialIds,
                replace_ids: np.ndarray, rng: np.random.Generator,
                is_subword: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """BERT's ``create_masked_lm_predictions`` for a batch: choose ``min(max_pred, max(1,
    round(len * masked_lm_prob)))`` positions among non-[CLS]/[SEP]/[PAD] tokens; 80% -> [MASK],
    10% kept, 10% a random token. Modifies ``input_ids`` in place; returns positions / ids, zero-padded."""
    n, L = input_ids.shape
    P = cfg.max_predictions_per_seq
    col = np.arange(L)[None, :]
    cand = (col < length[:, None]) & (input_ids != special.cls) & (input_ids != special.sep) & \
           (input_ids != special.pad)
    num_to_predict = np.minimum(P, np.maximum(1, np.rint(length * cfg.masked_lm_prob).astype(np.int64)))
    num_to_predict = np.minimum(num_to_predict, cand.sum(1))
    if cfg.whole_word_mask and is_subword is not None:
        chosen = _choose_whole_words(input_ids, cand, num_to_predict, is_subword, rng)
    else:
        keys = rng.random((n, L), dtype=np.float32)
        keys[~cand] = 2.0
        # The P smallest keys per row (unordered, O(L)), then ordered among themselves (O(P log P)).
        part = np.argpartition(keys, P - 1, axis=1)[:, :P]
        order = np.take_along_axis(part, np.argsort(np.take_along_axis(keys, part, axis=1), axis=1), axis=1)
        chosen = np.zeros((n, L), dtype=bool)
        rows = np.repeat(np.arange(n), P)
        take = (np.arange(P)[None, :] < num_to_predict[:, None]).ravel()
        chosen[rows[take], order.ravel()[take]] = True
    # Positions in ascending order, as the reference sorts masked_lms by index.
    counts = chosen.sum(1)
    r, c = np.nonzero(chosen)  # row-major: ascending column within each row
    slot = np.arange(len(r)) - np.repeat(np.cumsum(counts) - counts, counts)
    positions = np.zeros((n, P), dtype=np.int32)
    labels = np.zeros((n, P), dtype=np.int32)
    positions[r, slot] = c
    labels[r, slot] = input_ids[r, c]
    to_mask, to_rand = replacement_kinds(rng.random(len(r)))
    input_ids[r[to_mask], c[to_mask]] = special.mask
    input_ids[r[to_rand], c[to_rand]] = replace_ids[rng.integers(0, len(replace_ids), int(to_rand.sum()))]
    return {"masked_lm_positions": positions, "masked_lm_ids": labels}


def _choose_whole_words(input_ids, cand, num_to_predict, is_subword, rng):
    """BERT's whole-word selection, exactly: visit the words in random order and take each one whose
    pieces all still fit in ``num_to_predict``. Vectorised over rows, one step per word rank."""
    n, L = input_ids.shape
    # A word starts at every candidate that is not a "##" continuation of the previous candidate.
    cont = cand & is_subword[input_ids]
    cont[:, 1:] &= cand[:, :-1]
    cont[:, 0] = False
    start = cand & ~cont
    word = np.cumsum(start, axis=1) - 1  # word index within the row (meaningful where cand)
    n_words = start.sum(1)
    rows = np.repeat(np.arange(n), L)
    flat_word = np.where(cand, word, L).ravel()  # non-candidates go to a spare column
    sizes = np.bincount(rows * (L + 1) + flat_word, minlength=n * (L + 1)).reshape(n, L + 1)[:, :L]
    keys = rng.random((n, L))
    keys[np.arange(L)[None, :] >= n_words[:, None]] = 2.0  # non-existent words last
    order = np.argsort(keys, axis=1)  # rank -> word
    sizes_in_order = np.take_along_axis(sizes, order, axis=1)
    taken = np.zeros(n, dtype=np.int64)
    take = np.zeros((n, L), dtype=bool)
    for j in range(int(n_words.max(initial=0))):
        s = sizes_in_order[:, j]
        ok = (s > 0) & (taken + s <= num_to_predict)
        take[:, j] = ok
        taken += np.where(ok, s, 0)
    word_taken = np.zeros((n, L), dtype=bool)
    np.put_along_axis(word_taken, order, take, axis=1)
    return cand & np.take_along_axis(word_taken, np.clip(word, 0, L - 1), axis=1)


def plan_full_sentences(sent_lens: np.ndarray, doc_sents: np.ndarray, max_seq_length: int, short_seq_prob: float,
                        dupe_factor: int, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
    """RoBERTa's FULL-SENTENCES packing for MLM-only instances, ``dupe_factor`` times.

    Whole sentences are taken in order until the next one would not fit, crossing document ends; a
    [SEP] separates documents. Returns (start, length) ranges into the chunk's *stream*: the flat tokens
    with one [SEP] after each document (see ``document_stream``). Packing across documents rather than
    within one (DOC-SENTENCES) is RoBERTa's choice for fixed-size batches, and here it also matters for
    the corpus: a PubMed abstract is ~250 tokens, so within-document packing would leave about half of
    every phase-2 (512) sequence as padding. A sentence longer than the sequence is cut at its end.
    ``short_seq_prob`` keeps BERT's occasional shorter target, for the same train/test length reason."""
    max_num_tokens = max_seq_length - 2  # [CLS] ... [SEP]
    n_sents = len(sent_lens)
    sl = sent_lens.tolist()
    doc_of_sent = np.repeat(np.arange(len(doc_sents)), doc_sents)
    token_start = np.concatenate([[0], np.cumsum(sent_lens)[:-1]]) if n_sents else np.zeros(0, dtype=np.int64)
    stream_start = (token_start + doc_of_sent).tolist()  # one [SEP] per earlier document
    first_of_doc = np.zeros(n_sents, dtype=bool)
    first_of_doc[(np.cumsum(doc_sents) - doc_sents)[doc_sents > 0]] = True
    first = first_of_doc.tolist()
    rand = rng.random
    starts: list[int] = []
    lens: list[int] = []

    def target() -> int:
        return 2 + int(rand() * (max_num_tokens - 1)) if rand() < short_seq_prob else max_num_tokens

    for _ in range(dupe_factor):
        want, cur_start, cur_len = target(), 0, 0
        for i in range(n_sents):
            piece = sl[i] + (1 if first[i] and cur_len else 0)  # + the [SEP] closing the previous document
            if cur_len and cur_len + piece > want:
                starts.append(cur_start)
                lens.append(min(cur_len, max_num_tokens))
                want, cur_len, piece = target(), 0, sl[i]
            if cur_len == 0:
                cur_start = stream_start[i]
            cur_len += piece
        if cur_len:
            starts.append(cur_start)
            lens.append(min(cur_len, max_num_tokens))
    return np.asarray(starts, dtype=np.int64), np.asarray(lens, dtype=np.int64)


def document_stream(tokens: np.ndarray, sent_lens: np.ndarray, doc_sents: np.ndarray, sep: int) -> np.ndarray:
    """The chunk's tokens with a [SEP] after each document: what FULL-SENTENCES ranges index."""
    doc_end = np.cumsum(sent_lens)[np.cumsum(doc_sents) - 1] if len(doc_sents) else np.zeros(0, dtype=np.int64)
    return np.insert(tokens, doc_end, sep).astype(np.int32, copy=False)


def assemble_single(stream: np.ndarray, start: np.ndarray, length: np.ndarray, max_seq_length: int,
                    special: SpecialIds) -> dict[str, np.ndarray]:
    """[CLS] tokens [SEP] + zero padding, one segment (segment ids 0), as ``assemble`` does for pairs."""
    n, L = len(start), max_seq_length
    col = np.arange(L, dtype=np.int32)[None, :]
    src = (start.astype(np.int32) - 1)[:, None] + col
    np.clip(src, 0, max(len(stream) - 1, 0), out=src)
    ids = stream[src]
    total = (length + 2).astype(np.int32)
    in_seq = col < total[:, None]
    ids[~in_seq] = special.pad
    ids[:, 0] = special.cls
    ids[np.arange(n), total - 1] = special.sep
    return {"input_ids": ids.astype(np.int32, copy=False), "input_mask": in_seq.view(np.int8),
            "segment_ids": np.zeros((n, L), dtype=np.int8), "length": total.astype(np.int64)}


def build_instances(tokens: np.ndarray, sent_lens: np.ndarray, doc_sents: np.ndarray, cfg: MaskingConfig,
                    dupe_factor: int, special: SpecialIds, replace_ids: np.ndarray, rng: np.random.Generator,
                    is_subword: np.ndarray | None = None, batch: int = 4096, objective: str = "nsp"):
    """Yield batches of finished instances (dict of arrays in NVIDIA's schema) for one chunk of documents.
    ``objective`` 'nsp': BERT's segment pairs; 'mlm': FULL-SENTENCES single segments, next_sentence_labels 0."""
    py_rng = random.Random(int(rng.integers(0, 2**63)))
    if objective == "mlm":
        stream = document_stream(tokens, sent_lens, doc_sents, special.sep)
        starts, lens = plan_full_sentences(sent_lens, doc_sents, cfg.max_seq_length, cfg.short_seq_prob, dupe_factor,
                                           py_rng)
        perm = rng.permutation(len(starts))
        for s in range(0, len(perm), batch):
            idx = perm[s:s + batch]
            out = assemble_single(stream, starts[idx], lens[idx], cfg.max_seq_length, special)
            out.update(mask_tokens(out["input_ids"], out.pop("length"), cfg, special, replace_ids, rng, is_subword))
            out["next_sentence_labels"] = np.zeros(len(idx), dtype=np.int8)
            yield out
        return
    plan = plan_instances(sent_lens, doc_sents, cfg.max_seq_length, cfg.short_seq_prob, dupe_factor, py_rng)
    plan = truncate_pairs(plan, cfg.max_seq_length - 3, rng)
    perm = rng.permutation(len(plan.a_len))  # BERT shuffles all instances before writing
    for s in range(0, len(perm), batch):
        idx = perm[s:s + batch]
        sub = Plan(plan.a_start[idx], plan.a_len[idx], plan.b_start[idx], plan.b_len[idx], plan.is_random_next[idx])
        out = assemble(tokens, sub, cfg.max_seq_length, special)
        out.update(mask_tokens(out["input_ids"], out.pop("length"), cfg, special, replace_ids, rng, is_subword))
        out["next_sentence_labels"] = sub.is_random_next.astype(np.int8)
        yield out
