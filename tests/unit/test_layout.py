"""bundle.layout: data_prep's folder names (NVIDIA's, byte for byte) and the lookup scripts and tests ask
instead of globbing names (issue 14, item 5)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_runs import run_data_prep

from bundle import layout, packed_schema
from data_prep.config import Hdf5Config, PhaseConfig
from data_prep.create_hdf5 import phase_data_dir, phase_dir_name

pytestmark = pytest.mark.stack_free  # no torch/transformers in what it tests: `make test` runs it, `make test-current` does not

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "tests" / "assets" / "pubmed"
VOCAB = ASSETS / "bert-base-uncased-vocab.txt"
# Names as the tests wrote them by hand before the rule moved (test_data_prep_kill_resume, _e2e, _cli).
NVIDIA_128 = "hdf5_lower_case_1_seq_len_128_max_pred_20_masked_lm_prob_0.15_random_seed_12345_dupe_factor_5"
WWM_64 = "hdf5_lower_case_1_seq_len_64_max_pred_10_masked_lm_prob_0.15_random_seed_12345_dupe_factor_5_whole_word_mask"
MLM_128 = "hdf5_lower_case_1_seq_len_128_max_pred_20_masked_lm_prob_0.15_random_seed_12345_dupe_factor_2_mlm_only"


def test_hdf5_names_are_nvidias_byte_for_byte():
    base = dict(lower_case=True, masked_lm_prob=0.15, random_seed=12345)
    assert layout.hdf5_dir_name(max_seq_length=128, max_predictions_per_seq=20, dupe_factor=5, **base) == NVIDIA_128
    assert layout.hdf5_dir_name(max_seq_length=64, max_predictions_per_seq=10, dupe_factor=5, whole_word_mask=True,
                                **base) == WWM_64
    assert layout.hdf5_dir_name(max_seq_length=128, max_predictions_per_seq=20, dupe_factor=2, objective="mlm",
                                **base) == MLM_128
    # data_prep names its folders through the rule: its defaults give NVIDIA's phase-1 folder.
    assert phase_dir_name(Hdf5Config(), PhaseConfig(128, 20)) == NVIDIA_128
    cased = Hdf5Config(lower_case=False, masked_lm_prob=0.2, random_seed=7, dupe_factor=1, out_root=Path("w"))
    assert phase_dir_name(cased, PhaseConfig(512, 80)) == \
        "hdf5_lower_case_0_seq_len_512_max_pred_80_masked_lm_prob_0.2_random_seed_7_dupe_factor_1"
    assert phase_data_dir(cased, PhaseConfig(512, 80)) == layout.hdf5_data_dir(
        "w", "pubmed", lower_case=False, max_seq_length=512, max_predictions_per_seq=80, masked_lm_prob=0.2,
        random_seed=7, dupe_factor=1)


def test_packed_names_have_one_definition():
    assert packed_schema.packed_dir_name is layout.packed_dir_name
    assert packed_schema.packed_data_dir is layout.packed_data_dir
    assert layout.packed_data_dir("w", 1024, "pubmed").as_posix() == "w/packed_seq_len_1024/pubmed"


def test_layout_imports_nothing_but_the_standard_library():
    """docker/test_image.sh asks it with the host's python3, which has no numpy or h5py."""
    code = "import sys, bundle.layout; bad = {'numpy', 'h5py', 'torch'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, env=dict(os.environ, PYTHONPATH=str(REPO)))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A real data_prep work dir: phase 1 (64/10) and phase 2 (128/20) HDF5, and packed at 64 tokens."""
    w = tmp_path_factory.mktemp("layout") / "w"
    run_data_prep("all", "--input", ASSETS / "update_sample.xml", "--work-dir", w, "--vocab-file", VOCAB,
                  "--max-seq-lengths", "64", "128", "--max-predictions", "10", "20", "--test-fraction", "0",
                  "--num-shards", "1", "--processes", "1", "--dupe-factor", "1", "--splitter", "blingfire")
    run_data_prep("packed", "--shard-dir", w / "shards", "--tokenizer", VOCAB, "--out-root", w, "--max-seq-length", "64")
    return w


def _copy(work, tmp_path):
    dst = tmp_path / "w"
    shutil.copytree(work, dst)
    return dst


def _hdf5_dir(w, seq, pred):
    return layout.hdf5_data_dir(w, "pubmed", lower_case=True, max_seq_length=seq, max_predictions_per_seq=pred,
                                masked_lm_prob=0.15, random_seed=12345, dupe_factor=1)


