"""Issue 26, round 3 (predict, fine-tuning's folders and files, the search, the model folder): outputs never replace
inputs or another run's finished work, paths stay paths, one table reader, every input file is part of a fine-tune's
identity, model folders are checked before they are trusted, search spaces are checked before anything exists, dry
runs refuse what the run refuses, environment failures are one line, and the small lies are gone. Each refusal:
exit 2, one `PROG: error:` line naming the flag / file, no traceback, inputs unchanged (by digest)."""

# ruff: noqa: F811 -- `model` is test_predict's fixture, imported and then requested by name

from __future__ import annotations

import errno
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from bundle.digest import file_sha256
from ort_training import evaluate, finetune, inference, predict
from ort_training.data import text as text_data
from ort_training.data.tagged import TaggedTable, check_known_tags, read_tagged, tag_set
from ort_training.data.text import Table, TextDataError, read_table
from ort_training.tasks import hpo
from ort_training.tasks.regression import read_targets
from test_predict import model, rows, write_csv  # noqa: F401 -- the tiny fine-tuned classifier fixture
from test_refused_inputs_training import assert_refused, in_process, snapshot


def predict_argv(model, inp, out, *extra):
    return ["--model_dir", str(model["hf"]), "--input_file", str(inp), "--output_file", str(out), "--text_column", "note",
            "--engine", "torch", "--disable_progress_bar", *extra]


# ----------------------------------------------------------------------------- 1. outputs over inputs / finished work
def test_predict_never_writes_over_its_input_or_a_file_it_did_not_make(model, tmp_path, capfd):
    inp = Path(write_csv(tmp_path / "notes.csv", rows(5, 7)))
    digest = file_sha256(inp)
    link = tmp_path / "link.csv"
    link.symlink_to(inp)
    for target in (inp, link):  # the input itself, and through a symbolic link
        rc, err = in_process(predict.main, predict_argv(model, inp, target, "--overwrite"), capfd)
        assert_refused(rc, err, "--output_file", "never writes over what it reads")
    # the record beside the output (OUTPUT.json) would be the input: notes.json scored into notes.csv
    jin = tmp_path / "j" / "notes.json"
    jin.parent.mkdir()
    jin.write_text("".join(json.dumps(r) + "\n" for r in rows(3, 8)))
    rc, err = in_process(predict.main, predict_argv(model, jin, jin.with_suffix(".csv"), "--overwrite"), capfd)
    assert_refused(rc, err, "OUTPUT.json", "never writes over what it reads")
    # a file predict did not make, --overwrite or not
    foreign = tmp_path / "report.csv"
    foreign.write_text("someone's spreadsheet\n")
    rc, err = in_process(predict.main, predict_argv(model, inp, foreign, "--overwrite"), capfd)
    assert_refused(rc, err, "--output_file", "not made by ort_training.predict")
    # into the model folder (its config.json would be the record of hf_model/config.csv)
    rc, err = in_process(predict.main, predict_argv(model, inp, model["hf"] / "config.csv"), capfd)
    assert_refused(rc, err, "a file of the --model_dir")
    assert file_sha256(inp) == digest and foreign.read_text() == "someone's spreadsheet\n" and not (tmp_path / "j" / "notes.csv").exists()
    assert json.loads((model["hf"] / "config.json").read_text())["id2label"]


