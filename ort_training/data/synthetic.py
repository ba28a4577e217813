"""Synthetic NVIDIA-schema HDF5 shards and tiny configs, for tests and the backend benchmark.

Random token ids carry no language, but they exercise exactly the reader, shapes and costs of real
data, and they take milliseconds to write instead of a data_prep run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bundle import hdf5_schema
from bundle.atomic import atomic_path

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_shard(path: str | Path, n: int, seq_len: int = 128, max_pred: int = 20, vocab_size: int = 1000, seed: int = 0,
                full_predictions: bool = False) -> Path:
    """One HDF5 file with NVIDIA's datasets; sample i is [CLS] A [SEP] B [SEP] with random ids and masks.

    `full_predictions` masks exactly max_pred tokens per sample (equal counts make a mean over
    micro-batch means equal the mean over the whole batch, which the accumulation test needs)."""
    rng = np.random.default_rng(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    a = hdf5_schema.zeros(n, seq_len, max_pred)
    input_ids, input_mask, segment_ids = a["input_ids"], a["input_mask"], a["segment_ids"]
    positions, ids = a["masked_lm_positions"], a["masked_lm_ids"]
    for i in range(n):
        length = int(rng.integers(seq_len // 2, seq_len + 1))
        a_len = int(rng.integers(1, length - 3))
        toks = rng.integers(len(SPECIAL), vocab_size, size=length)
        toks[0], toks[a_len + 1], toks[length - 1] = 2, 3, 3
        input_ids[i, :length] = toks
        input_mask[i, :length] = 1
        segment_ids[i, a_len + 2 : length] = 1
        n_pred = max_pred if full_predictions else int(rng.integers(1, max_pred + 1))
        candidates = [j for j in range(1, length) if toks[j] > 4]
        chosen = np.sort(rng.choice(candidates, size=min(n_pred, len(candidates)), replace=False))
        positions[i, : len(chosen)] = chosen
        ids[i, : len(chosen)] = toks[chosen]
        input_ids[i, chosen] = 4  # [MASK]
    a["next_sentence_labels"][:] = rng.integers(0, 2, size=n)
    with atomic_path(path) as tmp:
        hdf5_schema.write_file(tmp, a)
    return path


def write_dataset(root: str | Path, n_files: int, n_per_file: int, seq_len: int = 128, max_pred: int = 20,
                  vocab_size: int = 1000, seed: int = 0, split: str = "training", full_predictions: bool = False) -> Path:
    root = Path(root)
    for i in range(n_files):
        write_shard(root / f"synthetic_{split}_{i}.hdf5", n_per_file, seq_len, max_pred, vocab_size, seed * 1000 + i, full_predictions)
    return root


def write_vocab(path: str | Path, size: int) -> Path:
    """A WordPiece vocab of `size` entries: the special tokens, then placeholder words."""
    words = SPECIAL + [f"w{i}" for i in range(size - len(SPECIAL))]
    Path(path).write_text("\n".join(words) + "\n")
    return Path(path)


def write_bert_config(path: str | Path, vocab_size: int = 1000, hidden: int = 64, layers: int = 2, heads: int = 2,
                      dropout: float = 0.1, max_position: int = 512) -> Path:
    cfg = dict(attention_probs_dropout_prob=dropout, hidden_act="gelu", hidden_dropout_prob=dropout, hidden_size=hidden,
               initializer_range=0.02, intermediate_size=4 * hidden, layer_norm_eps=1e-12, max_position_embeddings=max_position,
               num_attention_heads=heads, num_hidden_layers=layers, type_vocab_size=2, vocab_size=vocab_size)
    Path(path).write_text(json.dumps(cfg, indent=2) + "\n")
    return Path(path)


def tiny_setup(root: str | Path, n_files: int = 3, n_per_file: int = 64, seq_len: int = 64, max_pred: int = 10,
               vocab_size: int = 1003, dropout: float = 0.0, full_predictions: bool = False, **model) -> dict[str, str]:
    """Data, a vocab and a tiny BERT config under `root`; returns the flags that point at them.

    vocab 1003 is deliberately not a multiple of 8, so the padding and the export's trimming run."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    write_dataset(root / "data", n_files, n_per_file, seq_len, max_pred, vocab_size, full_predictions=full_predictions)
    write_vocab(root / "vocab.txt", vocab_size)
    write_bert_config(root / "bert_config.json", vocab_size, dropout=dropout, **model)
    return {"input_dir": str(root / "data"), "vocab_file": str(root / "vocab.txt"), "config_file": str(root / "bert_config.json")}
