"""Stage `packed` end to end (issue 14 #3, #4): the bundled PubMed sample -> shards -> packed sequences, with
BERT's WordPiece vocab.txt and with a byte-level BPE trained by the vocab stage; resume, the manifest's
counts, the trainer's file listing and the load-time-masking loader on the result, and one-line refusals."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_runs import run_data_prep as _run

from bundle import layout
from bundle import packed_schema as ps

ROOT = Path(__file__).parents[2]
ASSETS = ROOT / "tests" / "assets" / "pubmed"
VOCAB = ASSETS / "bert-base-uncased-vocab.txt"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Shards (two training, one test) of the 99-abstract sample; the hdf5 stage's output is not needed here."""
    w = tmp_path_factory.mktemp("w")
    _run("all", "--input", ASSETS / "pubmed20n0014_sample.xml.gz", "--work-dir", w, "--vocab-file", VOCAB,
         "--max-seq-lengths", "32", "--max-predictions", "4", "--num-shards", "2", "--test-fraction", "0.1",
         "--dupe-factor", "1", "--processes", "2", "--splitter", "blingfire")
    return w


def _shard_documents(shards: Path) -> dict[str, list[str]]:
    out = {}
    for f in sorted(shards.glob("pubmed_*.txt")):
        out[f.name[:-4] + ".hdf5"] = [" ".join(d.split("\n")) for d in f.read_text().strip().split("\n\n")]
    return out


def _check_folder(d: Path, tok, L: int, shards: Path) -> dict:
    m = json.loads((d / "manifest.json").read_text())
    docs = _shard_documents(shards)
    assert m["stage"] == "packed" and m["format"] == ps.FORMAT and m["objective"] == "mlm" and m["max_seq_length"] == L
    assert sorted(m["per_file"]) == sorted(docs) and m["documents"] == sum(map(len, docs.values()))
    assert m["disk_bytes"] == sum((d / n).stat().st_size for n in m["per_file"]) and m["tokenizer"]["sha256"] == tok.sha256
    for name, texts in docs.items():
        tokens, offsets = ps.read_sequences(d / name)
        attrs = ps.read_attrs(d / name)
        assert (attrs.max_seq_length, attrs.vocab_size, attrs.cls_id, attrs.sep_id, attrs.mask_id) == \
            (L, tok.vocab_size, tok.cls_id, tok.sep_id, tok.mask_id)
        assert m["per_file"][name]["sequences"] == len(offsets) - 1 and m["per_file"][name]["tokens"] == len(tokens)
        seqs = list(ps.iter_sequences(tokens, offsets))
        assert all(s[0] == tok.cls_id and len(s) <= L for s in seqs)
        # Dropping [CLS] and cutting at [SEP] gives back each document's own token ids, in order: tokenized once.
        body = np.concatenate([s[1:] for s in seqs])
        ends = np.flatnonzero(body == tok.sep_id)
        got = np.split(body, ends + 1)[:-1]
        want = [e.ids for e in tok.tokenizer.encode_batch(texts, add_special_tokens=False)]
        assert [g[:-1].tolist() for g in got] == want
    return m


def test_packed_stage_with_wordpiece_vocab_and_resume(work):
    from data_prep.tokenizer import load_tokenizer
    from ort_training.data.hdf5 import list_hdf5_files
    from ort_training.data.collate import MaskingCollator
    from ort_training.data.packed import PackedDataLoader, is_packed_folder

    out = _run("packed", "--shard-dir", work / "shards", "--out-dir", work, "--tokenizer", VOCAB,
               "--max-seq-length", "256", "--processes", "2").stdout
    d = ps.packed_data_dir(work, 256, "pubmed")
    assert f"packed: {d}" in out and layout.find_data_dir(work, format="packed", seq_len=256) == d
    m = _check_folder(d, load_tokenizer(VOCAB), 256, work / "shards")
    # WordPiece: the export's vocab, copied into the data folder as vocab.txt and named relatively
    assert m["vocab_file"] == m["tokenizer"]["file"] == "tokenizer/vocab.txt" and m["tokenizer"]["source"] == str(VOCAB)
    assert (d / "tokenizer" / "vocab.txt").read_bytes() == VOCAB.read_bytes() and m["tokens"] > 0.6 * m["sequences"] * 256
    files = list_hdf5_files(d)
    assert [f.name for f in files] == ["pubmed_training_0.hdf5", "pubmed_training_1.hdf5"] and is_packed_folder(files)
    batch = next(iter(PackedDataLoader(files, 4, seed=0, collator=MaskingCollator(0.15), prefetch=False, vocab_size=30522)))
    assert batch["input_ids"].shape == (4, 256) and batch["masked_lm_positions"].shape == (4, 39)
    # A second run finds every file complete and rewrites none of them (the tokenizer's copy included).
    before = {f.name: f.stat().st_mtime_ns for f in [*d.glob("*.hdf5"), *d.glob("tokenizer/*")]}
    _run("packed", "--shard-dir", work / "shards", "--out-dir", work, "--tokenizer", VOCAB, "--max-seq-length", "256")
    assert {f.name: f.stat().st_mtime_ns for f in [*d.glob("*.hdf5"), *d.glob("tokenizer/*")]} == before