def test_a_single_finetune_never_replaces_a_search_and_the_reverse(tmp_path, capfd):
    search = tmp_path / "search"
    (search / "hf_model").mkdir(parents=True)
    (search / "hf_model" / "config.json").write_text("{}")
    (search / hpo.REPORT_FILE).write_text(json.dumps({"best_trial": {"number": 0}}))
    single = tmp_path / "single"
    single.mkdir()
    (single / "finetune_summary.json").write_text("{}")
    (tmp_path / "v.txt").write_text("x\n")
    before = snapshot(tmp_path)
    base = ["--train_file", str(tmp_path / "train.csv"), "--config_file", "tiny", "--vocab_file", str(tmp_path / "v.txt")]
    rc, err = in_process(finetune.main, [*base, "--output_dir", str(search)], capfd)
    assert_refused(rc, err, str(search), "hyperparameter search", hpo.REPORT_FILE)
    rc, err = in_process(finetune.main, [*base, "--output_dir", str(single), "--hpo_trials", "2"], capfd)
    assert_refused(rc, err, str(single), "single fine-tuning run")
    rc, err = in_process(finetune.main, [*base, "--output_dir", str(single)], capfd)
    assert_refused(rc, err, str(single), "finished fine-tuning run")
    rc, err = in_process(finetune.main, [*base, "--output_dir", str(search), "--dry-run"], capfd)
    assert_refused(rc, err, "hyperparameter search")
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- 2. paths
@pytest.mark.parametrize("name", ["run?x=1", "a#b", "p%20q", "mode=ro&x"])
def test_study_url_keeps_a_weird_output_dir_inside(tmp_path, name):
    import optuna
    from sqlalchemy.engine import make_url

    out = tmp_path / name
    out.mkdir()
    url = hpo.study_url(out)
    assert make_url(url).database == str((out / hpo.STUDY_FILE).resolve())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(study_name="s", storage=url)
    assert (out / hpo.STUDY_FILE).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # nothing outside the folder


# ----------------------------------------------------------------------------- 3. one table reader
def test_one_reader_binary_parquet_types_duplicates_and_headers(tmp_path, capfd, model):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"note": pa.array([b"fever cough", "chest pain".encode()], pa.binary()), "dx": ["a", "b"],
                             "id": [1, 2]}), tmp_path / "b.parquet")
    assert read_table(tmp_path / "b.parquet", "note", "dx").texts == ["fever cough", "chest pain"]
    assert [t for _, _, ts in predict.iter_chunks(tmp_path / "b.parquet", "note", "id", 10) for t in ts] == ["fever cough", "chest pain"]
    # the same cells in CSV, parquet and jsonl read the same, by both readers
    pq.write_table(pa.table({"note": ["x y", "z"], "dx": [1.0, 2.0]}), tmp_path / "n.parquet")
    (tmp_path / "n.csv").write_text("note,dx\nx y,1\nz,2\n")
    (tmp_path / "n.jsonl").write_text('{"note": "x y", "dx": 1}\n{"note": "z", "dx": 2.0}\n')
    tables = [read_table(tmp_path / f"n.{ext}", "note", "dx") for ext in ("parquet", "csv", "jsonl")]
    assert all(t.texts == ["x y", "z"] and t.labels == ["1", "2"] for t in tables)
    # refused alike by fine-tuning's reader and predict's
    (tmp_path / "dup_header.csv").write_text("note,note,dx\na,b,c\n")
    (tmp_path / "extra.csv").write_text("note,dx\na,b,c\n")
    (tmp_path / "latin1.csv").write_bytes("note,dx\ncaf\xe9,a\n".encode("latin-1"))
    (tmp_path / "obj.jsonl").write_text('{"note": {"a": 1}, "dx": "a"}\n')
    (tmp_path / "quote.csv").write_text('note,dx\n"never closed,a\nb,c\n')
    for name, needle in (("dup_header.csv", "more than once"), ("extra.csv", "3 fields, the header 2"),
                         ("latin1.csv", "invalid UTF-8"), ("obj.jsonl", "holds a dict"), ("quote.csv", "malformed CSV")):
        with pytest.raises(TextDataError, match=needle):
            read_table(tmp_path / name, "note", "dx")
        rc, err = in_process(predict.main, predict_argv(model, tmp_path / name, tmp_path / f"{name}.out.csv"), capfd)
        assert_refused(rc, err, name, needle)
    # duplicate ids: refused naming the id and the file
    (tmp_path / "ids.csv").write_text("id,note\nn1,fever\nn2,cough\nn1,chest\n")
    rc, err = in_process(predict.main, predict_argv(model, tmp_path / "ids.csv", tmp_path / "o.csv", "--id_column", "id"), capfd)
    assert_refused(rc, err, "ids.csv", "'n1'", "rows 1 and 3")


