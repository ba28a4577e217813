"""The packed token format (bundle.packed_schema): packing rule, round trip, validation errors, atomic writes."""

import h5py
import numpy as np
import pytest

from bundle import hdf5_schema
from bundle import packed_schema as ps

pytestmark = pytest.mark.stack_free  # no torch/transformers in what it tests: `make test` runs it, `make test-current` does not

CLS, SEP, PAD, MASK = 2, 3, 0, 4
ATTRS = ps.PackedAttrs(max_seq_length=10, vocab_size=100, cls_id=CLS, sep_id=SEP, pad_id=PAD, mask_id=MASK,
                       special_ids=(1,))


def _pack(docs, L=10):
    p = ps.SequencePacker(L, CLS, SEP)
    out = [s for d in docs for s in p.add(np.asarray(d))]
    return [s.tolist() for s in out + p.flush()]


def test_packing_keeps_document_boundaries_and_fills_greedily():
    assert _pack([[10, 11, 12], [20, 21, 22], [30, 31]]) == [
        [CLS, 10, 11, 12, SEP, 20, 21, 22, SEP],  # the third document (3 more tokens) does not fit behind these
        [CLS, 30, 31, SEP]]
    assert _pack([[10] * 8]) == [[CLS] + [10] * 8 + [SEP]]  # exactly L: closed at once
    assert _pack([[], [10]]) == [[CLS, 10, SEP]]  # a document with no tokens adds nothing


def test_long_documents_are_split_into_chunks_that_each_start_a_sequence():
    doc = list(range(10, 31))  # 21 tokens, L = 10
    seqs = _pack([[5, 6], doc, [40]])
    assert seqs[0] == [CLS, 5, 6, SEP]  # the long document starts a new sequence
    assert seqs[1] == [CLS] + doc[0:9] and seqs[2] == [CLS] + doc[9:18]  # full chunks, no [SEP]: the doc goes on
    assert seqs[3] == [CLS] + doc[18:] + [SEP, 40, SEP]  # its end carries the [SEP]; the next doc packs behind it
    # Every token of every document, in order, and one [SEP] per document.
    flat = [t for s in seqs for t in s if t != CLS]
    assert [t for t in flat if t != SEP] == [5, 6, *doc, 40] and flat.count(SEP) == 3
    # A document of exactly L - 1 tokens cannot take [CLS] and [SEP]: its last token moves to the next sequence.
    assert _pack([list(range(10, 19))]) == [[CLS, *range(10, 18)], [CLS, 18, SEP]]
    assert all(1 <= len(s) <= 10 for s in _pack([list(range(10, 90))]))


def test_round_trip_and_rank_stride(tmp_path):
    seqs = [np.arange(1 + i, dtype=np.int32) + 5 for i in range(7)]
    path = tmp_path / "x_training_0.hdf5"
    ps.write_file(path, seqs, ATTRS)
    assert ps.is_packed(path) and ps.read_attrs(path) == ATTRS
    assert ps.read_attrs(path).special_ids == (0, 1, 2, 3, 4)  # the structural ids are always special
    tokens, offsets = ps.read_sequences(path)
    assert tokens.dtype == np.int32 and offsets.dtype == np.int64 and offsets[0] == 0
    assert [s.tolist() for s in ps.iter_sequences(tokens, offsets)] == [s.tolist() for s in seqs]
    t1, o1 = ps.read_sequences(path, start=1, step=3)
    assert [s.tolist() for s in ps.iter_sequences(t1, o1)] == [seqs[i].tolist() for i in (1, 4)]
    with h5py.File(path) as f:
        assert f.attrs["format"] == ps.FORMAT and f.attrs["format_version"] == ps.FORMAT_VERSION


def test_nvidia_files_are_not_packed(tmp_path):
    nv = tmp_path / "nv.hdf5"
    hdf5_schema.write_file(nv, hdf5_schema.zeros(2, 8, 2))
    assert not ps.is_packed(nv) and not ps.is_packed(tmp_path / "missing.hdf5")
    with pytest.raises(ps.SchemaError, match=r"nv.hdf5: attribute format is None, not 'packed_tokens'"):
        ps.read_attrs(nv)


@pytest.mark.parametrize(("tokens", "offsets", "message"), [
    ([5, 6, 7], [0, 2, 2, 3], r"sequence 1 length 0; lengths must be in \[1, max_seq_length 10\]"),
    ([5, 6, 7], [0, 3, 2, 3], r"sequence 1 length -1"),
    ([5] * 12, [0, 12], r"sequence 0 length 12"),
    ([5, 100], [0, 2], r"tokens holds 100 at 1; token ids must be in \[0, 100\)"),
    ([5, -1], [0, 2], r"tokens holds -1 at 1"),
    ([5, 6], [1, 2], r"offsets must start at 0 and end at len\(tokens\) = 2"),
    ([5, 6], [0, 1], r"offsets must start at 0 and end at len\(tokens\) = 2"),
])
def test_validate_names_file_and_dataset(tokens, offsets, message):
    with pytest.raises(ps.SchemaError, match=f"^f.hdf5: .*{message}"):
        ps.validate(np.asarray(tokens), np.asarray(offsets, dtype=np.int64), ATTRS, "f.hdf5")


def test_bad_files_are_refused_with_their_name(tmp_path):
    path = tmp_path / "p.hdf5"
    ps.write_file(path, [np.asarray([5, 6])], ATTRS)
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(ps.SchemaError, match=r"p.hdf5: format_version 99; this reader knows 1"):
        ps.read_sequences(path)
    ps.write_file(path, [np.asarray([5, 6])], ATTRS)
    with h5py.File(path, "a") as f:
        del f.attrs["mask_id"]
    with pytest.raises(ps.SchemaError, match=r"p.hdf5: missing attribute 'mask_id'"):
        ps.read_attrs(path)
    with pytest.raises(ps.SchemaError, match=r"special ids \{'mask_id': 100\} outside the vocabulary"):
        ps.PackedAttrs(10, 100, CLS, SEP, PAD, 100, ())
    with pytest.raises(ps.SchemaError, match="max_seq_length 9000"):
        ps.SequencePacker(9000, CLS, SEP)


def test_writer_is_atomic_and_streams(tmp_path):
    path = tmp_path / "w.hdf5"
    with pytest.raises(RuntimeError):
        with ps.PackedWriter(path, ATTRS) as w:
            w.write([np.asarray([5, 6])])
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary
    with pytest.raises(ps.SchemaError, match="token id outside"):  # a failing final flush renames nothing either
        with ps.PackedWriter(path, ATTRS) as w:
            w.write([np.asarray([5, 700])])
    assert list(tmp_path.iterdir()) == []
    seqs = [np.full(1 + i % 10, i % 90 + 5, dtype=np.int32) for i in range(500)]
    with ps.PackedWriter(path, ATTRS, buffer_tokens=64) as w:  # many small appends
        for i in range(0, 500, 7):
            w.write(seqs[i:i + 7])
    tokens, offsets = ps.read_sequences(path)
    assert w.sequences == 500 and w.tokens == len(tokens) == sum(map(len, seqs))
    assert all(np.array_equal(a, b) for a, b in zip(ps.iter_sequences(tokens, offsets), seqs))


def test_folder_name_rule():
    assert ps.packed_dir_name(1024) == "packed_seq_len_1024"
    assert ps.packed_data_dir("w", 8192, "pubmed").as_posix() == "w/packed_seq_len_8192/pubmed"
