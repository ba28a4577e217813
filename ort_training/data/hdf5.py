"""HDF5 reader for NVIDIA's BERT pretraining schema, split across ranks, resumable.

Each file holds `input_ids`, `input_mask`, `segment_ids` [N, seq], `masked_lm_positions`,
`masked_lm_ids` [N, max_pred] (zero-padded; position 0 is [CLS] and is never masked) and
`next_sentence_labels` [N]. A file is small enough to load whole (NVIDIA does the same), so the
reader loads one file into memory while the next one is read in a background thread.

The order of files and of samples inside a file is a pure function of (seed, epoch, rank), so the
resume state is three integers: epoch, file index and micro-batch index.
"""

from __future__ import annotations

import json
import logging
import os
import random
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
import torch

from bundle import hdf5_schema
from bundle.digest import list_files
from ort_training.errors import UsageError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
SEQ_KEYS, PRED_KEYS, KEYS = hdf5_schema.SEQ_KEYS, hdf5_schema.PRED_KEYS, hdf5_schema.KEYS
DATA_PREP_MANIFEST = "manifest.json"
"""Written last by data_prep into each folder of .hdf5 files: present and matching = the folder is complete."""


class DataError(UsageError):
    """A data file is missing, unreadable or does not follow the schema."""


def list_hdf5_files(input_dir: str | Path, split: str = "training", require_match: bool = False) -> list[Path]:
    """Sorted `*.hdf5` under `input_dir` whose name contains `split`; if none do, all `*.hdf5` (other tools'
    names), unless `require_match` (held-out data: falling back would silently evaluate on training files).

    Refused, each with what was found: training asked of a folder holding only *test* files; a folder
    data_prep had not finished (its temporary files or progress records without a matching manifest);
    files of different sequence lengths or prediction widths mixed in one input; a dataset that is an HDF5 external
    link or a virtual dataset reading a file outside the input folder. Folders and files are listed by
    bundle.digest.list_files (symbolic links to files and to folders are followed alike)."""
    root = Path(input_dir)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "input directory does not exist"
        raise DataError(f"{root}: {what}; pass the folder written by data_prep")
    # Hidden paths are temporaries and bookkeeping (data_prep's .progress/, atomic-write leftovers).
    try:
        files = list_files(root, keep=lambda name: name.endswith(".hdf5"))
    except FileNotFoundError as exc:
        raise DataError(str(exc)) from None
    matching = [f for f in files if split in f.name]
    if require_match and files and not matching:
        raise DataError(f"{root}: no *.hdf5 file has '{split}' in its name ({len(files)} other *.hdf5 files found); "
                        f"pass a folder of held-out shards (data_prep names them *{split}*.hdf5)")
    if split == "training" and files and not matching:
        others = [f for f in files if "test" not in f.name]
        if not others:
            raise DataError(f"{root}: holds only held-out files ({len(files)} *test*.hdf5, e.g. {files[0].name}) and no "
                            f"*training*.hdf5; training on them would use the test split. Point --input_dir at the "
                            f"training shards (data_prep writes <dataset>_training_<i>.hdf5 beside them)")
        files = others
    else:
        files = matching or files
    if not files:
        raise DataError(f"{root}: no *.hdf5 files found; run data_prep first or point --input_dir at its output")
    for folder in sorted({f.parent for f in files}):
        _check_complete(folder)
    for f in files:
        _check_no_outside_links(root, f)
    _check_one_shape(root, files)
    return files