def test_long_texts_are_cut_before_tokenizing_and_windows_are_bounded(model):
    tokenizer = inference.load_tokenizer(model["hf"])
    huge = "fever " * 2_000_000  # 12 MB
    budget = text_data.token_budget(tokenizer, 16, "truncate", 0)
    cut, _ = text_data.cut_texts([huge], tokenizer, budget, exact=False)
    assert len(cut[0]) <= budget * text_data.MAX_CHARS_PER_TOKEN
    table = Table(Path("x"), [huge[:2_000_000], "fever"], ["", ""], "text", "")
    split = text_data.encode_split("t", table, np.zeros(2, dtype=np.int64), tokenizer, 16, "window", 4, max_windows=8)
    assert np.bincount(split.doc_index.numpy()).tolist() == [8, 1] and split.capped == 1
    # the windows kept are those of the uncut text (the cut is at a token boundary)
    full = text_data.encode_split("t", Table(Path("x"), ["fever cough " * 200], [""], "text", ""), np.zeros(1, dtype=np.int64),
                                  tokenizer, 16, "window", 4, max_windows=10_000)
    capped = text_data.encode_split("t", Table(Path("x"), ["fever cough " * 200], [""], "text", ""), np.zeros(1, dtype=np.int64),
                                    tokenizer, 16, "window", 4, max_windows=5)
    assert (full.input_ids[:5] == capped.input_ids).all()
    # scoring holds at most WINDOWS_PER_PASS windows at once
    seen = []
    real = text_data.encode_split

    def spy(*a, **kw):
        s = real(*a, **kw)
        seen.append(len(s))
        return s
    predict.encode_split, old = spy, predict.encode_split
    try:
        probs, windows = predict.score_texts(inference.load_torch_classifier(model["hf"]), tokenizer, ["fever cough " * 3000] * 3,
                                             {"max_seq_length": 16, "long_text": "window", "stride": 4, "max_windows": 2048}, 64)
    finally:
        predict.encode_split = old
    assert probs.shape[0] == 3 and max(seen) <= predict.WINDOWS_PER_PASS and windows == sum(seen)


# ----------------------------------------------------------------------------- 4. identity across runs
def test_resume_with_another_validation_file_is_refused_naming_both(tmp_path, capfd, model):
    root = model["root"]
    train, dev, dev2 = (write_csv(tmp_path / f"{n}.csv", rows(k, s)) for n, k, s in (("train", 48, 11), ("dev", 9, 12), ("dev2", 9, 13)))
    argv = ["--train_file", train, "--test_fraction", "0", "--text_column", "note", "--label_column", "dx", "--output_dir",
            str(tmp_path / "ft"), "--config_file", str(root / "bert_config.json"), "--vocab_file", str(root / "vocab.txt"),
            "--max_seq_length", "16", "--max_steps", "2", "--eval_steps", "2", "--train_batch_size", "16", "--backend", "eager",
            "--disable_progress_bar", "--num_steps_per_checkpoint", "1"]
    assert finetune.main([*argv, "--validation_file", dev]) == 0
    before = snapshot(tmp_path / "ft")
    rc, err = in_process(finetune.main, [*argv, "--validation_file", dev2, "--resume_from_checkpoint"], capfd)
    line = assert_refused(rc, err, "validation_file_sha256")
    assert file_sha256(dev)[:16] in line and file_sha256(dev2)[:16] in line
    assert snapshot(tmp_path / "ft") == before


