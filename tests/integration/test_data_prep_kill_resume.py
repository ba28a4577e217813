"""A run killed (SIGKILL) in the middle of the hdf5 stage leaves no finished-looking file; the re-run completes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py

ROOT = Path(__file__).parents[2]
ASSETS = ROOT / "tests" / "assets" / "pubmed"


def test_sigkill_then_resume(tmp_path):
    from data_prep.config import FormatConfig, ShardConfig
    from data_prep.formatting import run_format
    from data_prep.shard import run_shard

    run_format(FormatConfig(inputs=[ASSETS / "pubmed20n0014_sample.xml.gz"], out_dir=tmp_path / "text"))
    run_shard(ShardConfig(text_dir=tmp_path / "text", out_dir=tmp_path / "s", num_shards=1, test_fraction=0.0,
                          splitter="blingfire"))
    shard_dir = tmp_path / "shards"
    shard_dir.mkdir()
    text = (tmp_path / "s" / "pubmed_training_0.txt").read_text()
    (shard_dir / "pubmed_training_0.txt").write_text(text * 60)  # ~5 MB: several seconds of work
    cmd = [sys.executable, "-m", "data_prep", "hdf5", "--shard-dir", str(shard_dir), "--vocab-file",
           str(ASSETS / "bert-base-uncased-vocab.txt"), "--out-dir", str(tmp_path / "out"), "--processes", "1",
           "--max-seq-lengths", "128", "--max-predictions", "20"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    d = tmp_path / "out" / "hdf5_lower_case_1_seq_len_128_max_pred_20_masked_lm_prob_0.15_random_seed_12345_dupe_factor_5" / "pubmed"
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(d.glob(".*.tmp-*")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "finished before it could be killed; make the shard bigger"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list(d.glob("*.hdf5")) and not (d / "manifest.json").exists()
    assert list(d.glob(".*.tmp-*"))  # only the hidden temporary file was left
    subprocess.run(cmd, env=env, cwd=ROOT, check=True, capture_output=True, timeout=300)
    assert [p.name for p in d.glob("*.hdf5")] == ["pubmed_training_0.hdf5"] and not list(d.glob(".*.tmp-*"))
    with h5py.File(d / "pubmed_training_0.hdf5", "r") as f:
        assert f["input_ids"].shape[0] > 10000
