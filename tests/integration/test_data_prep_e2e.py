"""End to end through the CLI: MEDLINE XML -> text -> shards -> vocab -> phase-1 and phase-2 HDF5."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from cli_runs import run_data_prep as _run

from bundle import layout

pytestmark = pytest.mark.stack_free  # no torch/transformers in what it tests: `make test` runs it, `make test-current` does not

ROOT = Path(__file__).parents[2]
ASSETS = ROOT / "tests" / "assets" / "pubmed"


def _nvidia_style_load(path: Path):
    """What NVIDIA's / the ORT example's pretraining_dataset does."""
    f = h5py.File(path, "r")
    keys = ["input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids", "next_sentence_labels"]
    out = [np.asarray(f[k][:]) for k in keys]
    f.close()
    return out


def test_all_trained_vocab_both_phases_and_resume(tmp_path):
    w = tmp_path / "work"
    args = ["all", "--corpus", "pubmed", "--input", ASSETS / "pubmed20n0014_sample.xml.gz", ASSETS / "update_sample.xml",
            "--work-dir", w, "--vocab-size", "2000", "--num-shards", "2", "--test-fraction", "0.1",
            "--processes", "2", "--dupe-factor", "2", "--splitter", "blingfire"]
    p = _run(*args)
    assert (w / "text" / "update_sample.txt").exists() and (w / "vocab" / "vocab.txt").exists()
    vocab = (w / "vocab" / "vocab.txt").read_text().splitlines()
    assert 1000 < len(vocab) <= 2000
    dirs = {}
    for L, P in [(128, 20), (512, 80)]:
        d = layout.find_data_dir(w, format="hdf5", seq_len=L, max_pred=P)
        assert str(d) in p.stdout, p.stdout  # the CLI prints where each phase went
        files = sorted(d.glob("*training*.hdf5"))
        assert len(files) == 2
        ids, mask, seg, pos, lab, nsp = _nvidia_style_load(files[0])
        assert ids.shape[1] == L and pos.shape[1] == P and ids.dtype == np.int32 and nsp.dtype == np.int8
        assert ids.max() < len(vocab) and lab.max() < len(vocab)
        assert (ids[:, 0] == vocab.index("[CLS]")).all()
        dirs[L] = d
    m = json.loads((dirs[128] / "manifest.json").read_text())
    assert m["args"]["dupe_factor"] == 2 and m["instances"] > 0
    # Re-running does nothing to finished outputs.
    before = {p: p.stat().st_mtime_ns for p in w.rglob("*") if p.is_file() and p.suffix in (".txt", ".hdf5")}
    _run(*args)
    after = {p: p.stat().st_mtime_ns for p in w.rglob("*") if p.is_file() and p.suffix in (".txt", ".hdf5")}
    assert before == after


def test_all_with_existing_vocab_single_phase_and_errors(tmp_path):
    w = tmp_path / "w"
    _run("all", "--input", ASSETS / "update_sample.xml", "--work-dir", w, "--vocab-file",
         ASSETS / "bert-base-uncased-vocab.txt", "--max-seq-lengths", "64", "--max-predictions", "10",
         "--test-fraction", "0", "--num-shards", "1", "--processes", "1", "--whole-word-mask")
    d = layout.find_data_dir(w, format="hdf5", seq_len=64)
    assert d.parent.name.endswith("_whole_word_mask")  # a folder of its own: never mixed with plain masking
    assert [p.name for p in d.glob("*.hdf5")] == ["pubmed_training_0.hdf5"]
    bad = _run("hdf5", "--shard-dir", w / "shards", "--vocab-file", w / "text" / "update_sample.txt",
               "--out-dir", tmp_path / "x", check=False)
    # A text file given as a vocab is refused at its first line of several words, naming file and line.
    assert bad.returncode == 2 and "update_sample.txt: line 1 has whitespace" in bad.stderr, bad.stderr
    bad = _run("all", "--input", tmp_path / "missing", "--work-dir", w, check=False)
    assert bad.returncode == 2 and "missing: no such file" in bad.stderr
    bad = _run("all", "--input", ASSETS / "update_sample.xml", "--work-dir", w, "--max-seq-lengths", "128", check=False)
    assert bad.returncode == 2 and "one value per phase" in bad.stderr