# ----------------------------------------------------------------------------- 5. model folders
def test_model_folder_checks_truncated_config_head_shape_and_cache_digest(model, tmp_path, capfd):
    ft = tmp_path / "ft"
    shutil.copytree(model["hf"], ft / "hf_model", ignore=shutil.ignore_patterns("onnx"))
    (ft / "finetune_config.json").write_text('{"max_seq_length": 16, "long_te')
    inp = write_csv(tmp_path / "in.csv", rows(3, 5))
    argv = ["--model_dir", str(ft / "hf_model"), "--input_file", inp, "--output_file", str(tmp_path / "o.csv"), "--text_column",
            "note", "--engine", "torch", "--disable_progress_bar"]
    rc, err = in_process(predict.main, argv, capfd)
    assert_refused(rc, err, str(ft / "finetune_config.json"), "not a readable JSON")
    (ft / "finetune_config.json").unlink()
    config = json.loads((ft / "hf_model" / "config.json").read_text())
    config["id2label"] = {"0": "a", "1": "b"}
    config["label2id"] = {"a": 0, "b": 1}
    (ft / "hf_model" / "config.json").write_text(json.dumps(config))
    rc, err = in_process(predict.main, argv, capfd)
    assert_refused(rc, err, "config.json", "2 class(es)", "has 3 outputs")
    # an ONNX cache manifest without the model digest is not trusted: the variant is exported again
    cache = tmp_path / "cache"
    folder = inference.cache_folder(model["hf"], cache)
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"another model's graph")
    (folder / inference.MANIFEST).write_text(json.dumps({"variants": {"fp32": {"file": "model.onnx", "sha256": file_sha256(folder / "model.onnx")}}}))
    path, entry = inference.ensure_variant(model["hf"], "fp32", cache)
    assert path.read_bytes() != b"another model's graph"
    assert json.loads((folder / inference.MANIFEST).read_text())["model_digest"] == inference.model_digest(model["hf"])


# ----------------------------------------------------------------------------- 6. search space values, default stride
@pytest.mark.parametrize("space,needle", [
    ({"learning_rate": {"low": -1e-3, "high": 1e-3}}, "learning_rate: low -0.001 is out of range"),
    ({"learning_rate": {"low": 1e-5, "high": 1e-3, "log": True, "step": 1e-5}}, "log: true and step exclude each other"),
    ({"warmup_proportion": {"low": 0.2, "high": 0.1}}, "need low < high"),
    ({"train_batch_size": {"choices": [16, 30]}}, "train_batch_size 30"),
    ({"num_train_epochs": {"low": 1, "high": 3, "step": 5}}, "step 5"),
    ({"dropout": {"choices": [0.1, 1.5]}}, "dropout: choice 1.5 is out of range"),
])
def test_search_space_values_refused_before_output_dir(tmp_path, capfd, space, needle):
    import yaml

    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"hpo": space}))
    out = tmp_path / "out"
    (tmp_path / "v.txt").write_text("x\n")
    rc, err = in_process(finetune.main, ["--train_file", str(tmp_path / "t.csv"), "--config_file", "tiny", "--vocab_file",
                                         str(tmp_path / "v.txt"), "--output_dir", str(out), "--hpo_trials", "2", "--hpo_space",
                                         str(path), "--gradient_accumulation_steps", "4"], capfd)
    line = assert_refused(rc, err, f"--hpo_space {path}", needle)
    assert "--learning_rate must" not in line or "learning_rate" in space
    assert not out.exists()


def test_default_stride_follows_max_seq_length(tmp_path):
    cfg = finetune.FinetuneConfig(train_file="t.jsonl", task="token_classification", max_seq_length=32, config_file="tiny",
                                  vocab_file="v.txt")
    assert cfg.stride == 15 and finetune.FinetuneConfig(train_file="t.csv", config_file="tiny", vocab_file="v.txt").stride == 32


# ----------------------------------------------------------------------------- 7. dry runs
def test_dry_runs_refuse_what_the_run_refuses_and_write_nothing(model, tmp_path, capfd):
    from data_prep import downstream

    inp = write_csv(tmp_path / "in.csv", rows(4, 9))
    out = tmp_path / "p" / "o.csv"
    rc, err = in_process(predict.main, [*predict_argv(model, inp, out), "--dry-run"], capfd)
    assert rc == 0, err
    assert not (tmp_path / "p").exists() or not any((tmp_path / "p").iterdir())
    (tmp_path / "dup.csv").write_text("note,id\nfever,1\ncough,1\n")
    rc, err = in_process(predict.main, [*predict_argv(model, tmp_path / "dup.csv", out, "--id_column", "id"), "--dry-run"], capfd)
    assert_refused(rc, err, "dup.csv", "given twice")
    rc, err = in_process(evaluate.main, ["--model_dir", str(model["hf"]), "--input_dir", str(tmp_path / "none"), "--dry-run"], capfd)
    assert_refused(rc, err, "--input_dir", "no such folder")
    (tmp_path / "afile").write_text("x")
    rc, err = in_process(downstream.main, ["--inputs", str(tmp_path / "none.xml.gz"), "--dry-run"], capfd)
    assert_refused(rc, err, "--inputs", "no such file")
    xml = tmp_path / "x.xml.gz"
    xml.write_bytes(b"")
    rc, err = in_process(downstream.main, ["--inputs", str(xml), "--out-dir", str(tmp_path / "afile" / "sub"), "--dry-run"], capfd)
    assert_refused(rc, err, "--out-dir", "which is a file")


