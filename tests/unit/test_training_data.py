"""HDF5 reader: rank split, labels, resumable position, clear errors for bad files."""

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from ort_training.data.hdf5 import IGNORE_INDEX, DataError, PretrainingDataLoader, Shard, list_hdf5_files, load_shard, rank_shards
from ort_training.data.synthetic import write_dataset, write_shard


def _files(n):
    return [Path(f"f{i}.hdf5") for i in range(n)]


@pytest.mark.parametrize("n_files,world", [(8, 2), (7, 3), (2, 4), (1, 2)])
def test_rank_shards_disjoint_and_complete(n_files, world):
    files = _files(n_files)
    per_rank = [rank_shards(files, epoch=3, seed=7, rank=r, world_size=world) for r in range(world)]
    covered = {(s.path, i) for shards in per_rank for s in shards for i in range(s.start, 60, s.step)}
    assert covered == {(f, i) for f in files for i in range(60)}  # every sample of every file, once
    total = sum(len(range(s.start, 60, s.step)) for shards in per_rank for s in shards)
    assert total == 60 * n_files
    assert rank_shards(files, 3, 7, 0, world) == per_rank[0]  # pure


def test_rank_shards_reshuffle_per_epoch_and_seed():
    files = _files(20)
    orders = {tuple(s.path for s in rank_shards(files, e, seed, 0, 1)) for e in range(3) for seed in (1, 2)}
    assert len(orders) == 6


def test_labels_use_ignore_index(tmp_path):
    path = write_shard(tmp_path / "a_training.hdf5", 16, seq_len=32, max_pred=5, vocab_size=100)
    data = load_shard(Shard(path))
    with h5py.File(path) as f:
        pos, ids = f["masked_lm_positions"][:], f["masked_lm_ids"][:]
    expected = np.where(pos > 0, ids, IGNORE_INDEX)
    assert np.array_equal(data["masked_lm_labels"].numpy(), expected)
    assert (expected == IGNORE_INDEX).any() and (expected != IGNORE_INDEX).any()
    assert data["input_ids"].dtype == torch.int64 and data["next_sentence_labels"].shape == (16,)


def test_loader_resumes_at_exact_batch(tmp_path):
    files = list_hdf5_files(write_dataset(tmp_path, 3, 20, seq_len=16, max_pred=3, vocab_size=50))
    ref = PretrainingDataLoader(files, 6, seed=1)
    ref_batches = [b for _, b in zip(range(14), ref)]  # > one epoch (3 files x 3 batches)
    first = PretrainingDataLoader(files, 6, seed=1)
    it = iter(first)
    for _ in range(5):
        next(it)
    resumed = PretrainingDataLoader(files, 6, seed=1)
    resumed.load_state_dict(first.state_dict())
    for expected, got in zip(ref_batches[5:], resumed):
        assert torch.equal(expected["input_ids"], got["input_ids"])
    assert len({tuple(b["input_ids"][0].tolist()) for b in ref_batches[:9]}) == 9  # one epoch: 9 distinct batches
    for loader in (ref, first, resumed):
        loader.close()


def test_list_files_prefers_split_name(tmp_path):
    write_dataset(tmp_path, 2, 4, seq_len=16, max_pred=3, split="training")
    write_dataset(tmp_path, 1, 4, seq_len=16, max_pred=3, split="test")
    assert len(list_hdf5_files(tmp_path, "training")) == 2
    assert len(list_hdf5_files(tmp_path, "test")) == 1
    # Held-out data must match: a folder of training shards is not silently evaluated on.
    assert len(list_hdf5_files(tmp_path, "x")) == 3  # training input: any *.hdf5 when none match
    with pytest.raises(DataError, match="no \\*.hdf5 file has 'x' in its name .*held-out"):
        list_hdf5_files(tmp_path, "x", require_match=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no \\*.hdf5 files found"):
        list_hdf5_files(tmp_path / "empty")
    with pytest.raises(DataError, match="missing: input directory does not exist"):
        list_hdf5_files(tmp_path / "missing")


def test_corrupt_file_error_names_it(tmp_path):
    bad = tmp_path / "broken_training_0.hdf5"
    bad.write_bytes(b"this is not hdf5" * 100)
    with pytest.raises(DataError, match="broken_training_0.hdf5.*corrupt"):
        load_shard(Shard(bad))


def test_schema_mismatch_error_names_file_and_key(tmp_path):
    path = tmp_path / "wrong_training_0.hdf5"
    with h5py.File(path, "w") as f:
        f["input_ids"] = np.zeros((4, 8), dtype=np.int32)
        f["input_mask"] = np.zeros((4, 8), dtype=np.int32)
    with pytest.raises(DataError, match="wrong_training_0.hdf5.*missing datasets.*segment_ids"):
        load_shard(Shard(path))
    with h5py.File(path, "a") as f:
        f["segment_ids"] = np.zeros((4, 7), dtype=np.int32)
        f["masked_lm_positions"] = np.zeros((4, 2), dtype=np.int32)
        f["masked_lm_ids"] = np.zeros((4, 2), dtype=np.int32)
        f["next_sentence_labels"] = np.zeros((4,), dtype=np.int32)
    with pytest.raises(DataError, match="wrong_training_0.hdf5: segment_ids has shape"):
        load_shard(Shard(path))


def test_loader_raises_data_error_for_bad_file_among_good(tmp_path):
    write_dataset(tmp_path, 1, 8, seq_len=16, max_pred=3)
    (tmp_path / "zz_training_9.hdf5").write_bytes(b"\x00" * 64)
    loader = PretrainingDataLoader(list_hdf5_files(tmp_path), 4, seed=0)
    with pytest.raises(DataError, match="zz_training_9.hdf5"):
        for _ in zip(range(10), loader):
            pass
    loader.close()