def _check_no_outside_links(root: Path, path: Path) -> None:
    """An HDF5 dataset can be an external link or a virtual dataset that reads another file: one outside --input_dir
    (the folder the run was pointed at, and checked) is refused. Read with h5py's link API, nothing followed."""
    inside = Path(os.path.realpath(root))

    def outside(target: str) -> str | None:
        if target in ("", "."):  # the file itself
            return None
        real = Path(os.path.realpath(path.parent / target))
        return None if real == inside or inside in real.parents else str(real)

    def walk(group, prefix: str) -> None:
        for name in group:
            link = group.get(name, getlink=True)
            where = f"{prefix}{name}"
            if isinstance(link, h5py.ExternalLink):
                if (target := outside(link.filename)) is not None:
                    raise DataError(f"{path}: dataset '{where}' is an HDF5 external link to {target}, outside {root}; "
                                    f"copy the data into the file (h5py: f.copy) or pass a folder that holds it")
                continue
            if not isinstance(link, h5py.HardLink):
                continue  # a soft link names an object of this same file
            obj = group[name]
            if isinstance(obj, h5py.Group):
                walk(obj, f"{where}/")
            elif isinstance(obj, h5py.Dataset) and obj.is_virtual:
                for source in obj.virtual_sources():
                    if (target := outside(source.file_name)) is not None:
                        raise DataError(f"{path}: dataset '{where}' is a virtual dataset reading {target}, outside {root}; "
                                        f"materialize it (copy its values into the file) or pass a folder that holds it")

    try:
        with h5py.File(path, "r") as f:
            walk(f, "")
    except DataError:
        raise
    except Exception:  # noqa: BLE001 -- unreadable or not HDF5: load_shard names the file with the details
        return


def _check_complete(folder: Path) -> None:
    """A folder that data_prep was writing must carry data_prep's manifest, matching its files. Folders made by
    other tools (NVIDIA's create_datasets_from_start.sh) never had one and show no trace of data_prep: accepted."""
    manifest = folder / DATA_PREP_MANIFEST
    temps = sorted(p.name for p in folder.glob(".*.hdf5.tmp-*"))
    progress = (folder / ".progress").is_dir()
    if not manifest.exists():
        if temps or progress:
            found = f"temporary files {temps[:3]}" if temps else "data_prep's .progress/ records"
            raise DataError(f"{folder}: a data_prep run that did not finish (found {found} and no {DATA_PREP_MANIFEST}); "
                            f"re-run the same `python -m data_prep` command to complete it (it resumes)")
        return
    try:
        m = json.loads(manifest.read_text())
        sizes = m["output_sizes"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{manifest}: unreadable data_prep manifest ({exc}); re-run data_prep for this folder") from exc
    listed = {Path(rel).name: size for rel, size in sizes.items() if rel.endswith(".hdf5")}
    on_disk = {f.name: f.stat().st_size for f in folder.glob("*.hdf5")}
    missing = sorted(set(listed) - set(on_disk))
    extra = sorted(set(on_disk) - set(listed))
    changed = sorted(n for n in set(listed) & set(on_disk) if listed[n] != on_disk[n])
    if missing or extra or changed or temps:
        what = "; ".join(f"{label} {names[:3]}" for label, names in (("missing", missing), ("not in the manifest", extra),
                                                                      ("changed size", changed), ("temporary", temps)) if names)
        raise DataError(f"{folder}: the *.hdf5 files do not match data_prep's {DATA_PREP_MANIFEST} ({what}); a run "
                        f"was interrupted or files were edited: re-run `python -m data_prep` for this folder")


def _check_one_shape(root: Path, files: list[Path]) -> None:
    """One input, one (seq_len, max_pred): a mix (phase-1 and phase-2 folders under one root) would train on
    both lengths silently. Unreadable files are left for `load_shard`, which names them when it opens them."""
    shapes: dict[tuple[int, int], list[Path]] = {}
    for f in files:
        try:
            _, seq_len, max_pred = hdf5_schema.read_shape(f)
        except Exception:  # noqa: BLE001 -- corrupt or non-schema: load_shard reports it with the details
            continue
        shapes.setdefault((seq_len, max_pred), []).append(f)
    if len(shapes) > 1:
        found = "; ".join(f"seq_len {s} / max_pred {p}: {len(fs)} files (e.g. {fs[0].relative_to(root)})"
                          for (s, p), fs in sorted(shapes.items()))
        raise DataError(f"{root}: mixes files of different shapes ({found}); point --input_dir at one phase's folder")


def read_data_manifest(files: list[Path]) -> dict | None:
    """data_prep's manifest of the folder holding `files` (its vocab, objective, ...), or None
    (NVIDIA-made folders have none)."""
    path = Path(files[0]).parent / DATA_PREP_MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Shard:
    """Samples `start::step` of one file, as read by one rank."""

    path: Path
    start: int = 0
    step: int = 1


def rank_shards(files: list[Path], epoch: int, seed: int, rank: int, world_size: int) -> list[Shard]:
    """This rank's shards for an epoch: files shuffled by (seed, epoch), then dealt out round-robin.

    With fewer files than ranks every rank reads every file but a disjoint stride of its samples,
    so ranks never see the same sample in an epoch either way.
    """
    order = list(files)
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    if len(order) >= world_size:
        return [Shard(p) for p in order[rank::world_size]]
    return [Shard(p, rank, world_size) for p in order]


def load_shard(shard: Shard, vocab_size: int | None = None, type_vocab_size: int | None = None) -> dict[str, torch.Tensor]:
    """Read and validate one file (shapes, dtypes, value ranges; token ids against `vocab_size` and segment ids
    against the model's `type_vocab_size` when given; the masking invariants, `check_masking`); returns int64
    tensors incl. `masked_lm_labels` (ignore index padded)."""
    path = shard.path
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in KEYS if k not in f]
            if missing:
                raise DataError(f"{path}: missing datasets {missing}; expected NVIDIA's schema {list(KEYS)}")
            arrays = {k: np.asarray(f[k][shard.start :: shard.step]) for k in KEYS}
    except DataError:
        raise
    except Exception as exc:  # h5py raises OSError/KeyError flavours for truncated or non-HDF5 files
        raise DataError(f"{path}: cannot read HDF5 file ({exc}); it is corrupt or not HDF5 — regenerate it with data_prep") from exc
    try:
        hdf5_schema.validate(arrays, path, vocab_size)
    except hdf5_schema.SchemaError as exc:
        raise DataError(str(exc)) from None
    check_masking(arrays, shard)
    if type_vocab_size is not None and arrays["segment_ids"].size and int(arrays["segment_ids"].max()) >= type_vocab_size:
        row = shard.start + shard.step * int(np.argwhere(arrays["segment_ids"] >= type_vocab_size)[0][0])
        raise DataError(f"{path}: row {row} has segment id {int(arrays['segment_ids'].max())}, but the model config has "
                        f"type_vocab_size {type_vocab_size} (segment ids 0..{type_vocab_size - 1}); sentence pairs need "
                        "type_vocab_size 2: fix the config (--config_file)")
    out = {k: torch.from_numpy(arrays[k].astype(np.int64)) for k in KEYS}
    out["next_sentence_labels"] = out["next_sentence_labels"].reshape(-1)
    # Unused slots hold position 0 ([CLS] is never masked): turn them into ignored labels.
    out["masked_lm_labels"] = torch.where(out["masked_lm_positions"] > hdf5_schema.PAD_POSITION, out["masked_lm_ids"], IGNORE_INDEX)
    del out["masked_lm_ids"]
    return out