# ----------------------------------------------------------------------------- 8. environment errors
def test_environment_failures_are_one_line(model, tmp_path, capfd, monkeypatch):
    inp = write_csv(tmp_path / "in.csv", rows(4, 9))
    folder = tmp_path / "dir.csv"
    folder.mkdir()
    rc, err = in_process(predict.main, predict_argv(model, inp, folder), capfd)
    assert_refused(rc, err, "--output_file", "is a folder")
    real_mkstemp = tempfile.mkstemp

    def read_only(*a, dir=None, **kw):
        if str(dir).startswith(str(tmp_path / "ro")) or str(dir).startswith(str(model["hf"])):
            raise OSError(errno.EROFS, "Read-only file system", str(dir))
        return real_mkstemp(*a, dir=dir, **kw)
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    (tmp_path / "ro").mkdir()
    rc, err = in_process(predict.main, predict_argv(model, inp, tmp_path / "ro" / "o.csv"), capfd)
    assert_refused(rc, err, "--output_file's folder", "read-only file system")
    hf = tmp_path / "m" / "hf_model"  # a read-only model folder: the ONNX cache cannot go there
    shutil.copytree(model["hf"], hf, ignore=shutil.ignore_patterns("onnx"))
    monkeypatch.setattr(predict, "_real", predict._real)  # (paths unchanged)

    def ro_model(*a, dir=None, **kw):
        if str(dir).startswith(str(hf)):
            raise OSError(errno.EROFS, "Read-only file system", str(dir))
        return real_mkstemp(*a, dir=dir, **kw)
    monkeypatch.setattr(tempfile, "mkstemp", ro_model)
    rc, err = in_process(predict.main, ["--model_dir", str(hf), "--input_file", inp, "--output_file", str(tmp_path / "o2.csv"),
                                        "--text_column", "note", "--engine", "onnx", "--max_seq_length", "16", "--disable_progress_bar"], capfd)
    assert_refused(rc, err, "--cache_dir", "read-only file system")
    monkeypatch.setattr(tempfile, "mkstemp", real_mkstemp)

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "o3.csv.parts" / "part-00000000.csv"))
    monkeypatch.setattr(predict, "format_rows", full)
    rc, err = in_process(predict.main, predict_argv(model, inp, tmp_path / "o3.csv"), capfd)
    assert_refused(rc, err, "no space left on device", "o3.csv.parts")


# ----------------------------------------------------------------------------- 9. small lies
def test_unknown_tag_names_the_training_split_and_huge_targets_are_refused(tmp_path):
    conll = tmp_path / "train.conll"
    conll.write_text("fever B-SYM\n\ncough B-SYM\n\nchest B-ORG\n\n")
    train = read_tagged(conll)
    kept = train.subset([0, 1], "train split")
    held = train.subset([2], "validation split")
    with pytest.raises(TextDataError, match=r"train\.conll \(validation split\): .*'B-ORG'.*train\.conll \(train split\)\)"):
        check_known_tags(held, tag_set(kept), kept.path)
    assert isinstance(kept, TaggedTable)
    for value in ("1e200", "-1e200", "inf"):
        table = Table(tmp_path / "r.csv", ["a", "b"], ["1.5", value], "text", "y")
        with pytest.raises(TextDataError, match=r"r\.csv: row 2 has '.*' in column 'y'"):
            read_targets(table)
