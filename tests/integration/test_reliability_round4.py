"""Issue 26, round 4 (an adversarial campaign against the CLIs): a user-given name stays a name, a shard count the
process cannot open is refused before any file is touched, pool workers of every data_prep stage stop quietly, and
Ctrl-C is one line, not a KeyboardInterrupt traceback. Each refusal: one `error:` line naming the flag, no traceback,
finished outputs unchanged."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from cli_runs import REPO, notes_corpus, run_data_prep

from data_prep import cli as data_prep_cli
from data_prep.config import ConfigError, Hdf5Config, PackedConfig, ShardConfig, TimelinesConfig
from ort_training import errors, finetune



def _error_line(p: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    lines = [x for x in p.stderr.splitlines() if "error:" in x]
    assert len(lines) == 1, p.stderr[-3000:]
    return lines[0]



def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file() and f.name != ".lock"}


# ----------------------------------------------------------------------------- 1. --dataset-name is a name, not a path
BAD_NAMES = ["../../escape", "/tmp/abs_escape", "pub*", "..", ".hidden", "a\nb", ""]


@pytest.mark.parametrize("name", BAD_NAMES[:3])
def test_dataset_name_never_becomes_a_path_outside_the_output_folder(tmp_path, name):
    corpus = notes_corpus(tmp_path / "corpus", docs=40)
    work = tmp_path / "deep" / "er" / "work"
    p = run_data_prep("all", "--corpus", "text", "--input", corpus, "--work-dir", work, "--vocab-size", "200",
                      "--num-shards", "1", "--max-seq-lengths", "32", "--max-predictions", "5", "--dupe-factor", "1",
                      "--splitter", "blingfire", "--dataset-name", name, check=False)
    assert p.returncode == 2 and "--dataset-name" in _error_line(p) and "plain name" in p.stderr
    # before the fix: ../../escape wrote tmp_path/deep/escape_training_0.txt, /tmp/abs_escape was a traceback
    assert sorted(f.name for f in tmp_path.rglob("*") if f.is_file()) == ["notes_0.txt", "notes_1.txt"]


@pytest.mark.parametrize("config", [ShardConfig, Hdf5Config, PackedConfig, TimelinesConfig])
def test_every_stage_that_names_files_after_the_dataset_refuses_a_path(config):
    for name in BAD_NAMES:
        with pytest.raises(ConfigError, match="--dataset-name .*plain name"):
            config(dataset_name=name)
    assert config(dataset_name="notes-é_v1.2").dataset_name == "notes-é_v1.2"


# ----------------------------------------------------------------------------- 2. more shards than open files
def test_more_shards_than_the_process_may_open_is_refused_before_a_finished_folder_is_touched(tmp_path):
    corpus = notes_corpus(tmp_path / "corpus", docs=40)
    run_data_prep("format", "--corpus", "text", "--input", corpus, "--out-dir", tmp_path / "text")
    run_data_prep("shard", "--text-dir", tmp_path / "text", "--out-dir", tmp_path / "shards", "--num-shards", "2",
                  "--splitter", "blingfire", "--processes", "1")
    before = _snapshot(tmp_path / "shards")

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    # before the fix: 250 temporaries, the finished shards deleted, then an OSError traceback (EMFILE)
    p = subprocess.run([sys.executable, "-m", "data_prep", "shard", "--text-dir", str(tmp_path / "text"), "--out-dir",
                        str(tmp_path / "shards"), "--num-shards", "500", "--splitter", "blingfire", "--processes", "1"],
                       cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=300,
                       preexec_fn=low_limit)
    assert p.returncode == 2 and "--num-shards 500" in _error_line(p) and "ulimit -n" in p.stderr
    assert _snapshot(tmp_path / "shards") == before
    assert not [f for f in (tmp_path / "shards").iterdir() if ".tmp-" in f.name]


# ----------------------------------------------------------------------------- 3. pool workers stop quietly
def test_format_and_shard_pool_workers_end_without_a_traceback(tmp_path):
    corpus = notes_corpus(tmp_path / "corpus", files=3, docs=40)
    # before the fix: every successful run with --processes 2 printed a `data_prep.cli.Terminated` traceback per worker
    p = run_data_prep("format", "--corpus", "text", "--input", corpus, "--out-dir", tmp_path / "text", "--processes", "2")
    assert "Traceback" not in p.stderr and "Terminated" not in p.stderr, p.stderr[-3000:]
    p = run_data_prep("shard", "--text-dir", tmp_path / "text", "--out-dir", tmp_path / "shards", "--num-shards", "2",
                      "--splitter", "blingfire", "--processes", "2")
    assert "Traceback" not in p.stderr and "Terminated" not in p.stderr, p.stderr[-3000:]


# ----------------------------------------------------------------------------- 4. Ctrl-C is one line
def _raise_interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_is_one_line_and_exit_130_in_data_prep(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data_prep_cli, "run", _raise_interrupt)
    rc = data_prep_cli.main(["shard", "--text-dir", str(tmp_path), "--out-dir", str(tmp_path / "shards")])
    err = capsys.readouterr().err
    assert rc == 130 and "Traceback" not in err and "Ctrl-C" in err and str(tmp_path / "shards") in err


def test_ctrl_c_is_one_line_and_exit_130_in_the_training_entry_points(tmp_path, monkeypatch, capsys):
    assert errors.exit_on_expected("run_pretraining", lambda: _raise_interrupt()) == 130
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "error:" in line] == [err.strip()] and "Ctrl-C" in err
    monkeypatch.setattr(finetune, "run", _raise_interrupt)
    monkeypatch.setattr(finetune, "check_output_folder", lambda cfg: None)
    (tmp_path / "v.txt").write_text("x\n")
    rc = finetune.main(["--train_file", str(tmp_path / "train.csv"), "--config_file", "tiny", "--vocab_file",
                        str(tmp_path / "v.txt"), "--output_dir", str(tmp_path / "ft"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 130 and "Traceback" not in err and "finetune: error: stopped by Ctrl-C" in err


# ----------------------------------------------------------------------------- 5. small lies and bare errno lines
def test_predict_says_symbolic_link_only_for_one(tmp_path, monkeypatch):
    from ort_training.errors import UsageError
    from ort_training.predict import PredictConfig, check_paths

    monkeypatch.chdir(tmp_path)  # relative paths, as a user types them: the message said "(through a symbolic link)"
    Path("notes.csv").write_text("note\nfever\n")
    Path("link.csv").symlink_to("notes.csv")
    for out, link in (("notes.csv", False), ("link.csv", True)):
        with pytest.raises(UsageError, match="never writes over what it reads") as exc:
            check_paths(PredictConfig(model_dir="m", input_file="notes.csv", output_file=out, text_column="note"))
        assert ("symbolic link" in str(exc.value)) is link, str(exc.value)


def test_an_output_folder_that_is_a_file_is_one_clear_line(tmp_path, capsys):
    train = tmp_path / "train.csv"
    train.write_text("note,label\nfever,yes\ncough,no\n")
    (tmp_path / "v.txt").write_text("x\n")
    for out in (train, train / "sub"):
        rc = finetune.main(["--train_file", str(train), "--config_file", "tiny", "--vocab_file", str(tmp_path / "v.txt"),
                            "--output_dir", str(out), "--device", "cpu"])
        err = capsys.readouterr().err
        # was `finetune: error: [Errno 17] File exists: '.../train.csv'`
        assert rc == 2 and "Traceback" not in err and "is a file, not a folder" in err and str(out) in err, err
    assert train.read_text() == "note,label\nfever,yes\ncough,no\n"


# ----------------------------------------------------------------------------- 6. an exclusion that excludes nothing
def test_exclude_ids_that_match_no_document_say_so(tmp_path):
    corpus = notes_corpus(tmp_path / "corpus", files=1, docs=40)
    (tmp_path / "note_ids.txt").write_text("123\n456\n")  # note ids, but a text corpus's ids are <stem>:<n>
    p = run_data_prep("format", "--corpus", "text", "--input", corpus, "--out-dir", tmp_path / "t1", "--exclude-ids",
                      tmp_path / "note_ids.txt")
    assert "matched none of the documents' ids" in p.stderr and "<file stem>:<n>" in p.stderr, p.stderr[-2000:]
    (tmp_path / "text_ids.txt").write_text("notes_0:0\n")
    p = run_data_prep("format", "--corpus", "text", "--input", corpus, "--out-dir", tmp_path / "t2", "--exclude-ids",
                      tmp_path / "text_ids.txt")
    assert "matched none" not in p.stderr
    assert json.loads((tmp_path / "t2" / "manifest.json").read_text())["skipped"]["excluded_pmid"] == 1


def test_the_two_phase_runner_refuses_an_output_dir_inside_a_file_before_it_writes_a_log(tmp_path, capsys):
    from ort_training import pretrain

    taken = tmp_path / "results"
    taken.write_text("a file where the runs go\n")
    for extra in ([], ["--dry-run"]):  # was: the dry run passed, the run died with a NotADirectoryError traceback
        rc = pretrain.main(["--recipe", "tiny_cpu", "--output_dir", str(taken), "--phase1.input_dir", str(tmp_path),
                            "--phase2.input_dir", str(tmp_path), *extra])
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err and f"inside {taken}, which is a file" in err, err
    assert taken.read_text() == "a file where the runs go\n"


def test_a_single_pretraining_run_never_writes_into_its_input_dir(tmp_path, capsys):
    from ort_training import run_pretraining
    from ort_training.data.synthetic import tiny_setup

    setup = tiny_setup(tmp_path / "tiny", n_files=1, n_per_file=16)
    data = Path(setup["input_dir"])
    before = _snapshot(data)
    for out in (data, data / "out"):  # was: checkpoints/, hf_model/, summary.json among the HDF5 files, exit 0
        for extra in ([], ["--dry-run"]):
            rc = run_pretraining.main(["--input_dir", str(data), "--config_file", setup["config_file"], "--vocab_file",
                                       setup["vocab_file"], "--output_dir", str(out), "--backend", "eager", "--max_steps", "1",
                                       "--train_batch_size", "8", "--disable_progress_bar", "--skip_hf_export", *extra])
            err = capsys.readouterr().err
            assert rc == 2 and "Traceback" not in err and "is or lies inside --input_dir" in err, err
    assert _snapshot(data) == before and sorted(p.name for p in data.iterdir()) == sorted(before)