def check_masking(arrays: dict[str, np.ndarray], shard: Shard) -> None:
    """The schema's masking invariants, which the range checks cannot see (vectorised: O(rows x max_pred)):
    used prediction slots come first, then zero-padding (position 0 and label 0); used positions are strictly
    ascending and point at real tokens (input_mask 1), never at padding. A file that breaks them would train
    on [PAD] targets or silently drop predictions; the message names the file and the row."""
    pos, ids, mask = arrays["masked_lm_positions"], arrays["masked_lm_ids"], arrays["input_mask"]
    if pos.size == 0:
        return
    used = pos > hdf5_schema.PAD_POSITION
    problems = (
        (used[:, 1:] & ~used[:, :-1], "a used prediction slot after an unused one (position 0 must only pad the end)"),
        (used[:, 1:] & (pos[:, 1:] <= pos[:, :-1]), "masked positions are not strictly ascending"),
        (used & (np.take_along_axis(mask, pos.astype(np.int64), axis=1) == 0), "a masked position points at padding (input_mask 0)"),
        (~used & (ids != 0), "an unused prediction slot (position 0) holds a label other than 0"),
    )
    for bad, what in problems:
        if bad.any():
            i, slot = (int(x) for x in np.argwhere(bad)[0])
            row = shard.start + shard.step * i
            raise DataError(f"{shard.path}: row {row}: {what} (masked_lm_positions {pos[i].tolist()[:slot + 2]}...); the file breaks "
                            "the pretraining schema: regenerate it with data_prep")


@dataclass
class DataState:
    """Where the reader is: enough to resume at the exact next micro-batch."""

    epoch: int = 0
    file_index: int = 0
    batch_index: int = 0


