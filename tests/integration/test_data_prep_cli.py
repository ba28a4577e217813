"""The generated CLI end to end (issue 9: one config->CLI helper; the MLM-only objective) and issue 10's
run-level failures: a second run into a busy work dir, a full disk, stale temporaries, determinism."""

import errno
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from cli_runs import run_data_prep as _run

from bundle import layout
from bundle.locking import RunLock

pytestmark = pytest.mark.stack_free  # no torch/transformers in what it tests: `make test` runs it, `make test-current` does not

ROOT = Path(__file__).parents[2]
ASSETS = ROOT / "tests" / "assets" / "pubmed"
VOCAB = ASSETS / "bert-base-uncased-vocab.txt"
SMALL = ["all", "--input", ASSETS / "update_sample.xml", "--vocab-file", VOCAB, "--max-seq-lengths", "64",
         "--max-predictions", "10", "--test-fraction", "0", "--num-shards", "1", "--processes", "1"]


def _phase_dir(w: Path, L: int = 64, **kw) -> Path:
    """The one finished HDF5 folder of sequence length L, found from data_prep's manifests (bundle.layout)."""
    return layout.find_data_dir(w, format="hdf5", seq_len=L, **kw)


@pytest.mark.parametrize(("extra", "message"), [
    (["--vocab-size", "100"], "--vocab-file and --vocab-size exclude each other"),
    (["--test-fraction", "1.5"], "--test-fraction 1.5: must be in [0, 1)"),
    (["--max-seq-lengths", "64", "128"], "one value per phase"),
    (["--max-predictions", "70"], "need max_seq_length >= 8 and 0 < max_predictions_per_seq < max_seq_length"),
    (["--objective", "t5"], "invalid choice: 't5'"),
])
def test_flags_are_checked_by_the_configs(tmp_path, extra, message):
    p = _run(*SMALL, "--work-dir", tmp_path / "w", *extra, check=False)
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "w").exists()  # refused before any work


def test_help_comes_from_the_config_docstrings():
    from bundle.cli import field_docs
    from data_prep.config import Hdf5Config

    out = _run("hdf5", "--help").stdout
    assert " ".join(field_docs(Hdf5Config)["objective"].split()[:6]) in " ".join(out.split())
    assert "--objective {nsp,mlm}" in out and "--out-dir" in out


def test_second_run_into_a_busy_work_dir_is_refused_naming_the_holder(tmp_path):
    w = tmp_path / "w"
    with RunLock(w, "data_prep"):
        p = _run(*SMALL, "--work-dir", w, check=False)
    assert p.returncode == 2, p.stderr
    assert f"{w} is in use by another data_prep run" in p.stderr and f'"pid": {os.getpid()}' in p.stderr
    assert not (w / "text").exists()
    _run(*SMALL, "--work-dir", w)  # once the holder is gone, the run goes ahead


@pytest.mark.parametrize("where", ["hdf5 write", "manifest"])
def test_full_disk_is_one_line_naming_the_path(tmp_path, monkeypatch, capsys, where):
    from data_prep import cli

    w = tmp_path / "w"
    if where == "hdf5 write":
        def full(self, batch):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr("data_prep.hdf5_writer.Hdf5InstanceWriter.write", full)
        named = f"a file under {w}"
    else:
        def full(path, text):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        monkeypatch.setattr("data_prep.manifest.atomic_write_text", full)
        named = str(w / "text" / "parsed")
    assert cli.main([str(a) for a in SMALL] + ["--work-dir", str(w)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if "error" in x.lower()]  # the rest is tqdm's progress
    assert line.startswith(f"error: no space left on device while writing {named}"), line


def test_stale_temporaries_of_killed_stages_are_cleaned(tmp_path):
    w = tmp_path / "w"
    _run(*SMALL, "--work-dir", w)
    dead = 2 ** 22 + 12345  # above the default pid_max: no live process has it
    stale = [w / "text" / "parsed" / f".00000_update_sample.docs.tmp-{dead}", w / "text" / f".update_sample.txt.tmp-{dead}",
             w / "vocab" / f".vocab.txt.tmp-{dead}", _phase_dir(w) / f".pubmed_training_0.hdf5.tmp-{dead}"]
    for f in stale:
        f.write_bytes(b"half written")
    (w / "vocab" / ".tmp-k2j4x9").mkdir()  # an earlier version's tempfile folder
    (w / "vocab" / "manifest.json").unlink()  # make the vocab and hdf5 stages run again
    _run(*SMALL, "--work-dir", w)
    assert not [f for f in stale if f.exists()] and not (w / "vocab" / ".tmp-k2j4x9").exists()


def test_mlm_only_objective_end_to_end(tmp_path):
    """Issue 9: `--objective mlm` writes FULL-SENTENCES instances in NVIDIA's schema; the manifest says so, and the
    trainer's reader (and an NVIDIA-style h5py reader) loads them unchanged."""
    from ort_training.data.hdf5 import Shard, list_hdf5_files, load_shard

    w = tmp_path / "w"
    _run("all", "--input", ASSETS / "pubmed20n0014_sample.xml.gz", "--work-dir", w, "--vocab-file", VOCAB,
         "--max-seq-lengths", "128", "--max-predictions", "20", "--num-shards", "2", "--test-fraction", "0.1",
         "--dupe-factor", "2", "--processes", "2", "--splitter", "blingfire", "--objective", "mlm")
    d = _phase_dir(w, 128, objective="mlm")
    m = json.loads((d / "manifest.json").read_text())
    assert m["objective"] == "mlm" and m["instances"] > 100
    files = list_hdf5_files(d)
    assert [f.name for f in files] == ["pubmed_training_0.hdf5", "pubmed_training_1.hdf5"]
    batch = load_shard(Shard(files[0]), vocab_size=30522)
    assert (batch["next_sentence_labels"] == 0).all() and (batch["segment_ids"] == 0).all()
    with h5py.File(files[0], "r") as f:
        ids, mask = f["input_ids"][:], f["input_mask"][:]
    assert mask.sum(1).mean() > 0.75 * 128  # contiguous text fills the sequence
    assert ((ids == 102).sum(1) > 1).any()  # [SEP] between documents inside a sequence


def test_same_inputs_give_identical_vocab_and_hdf5(tmp_path):
    """Issue 10 #6: a trained vocabulary and the HDF5 built on it are the same run to run."""
    outs = []
    for i in range(2):
        w = tmp_path / f"w{i}"
        _run("all", "--input", ASSETS / "pubmed20n0014_sample.xml.gz", "--work-dir", w, "--vocab-size", "1500",
             "--max-seq-lengths", "64", "--max-predictions", "10", "--num-shards", "1", "--test-fraction", "0",
             "--dupe-factor", "1", "--processes", "1", "--splitter", "blingfire")
        with h5py.File(_phase_dir(w) / "pubmed_training_0.hdf5", "r") as f:
            outs.append(((w / "vocab" / "vocab.txt").read_bytes(), {k: f[k][:] for k in f}))
    assert outs[0][0] == outs[1][0]
    assert all(np.array_equal(outs[0][1][k], outs[1][1][k]) for k in outs[0][1])