def test_packed_stage_with_a_trained_bpe_tokenizer(work):
    from data_prep.tokenizer import load_tokenizer
    from ort_training.data.hdf5 import list_hdf5_files
    from ort_training.data.collate import MaskingCollator
    from ort_training.data.packed import PackedDataLoader

    out = _run("vocab", "--shard-dir", work / "shards", "--out-dir", work / "bpe", "--tokenizer-type", "bpe",
               "--vocab-size", "1200").stdout
    assert f"vocab: {work / 'bpe'}" in out
    _run("packed", "--shard-dir", work / "shards", "--out-dir", work, "--tokenizer", work / "bpe",
         "--max_seq_length", "512", "--processes", "1")
    d = ps.packed_data_dir(work, 512, "pubmed")
    m = _check_folder(d, load_tokenizer(work / "bpe"), 512, work / "shards")
    assert m["tokenizer"]["kind"] == "BPE" and "vocab_file" not in m and m["tokenizer"]["folder"] == "tokenizer"
    assert sorted(f.name for f in (d / "tokenizer").iterdir()) == sorted(f.name for f in (work / "bpe").iterdir()
                                                                           if f.name.endswith(".json") and f.name != "manifest.json")
    # The data folder alone, moved to another machine: the trainer adopts the tokenizer it carries (same digest).
    from ort_training.config import PretrainConfig
    from ort_training.data.inputs import adopt_manifest

    moved = work / "elsewhere" / "packed"
    shutil.copytree(d, moved)
    found = adopt_manifest(list_hdf5_files(moved), PretrainConfig(input_dir=str(moved)), "mlm")
    assert found == str(moved / "tokenizer")
    batch = next(iter(PackedDataLoader(list_hdf5_files(d), 2, seed=0, collator=MaskingCollator(0.3), prefetch=False)))
    assert batch["input_ids"].shape == (2, 512) and batch["masked_lm_positions"].shape == (2, 154)


def test_bad_tokenizers_are_one_line_with_exit_2(work, tmp_path, capsys):
    from data_prep import cli

    (tmp_path / "notes.txt").write_text("just\nwords\n")
    cases = [(["packed", "--shard-dir", work / "shards", "--out-dir", tmp_path / "o", "--tokenizer", tmp_path / "notes.txt"],
              f"error: --tokenizer: vocab file {tmp_path / 'notes.txt'} lacks the special tokens"),
             (["packed", "--shard-dir", work / "shards", "--out-dir", tmp_path / "o", "--tokenizer", tmp_path / "nope"],
              f"error: --tokenizer {tmp_path / 'nope'}: no such file or folder"),
             (["hdf5", "--shard-dir", work / "shards", "--out-dir", tmp_path / "o", "--vocab-file", work / "bpe"],
              f"error: --vocab-file {work / 'bpe' / 'tokenizer.json'}: a BPE tokenizer.json, but the hdf5 stage needs a "
              f"WordPiece vocab.txt"),
             (["packed", "--shard-dir", work / "shards", "--out-dir", tmp_path / "o", "--max-seq-length", "9000"], None)]
    for argv, message in cases:
        if message is None:  # a setting out of range: argparse's usage error, exit 2
            with pytest.raises(SystemExit) as e:
                cli.main([str(a) for a in argv])
            assert e.value.code == 2 and "--max-seq-length 9000: must be in [8, 8192]" in capsys.readouterr().err
            continue
        assert cli.main([str(a) for a in argv]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.startswith(message), err
