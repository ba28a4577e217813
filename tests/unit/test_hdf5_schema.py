"""bundle.hdf5_schema and the trainer's reader: range checks name file and dataset; list_hdf5_files refuses
test-only inputs, half-built data_prep folders and mixed shapes, and still reads folders made by other tools."""

import json

import h5py
import numpy as np
import pytest

from bundle import hdf5_schema
from ort_training.data.hdf5 import DataError, Shard, list_hdf5_files, load_shard
from ort_training.data.synthetic import write_dataset, write_shard


def test_schema_is_nvidias():
    """The published format, written out once here so a change to the module cannot pass unnoticed."""
    assert {d.name: (np.dtype(d.dtype).name, d.width) for d in hdf5_schema.DATASETS} == {
        "input_ids": ("int32", "L"), "input_mask": ("int8", "L"), "segment_ids": ("int8", "L"),
        "masked_lm_positions": ("int32", "P"), "masked_lm_ids": ("int32", "P"), "next_sentence_labels": ("int8", None)}
    assert hdf5_schema.PAD_POSITION == 0
    z = hdf5_schema.zeros(3, 16, 4)
    assert z["input_ids"].shape == (3, 16) and z["masked_lm_ids"].shape == (3, 4) and z["next_sentence_labels"].shape == (3,)


def _good(tmp_path, name="x_training_0.hdf5"):
    path = write_shard(tmp_path / name, 6, seq_len=16, max_pred=3, vocab_size=50)
    with h5py.File(path, "r") as f:
        return path, {k: f[k][:] for k in hdf5_schema.KEYS}


@pytest.mark.parametrize(("key", "value", "message"), [
    ("input_ids", 50, r"input_ids holds 50 .*\[0, 50\) for a vocabulary of 50"),
    ("input_ids", -1, r"input_ids holds -1 .*must be in"),
    ("masked_lm_ids", 77, r"masked_lm_ids holds 77"),
    ("segment_ids", 2, r"segment_ids holds 2 .*0 or 1"),
    ("segment_ids", -1, r"segment_ids holds -1"),
    ("next_sentence_labels", 3, r"next_sentence_labels holds 3 .*0 or 1"),
    ("masked_lm_positions", 16, r"masked_lm_positions holds 16 .*inside the sequence \[0, 16\)"),
    ("masked_lm_positions", -2, r"masked_lm_positions holds -2"),
])
def test_reader_range_checks_name_file_and_dataset(tmp_path, key, value, message):
    path, arrays = _good(tmp_path)
    load_shard(Shard(path), vocab_size=50)  # the untouched file passes
    arrays[key] = arrays[key].astype(np.int32)
    arrays[key].reshape(-1)[5] = value
    hdf5_schema.write_file(path, arrays)
    with pytest.raises(DataError, match="x_training_0.hdf5: " + message):
        load_shard(Shard(path), vocab_size=50)


def test_negative_ids_are_refused_without_a_vocab_size(tmp_path):
    path, arrays = _good(tmp_path)
    arrays["input_ids"] = arrays["input_ids"].astype(np.int32)
    arrays["input_ids"][0, 3] = -5
    hdf5_schema.write_file(path, arrays)
    with pytest.raises(DataError, match="input_ids holds -5 .*must not be negative"):
        load_shard(Shard(path))


def test_test_only_folder_is_refused_for_training(tmp_path):
    write_dataset(tmp_path / "d", 2, 4, seq_len=16, max_pred=3, split="test")
    with pytest.raises(DataError, match=r"holds only held-out files \(2 \*test\*.hdf5.*no \*training\*.hdf5"):
        list_hdf5_files(tmp_path / "d", "training")
    assert len(list_hdf5_files(tmp_path / "d", "test", require_match=True)) == 2
    # Names from other tools (neither training nor test) are still read, without the test files beside them.
    write_shard(tmp_path / "d" / "books_wiki_0.hdf5", 4, seq_len=16, max_pred=3)
    assert [f.name for f in list_hdf5_files(tmp_path / "d", "training")] == ["books_wiki_0.hdf5"]


def test_mixed_sequence_lengths_are_refused(tmp_path):
    write_dataset(tmp_path / "mix" / "p1", 2, 4, seq_len=16, max_pred=3)
    write_dataset(tmp_path / "mix" / "p2", 1, 4, seq_len=32, max_pred=5)
    with pytest.raises(DataError, match=r"mixes files of different shapes \(seq_len 16 / max_pred 3: 2 files .*"
                                        r"seq_len 32 / max_pred 5: 1 files"):
        list_hdf5_files(tmp_path / "mix")
    assert len(list_hdf5_files(tmp_path / "mix" / "p1")) == 2


def test_half_built_data_prep_folder_is_refused_and_nvidia_folders_accepted(tmp_path):
    d = tmp_path / "pubmed"
    write_dataset(d, 2, 4, seq_len=16, max_pred=3, split="training")
    assert len(list_hdf5_files(d)) == 2  # NVIDIA-made: no manifest, no trace of data_prep
    # A killed data_prep: progress records, one finished file, a temporary one, no manifest.
    (d / ".progress").mkdir()
    (d / ".synthetic_training_2.hdf5.tmp-4242").write_bytes(b"half")
    with pytest.raises(DataError, match=r"did not finish \(found temporary files \['.synthetic_training_2.hdf5.tmp-4242'\]"
                                        r" and no manifest.json\); re-run"):
        list_hdf5_files(d)
    (d / ".synthetic_training_2.hdf5.tmp-4242").unlink()
    with pytest.raises(DataError, match=r"found data_prep's .progress/ records and no manifest.json"):
        list_hdf5_files(d)
    # A finished one: the manifest lists every file with its size.
    sizes = {f.name: f.stat().st_size for f in d.glob("*.hdf5")}
    (d / "manifest.json").write_text(json.dumps({"stage": "hdf5", "output_sizes": sizes}))
    assert len(list_hdf5_files(d)) == 2
    # ... and files added or removed since then are noticed.
    write_shard(d / "synthetic_training_7.hdf5", 4, seq_len=16, max_pred=3)
    with pytest.raises(DataError, match=r"do not match data_prep's manifest.json \(not in the manifest \['synthetic_training_7"):
        list_hdf5_files(d)
    (d / "synthetic_training_7.hdf5").unlink()
    (d / "synthetic_training_0.hdf5").unlink()
    with pytest.raises(DataError, match=r"missing \['synthetic_training_0.hdf5'\]"):
        list_hdf5_files(d)