class ShardedReader:
    """What every reader here shares: its position (`DataState`, the whole resume state), this rank's shards
    per epoch, and the one-thread prefetch pool. Subclasses set files/seed/rank/world_size/state/_pool."""

    def state_dict(self) -> dict:
        return asdict(self.state)

    def load_state_dict(self, state: dict) -> None:
        self.state = DataState(**state)

    def _shards(self, epoch: int) -> list[Shard]:
        return rank_shards(self.files, epoch, self.seed, self.rank, self.world_size)

    def _next_shard(self, epoch: int, file_index: int) -> Shard:
        shards = self._shards(epoch)
        return shards[file_index + 1] if file_index + 1 < len(shards) else self._shards(epoch + 1)[0]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


class PretrainingDataLoader(ShardedReader):
    """Infinite iterator of micro-batches for one rank (epochs roll over; the trainer stops at max_steps).

    Incomplete trailing batches of a file are dropped so every batch has the same shape (ORT and
    torch.compile then never re-export) and all ranks take the same number of steps.
    """

    def __init__(self, files: list[Path], batch_size: int, seed: int, rank: int = 0, world_size: int = 1, prefetch: bool = True,
                 vocab_size: int | None = None, type_vocab_size: int | None = None):
        if not files:
            raise DataError("no input files")
        self.files, self.batch_size, self.seed = list(files), batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.vocab_size = vocab_size  # token ids at or past it are refused when a file is opened
        self.type_vocab_size = type_vocab_size  # segment ids likewise (a config with type_vocab_size 1)
        self.state = DataState()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hdf5-prefetch") if prefetch else None
        self._pending: dict[Shard, Future] = {}

    def _get(self, shard: Shard) -> dict[str, torch.Tensor]:
        fut = self._pending.pop(shard, None)
        return fut.result() if fut is not None else load_shard(shard, self.vocab_size, self.type_vocab_size)

    def _prefetch(self, shard: Shard) -> None:
        if self._pool is not None and shard not in self._pending:
            self._pending[shard] = self._pool.submit(load_shard, shard, self.vocab_size, self.type_vocab_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        empty_epochs = 0
        while True:
            shards = self._shards(self.state.epoch)
            if self.state.file_index >= len(shards):
                self.state = DataState(self.state.epoch + 1, 0, 0)
                continue
            shard = shards[self.state.file_index]
            data = self._get(shard)
            self._prefetch(self._next_shard(self.state.epoch, self.state.file_index))
            n = data["input_ids"].shape[0]
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.state.epoch * 10_007 + self.state.file_index * 101 + self.rank) % 2**63)
            perm = torch.randperm(n, generator=g)
            n_batches = n // self.batch_size
            if n_batches == 0:
                logger.warning("%s: %d samples < micro-batch %d on rank %d; skipped", shard.path, n, self.batch_size, self.rank)
            empty_epochs = empty_epochs + 1 if n_batches == 0 else 0
            if empty_epochs > len(shards):
                raise DataError(f"{self.files[0].parent}: no file holds a full micro-batch of {self.batch_size} samples for rank {self.rank}")
            while self.state.batch_index < n_batches:
                idx = perm[self.state.batch_index * self.batch_size : (self.state.batch_index + 1) * self.batch_size]
                self.state.batch_index += 1  # advanced before yielding: a checkpoint taken now resumes after this batch
                yield {k: v[idx] for k, v in data.items()}
            self.state = DataState(self.state.epoch, self.state.file_index + 1, 0)


def held_out_batches(files: list[Path], batch_size: int, max_sequences: int | None = None,
                     vocab_size: int | None = None, type_vocab_size: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Every sequence of `files` once, in file order, in batches of `batch_size` (the last one of each
    file may be smaller); stops after `max_sequences`. Unlike the training reader, never cycles."""
    left = max_sequences
    for path in files:
        data = load_shard(Shard(Path(path)), vocab_size, type_vocab_size)
        n = data["input_ids"].shape[0]
        if left is not None:
            n = min(n, left)
        for start in range(0, n, batch_size):
            yield {k: v[start:min(start + batch_size, n)] for k, v in data.items()}
        if left is not None:
            left -= n
            if left <= 0:
                return
