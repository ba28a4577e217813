"""HDF5 stage: NVIDIA's names and schema, manifest, resume, atomic writes, bad shards, process-count independence."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from bundle import hdf5_schema
from data_prep.config import FormatConfig, Hdf5Config, PhaseConfig, ShardConfig
from data_prep.create_hdf5 import run_hdf5
from data_prep.formatting import run_format
from data_prep.hdf5_writer import Hdf5InstanceWriter, read_hdf5
from data_prep.manifest import DataPrepError
from data_prep.shard import run_shard

ASSETS = Path(__file__).parents[1] / "assets" / "pubmed"
VOCAB = ASSETS / "bert-base-uncased-vocab.txt"
SCHEMA = {d.name: (np.dtype(d.dtype).name, d.width) for d in hdf5_schema.DATASETS}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hdf5")
    run_format(FormatConfig(inputs=[ASSETS / "pubmed20n0014_sample.xml.gz"], out_dir=tmp / "text"))
    run_shard(ShardConfig(text_dir=tmp / "text", out_dir=tmp / "shards", num_shards=2, test_fraction=0.2))
    return tmp / "shards"


def _cfg(shards, out, **kw):
    return Hdf5Config(shard_dir=shards, vocab_file=VOCAB, out_root=out, dupe_factor=2,
                      phases=[PhaseConfig(128, 20), PhaseConfig(256, 40)], **kw)


def test_names_schema_manifest_and_process_independence(shards, tmp_path):
    out1 = run_hdf5(_cfg(shards, tmp_path / "p1", processes=1))
    out2 = run_hdf5(_cfg(shards, tmp_path / "p2", processes=2))
    assert list(out1) == ["hdf5_lower_case_1_seq_len_128_max_pred_20_masked_lm_prob_0.15_random_seed_12345_dupe_factor_2",
                          "hdf5_lower_case_1_seq_len_256_max_pred_40_masked_lm_prob_0.15_random_seed_12345_dupe_factor_2"]
    for (name, d1), d2, (L, P) in zip(out1.items(), out2.values(), [(128, 20), (256, 40)]):
        assert d1 == tmp_path / "p1" / name / "pubmed"
        files = sorted(p.name for p in d1.glob("*.hdf5"))
        assert files == ["pubmed_test_0.hdf5", "pubmed_training_0.hdf5", "pubmed_training_1.hdf5"]
        manifest = json.loads((d1 / "manifest.json").read_text())
        assert manifest["vocab_sha256"] and manifest["phase"] == {"max_seq_length": L, "max_predictions_per_seq": P}
        total = 0
        for f in files:
            with h5py.File(d1 / f, "r") as h:
                assert set(h.keys()) == set(SCHEMA)
                n = h["next_sentence_labels"].shape[0]
                for k, (dtype, w) in SCHEMA.items():
                    assert h[k].dtype == np.dtype(dtype), k
                    assert h[k].shape == ((n, {"L": L, "P": P}[w]) if w else (n,)), k
                    assert h[k].compression == "gzip"
            assert manifest["per_file"][f]["instances"] == n > 0
            total += n
            a, b = read_hdf5(d1 / f), read_hdf5(d2 / f)
            assert all(np.array_equal(a[k], b[k]) for k in a), "output depends on --processes"
        assert manifest["instances"] == total
        assert manifest["training_files"] == files[1:] and manifest["test_files"] == files[:1]
        assert not list(d1.parent.rglob("*.tmp-*"))


def test_resume_skips_finished_and_new_args_new_folder(shards, tmp_path, caplog):
    cfg = _cfg(shards, tmp_path)
    out = run_hdf5(cfg)
    d = next(iter(out.values()))
    t = {p.name: p.stat().st_mtime_ns for p in d.glob("*.hdf5")}
    run_hdf5(cfg)
    assert t == {p.name: p.stat().st_mtime_ns for p in d.glob("*.hdf5")}
    # A removed output is rebuilt, the others stay; a killed run's temp file is cleaned up.
    (d / "pubmed_training_1.hdf5").unlink()
    (d / ".pubmed_training_1.hdf5.tmp-99999").write_bytes(b"half")
    run_hdf5(cfg)
    assert not list(d.glob(".*tmp*"))
    t2 = {p.name: p.stat().st_mtime_ns for p in d.glob("*.hdf5")}
    assert t2["pubmed_training_0.hdf5"] == t["pubmed_training_0.hdf5"] and "pubmed_training_1.hdf5" in t2
    out_wwm = run_hdf5(_cfg(shards, tmp_path, whole_word_mask=True))
    assert all(k.endswith("_whole_word_mask") for k in out_wwm)


def test_interrupted_writer_leaves_no_finished_file(tmp_path):
    path = tmp_path / "x_training_0.hdf5"
    with pytest.raises(KeyboardInterrupt):
        with Hdf5InstanceWriter(path, 8, 2) as w:
            w.write({"input_ids": np.ones((3, 8)), "input_mask": np.ones((3, 8)), "segment_ids": np.zeros((3, 8)),
                     "masked_lm_positions": np.ones((3, 2)), "masked_lm_ids": np.ones((3, 2)),
                     "next_sentence_labels": np.zeros(3)})
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_bad_vocab_and_bad_shard(shards, tmp_path):
    bad_vocab = tmp_path / "vocab.txt"
    bad_vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n")
    with pytest.raises(DataPrepError, match=r"vocab.txt lacks .*\[MASK\]"):
        run_hdf5(Hdf5Config(shard_dir=shards, vocab_file=bad_vocab, out_root=tmp_path))
    sd = tmp_path / "shards"
    sd.mkdir()
    (sd / "pubmed_training_0.txt").write_text((shards / "pubmed_training_0.txt").read_text())
    (sd / "pubmed_training_1.txt").write_bytes(b"Caf\xe9 au lait.\nSecond.\n\n")
    with pytest.raises(DataPrepError, match="pubmed_training_1.txt: invalid UTF-8"):
        run_hdf5(_cfg(sd, tmp_path / "a"))
    out = run_hdf5(_cfg(sd, tmp_path / "b", skip_bad=True))
    for d in out.values():
        m = json.loads((d / "manifest.json").read_text())
        assert list(m["per_file"]) == ["pubmed_training_0.hdf5"]
        assert m["bad_shards"][0]["shard"].endswith("pubmed_training_1.txt")


def test_kill_between_hdf5_renames_then_rerun_with_changed_settings(shards, tmp_path, monkeypatch):
    """short_seq_prob is not in the folder name: a killed rebuild must not leave the old manifest over
    a mix of old and new files, and the re-run must equal a clean build (stale files removed)."""
    from test_data_prep_shard import _die_after_first

    out = run_hdf5(_cfg(shards, tmp_path / "a"))
    (next(iter(out.values())) / "pubmed_training_9.hdf5").write_bytes(b"from a shard that no longer exists")
    new = _cfg(shards, tmp_path / "a", short_seq_prob=0.5)
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        _die_after_first(m, ".hdf5")
        run_hdf5(new)
    assert not any((d / "manifest.json").exists() for d in out.values())
    out = run_hdf5(new)
    clean = run_hdf5(_cfg(shards, tmp_path / "clean", short_seq_prob=0.5))
    for name, d in out.items():
        m = json.loads((d / "manifest.json").read_text())
        assert m["args"]["short_seq_prob"] == 0.5
        files = sorted(p.name for p in d.glob("*.hdf5"))
        assert files == sorted(p.name for p in clean[name].glob("*.hdf5")) == sorted(m["per_file"])
        for f in files:
            a, b = read_hdf5(d / f), read_hdf5(clean[name] / f)
            assert all(np.array_equal(a[k], b[k]) for k in a)


def test_the_vocab_travels_inside_the_data_folder(shards, tmp_path):
    """A cloud job mounts the data folder, not the prep machine's disk: the tokenizer is copied next to the HDF5,
    the manifest names it relatively, and the trainer finds it (and the data's case) after the folder moved."""
    import shutil

    from ort_training.config import PretrainConfig
    from ort_training.data.inputs import adopt_manifest

    out = run_hdf5(Hdf5Config(shard_dir=shards, vocab_file=VOCAB, out_root=tmp_path / "prep", dupe_factor=1, lower_case=False,
                              phases=[PhaseConfig(128, 20)]))
    data = next(iter(out.values()))
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["vocab_file"] == "vocab.txt" and (data / "vocab.txt").read_bytes() == VOCAB.read_bytes()
    assert "vocab.txt" in manifest["output_sizes"]
    moved = tmp_path / "mounted" / "data"
    shutil.copytree(data, moved)
    shutil.rmtree(tmp_path / "prep")
    cfg = PretrainConfig(input_dir=str(moved))
    assert cfg.do_lower_case  # the trainer's default, before it reads the data's manifest
    found = adopt_manifest(sorted(moved.glob("*training*.hdf5")), cfg, "mlm_nsp")
    assert Path(found) == moved / "vocab.txt" and cfg.do_lower_case is False  # one case flag: data_prep's
