"""NVIDIA's BERT pretraining HDF5 schema, defined once: data_prep writes it, ort_training reads it,
the test fixtures and ``ort_training.data.synthetic`` build it from here.

One file holds N instances of length L with at most P masked positions:

| dataset                | shape  | dtype | values                                                   |
| ---------------------- | ------ | ----- | -------------------------------------------------------- |
| `input_ids`            | [N, L] | int32 | token ids in [0, vocab); [PAD] (0) after the sequence     |
| `input_mask`           | [N, L] | int8  | 1 on tokens, 0 on padding                                 |
| `segment_ids`          | [N, L] | int8  | 0 = segment A, 1 = segment B                              |
| `masked_lm_positions`  | [N, P] | int32 | positions in [0, L), ascending; 0 = an unused slot        |
| `masked_lm_ids`        | [N, P] | int32 | original token ids of those positions; 0 in unused slots  |
| `next_sentence_labels` | [N]    | int8  | 1 = B is a random next segment, 0 = the real next one     |

Unused prediction slots hold position 0: position 0 is [CLS], which is never masked, so readers turn
``positions > 0`` into the label mask (NVIDIA's convention, kept so any NVIDIA reader loads our files).
Readers may accept any integer dtype (NVIDIA's own files use int64 in places); writers use these.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

import numpy as np

PAD_POSITION = 0
"""What an unused ``masked_lm_positions`` slot holds ([CLS]'s position, never a masked one)."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    dtype: type
    width: str | None
    """'L' (sequence length), 'P' (max predictions) or None for a 1-D dataset."""


DATASETS: tuple[DatasetSpec, ...] = (
    DatasetSpec("input_ids", np.int32, "L"),
    DatasetSpec("input_mask", np.int8, "L"),
    DatasetSpec("segment_ids", np.int8, "L"),
    DatasetSpec("masked_lm_positions", np.int32, "P"),
    DatasetSpec("masked_lm_ids", np.int32, "P"),
    DatasetSpec("next_sentence_labels", np.int8, None),
)
KEYS: tuple[str, ...] = tuple(d.name for d in DATASETS)
SEQ_KEYS: tuple[str, ...] = tuple(d.name for d in DATASETS if d.width == "L")
PRED_KEYS: tuple[str, ...] = tuple(d.name for d in DATASETS if d.width == "P")


class SchemaError(ValueError):
    """A file does not follow the schema; the message names the file and the dataset."""


def shape(spec: DatasetSpec, n: int | None, seq_len: int, max_pred: int) -> tuple:
    """The dataset's shape for N rows (None for a resizable row axis)."""
    return (n,) if spec.width is None else (n, seq_len if spec.width == "L" else max_pred)


def zeros(n: int, seq_len: int, max_pred: int) -> dict[str, np.ndarray]:
    """Zero-filled arrays of every dataset: all padding, all unused prediction slots."""
    return {d.name: np.zeros(shape(d, n, seq_len, max_pred), dtype=d.dtype) for d in DATASETS}


def write_file(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], compression: str | None = "gzip") -> None:
    """Write one complete file (the test fixtures' and synthetic data's writer; data_prep streams its own
    through the same specs). Not atomic: callers that need it wrap it in ``bundle.atomic.atomic_path``."""
    import h5py

    with h5py.File(path, "w") as f:
        for d in DATASETS:
            f.create_dataset(d.name, data=np.asarray(arrays[d.name], dtype=d.dtype), compression=compression)


def read_shape(path: str | os.PathLike) -> tuple[int, int, int]:
    """(instances, seq_len, max_pred) of a file from its metadata alone (no data is read)."""
    import h5py

    with h5py.File(path, "r") as f:
        n, seq_len = f["input_ids"].shape
        return n, seq_len, f["masked_lm_positions"].shape[1]


def validate(arrays: Mapping[str, np.ndarray], path: str | os.PathLike, vocab_size: int | None = None) -> tuple[int, int, int]:
    """Check shapes, dtypes and value ranges; returns (instances, seq_len, max_pred).

    Each check names the file and the dataset, because the alternative is a bare IndexError or a
    "Target out of bounds" from deep inside the model several steps later."""
    missing = [k for k in KEYS if k not in arrays]
    if missing:
        raise SchemaError(f"{path}: missing datasets {missing}; expected NVIDIA's schema {list(KEYS)}")
    ids = arrays["input_ids"]
    if ids.ndim != 2:
        raise SchemaError(f"{path}: input_ids must be 2-D [samples, seq_len], got shape {ids.shape}")
    n, seq_len = ids.shape
    for k in SEQ_KEYS:
        if arrays[k].shape != (n, seq_len):
            raise SchemaError(f"{path}: {k} has shape {arrays[k].shape}, expected {(n, seq_len)}")
    pos, lab = arrays["masked_lm_positions"], arrays["masked_lm_ids"]
    if pos.ndim != 2 or lab.shape != pos.shape:
        raise SchemaError(f"{path}: masked_lm_positions/masked_lm_ids must be equal 2-D shapes, got {pos.shape} "
                          f"and {lab.shape}")
    nsp = arrays["next_sentence_labels"]
    if nsp.reshape(-1).shape[0] != n or pos.shape[0] != n:
        raise SchemaError(f"{path}: datasets disagree on the number of samples ({n} in input_ids, {pos.shape[0]} in "
                          f"masked_lm_positions, {nsp.reshape(-1).shape[0]} in next_sentence_labels)")
    for k in KEYS:
        if not np.issubdtype(arrays[k].dtype, np.integer):
            raise SchemaError(f"{path}: {k} has dtype {arrays[k].dtype}, expected integers")
    if n == 0:
        return 0, seq_len, pos.shape[1]

    def check_range(key: str, lo: int, hi: int | None, what: str) -> None:
        a = arrays[key]
        if a.size == 0:
            return
        amin, amax = int(a.min()), int(a.max())
        if amin < lo or (hi is not None and amax >= hi):
            bad = amin if amin < lo else amax
            row = int(np.argwhere((a < lo) | ((a >= hi) if hi is not None else False))[0][0])
            raise SchemaError(f"{path}: {key} holds {bad} (sample {row}); {what}. The file was not made for this "
                              f"setup or is damaged: regenerate it with data_prep")

    vocab_what = f"token ids must be in [0, {vocab_size}) for a vocabulary of {vocab_size}" if vocab_size else \
        "token ids must not be negative"
    check_range("input_ids", 0, vocab_size, vocab_what)
    check_range("masked_lm_ids", 0, vocab_size, vocab_what)
    check_range("segment_ids", 0, 2, "segment ids must be 0 or 1")
    check_range("input_mask", 0, 2, "the attention mask must be 0 or 1")
    check_range("next_sentence_labels", 0, 2, "next-sentence labels must be 0 or 1")
    check_range("masked_lm_positions", 0, seq_len, f"masked positions must lie inside the sequence [0, {seq_len})")
    return n, seq_len, pos.shape[1]