def test_lookup_reads_data_preps_manifests(work):
    dirs = layout.finished_data_dirs(work)
    assert [(d.format, d.max_seq_length, d.max_predictions_per_seq, d.objective, d.dataset) for d in dirs] == [
        ("hdf5", 64, 10, "nsp", "pubmed"), ("hdf5", 128, 20, "nsp", "pubmed"), ("packed", 64, None, "mlm", "pubmed")]
    assert all(d.training_files == 1 and d.test_files == 0 for d in dirs)
    p1, p2 = _hdf5_dir(work, 64, 10), _hdf5_dir(work, 128, 20)
    assert layout.find_data_dir(work, format="hdf5", seq_len=64) == p1
    assert layout.find_data_dir(work, format="hdf5", seq_len=128, max_pred=20) == p2
    assert layout.find_data_dir(work, format="hdf5", phase=1) == p1 and layout.find_data_dir(work, format="hdf5", phase=2) == p2
    assert layout.find_data_dir(work, format="packed", seq_len=64) == layout.packed_data_dir(work, 64, "pubmed")
    assert (p1 / "pubmed_training_0.hdf5").is_file()
    with pytest.raises(layout.LayoutError, match=r"no finished data folder .* matches format hdf5 seq-len 512; "
                                                 r"finished: hdf5 nsp seq 64/10 .*hdf5 nsp seq 128/20 .*packed mlm seq 64 "):
        layout.find_data_dir(work, format="hdf5", seq_len=512)
    with pytest.raises(layout.LayoutError, match="2 finished data folders"):
        layout.find_data_dir(work, seq_len=64)  # hdf5 and packed: the format decides


def test_stale_and_ambiguous_folders_are_named(work, tmp_path):
    w = _copy(work, tmp_path)
    p1 = _hdf5_dir(w, 64, 10)
    (p1 / "pubmed_training_0.hdf5").write_bytes(b"truncated")  # no longer what the manifest recorded
    with pytest.raises(layout.LayoutError, match=f"unfinished \\(re-run data_prep\\): {p1}"):
        layout.find_data_dir(w, format="hdf5", seq_len=64)
    assert layout.find_data_dir(w, format="hdf5", phase=1) == _hdf5_dir(w, 128, 20)  # only 128 is finished now
    # An older run with another dupe factor left a second finished 128-token folder: refused, both named.
    old = w / NVIDIA_128 / "pubmed"
    shutil.copytree(_hdf5_dir(w, 128, 20), old)
    with pytest.raises(layout.LayoutError, match=f"2 finished data folders .*{old}.*remove the stale one"):
        layout.find_data_dir(w, format="hdf5", seq_len=128)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "bundle.layout", "data-dir", *map(str, args)], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=60)


def test_cli_prints_the_folder_lists_json_and_exits_2_naming_what_exists(work, tmp_path):
    ok = _cli("--work-dir", work, "--format", "hdf5", "--seq-len", "128")
    assert ok.returncode == 0 and ok.stdout == f"{_hdf5_dir(work, 128, 20)}\n" and not ok.stderr
    listed = json.loads(_cli("--work-dir", work, "--list").stdout)
    assert [(d["format"], d["max_seq_length"], d["path"]) for d in listed] == [
        ("hdf5", 64, str(_hdf5_dir(work, 64, 10))), ("hdf5", 128, str(_hdf5_dir(work, 128, 20))),
        ("packed", 64, str(layout.packed_data_dir(work, 64, "pubmed")))]
    assert json.loads(_cli("--work-dir", work, "--format", "packed", "--seq-len", "1024", "--list").stdout) == []
    bad = _cli("--work-dir", work, "--format", "packed", "--seq-len", "1024")
    assert bad.returncode == 2 and not bad.stdout
    (line,) = bad.stderr.splitlines()
    assert line.startswith(f"error: no finished data folder under {work} matches format packed seq-len 1024; finished: ")
    assert f"packed mlm seq 64 {layout.packed_data_dir(work, 64, 'pubmed')}" in line
    empty = _cli("--work-dir", tmp_path / "nothing", "--format", "hdf5", "--phase", "2")
    assert empty.returncode == 2 and "finished: none (build them with `python -m data_prep all --work-dir" in empty.stderr
    usage = _cli("--work-dir", work, "--format", "tfrecord")
    assert usage.returncode == 2 and "invalid choice: 'tfrecord'" in usage.stderr
