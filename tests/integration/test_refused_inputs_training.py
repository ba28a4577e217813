"""Fault injection for training, fine-tuning and evaluation (issue 15): inputs a demanding user hands the bundle
that must be refused, each with exit 2, one `PROG: error:` line naming the file or flag, no traceback, and
nothing already written changed. One class per section: resume with other inputs (3), data that passes the
schema but is wrong (4), values at the edges (6), and errors as errors (9). Each class has a real subprocess
run of the entry point; the other cases call the same `main` in-process (the same code path, less start-up)."""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from bundle.digest import file_sha256
from ort_training import evaluate, finetune, run_pretraining
from ort_training.data.hdf5 import DataError, Shard, load_shard
from ort_training.data.synthetic import tiny_setup, write_bert_config, write_dataset
from ort_training.data.text import TextDataError, read_table
from ort_training.loop.checkpoint import list_checkpoints

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


# ----------------------------------------------------------------------------- helpers
def pretrain_argv(setup, out: Path, *extra: str, steps: int = 2) -> list[str]:
    return ["--input_dir", setup["input_dir"], "--config_file", setup["config_file"], "--vocab_file", setup["vocab_file"],
            "--output_dir", str(out), "--backend", "eager", "--train_batch_size", "8", "--max_steps", str(steps),
            "--num_steps_per_checkpoint", "1", "--learning_rate", "1e-3", "--disable_progress_bar", "--skip_hf_export", *extra]


def subprocess_run(module: str, argv: list[str]) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", module, *argv], env=ENV, cwd=REPO, capture_output=True, text=True, timeout=900)
    return proc.returncode, proc.stderr


def in_process(main, argv: list[str], capfd) -> tuple[int, str]:
    """`main(argv)`'s exit status (argparse's SystemExit included) and what it wrote to stderr."""
    capfd.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    return rc, capfd.readouterr().err


def assert_refused(rc: int, err: str, *needles: str) -> str:
    """Exit 2, no traceback, exactly one error line, and it names every needle (file, flag, value)."""
    assert rc == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if "error: " in line]
    assert len(lines) == 1, err[-3000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` except the run lock (its holder line is rewritten by every run)."""
    return {str(p.relative_to(folder)): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory.mktemp("refused"), n_files=2, n_per_file=40, seq_len=32, max_pred=5, hidden=32)


@pytest.fixture(scope="module")
def trained(setup, tmp_path_factory):
    """A 2-step pretraining run (checkpoints step-1, step-2) that the resume cases try to continue."""
    out = tmp_path_factory.mktemp("trained") / "out"
    assert run_pretraining.main(pretrain_argv(setup, out)) == 0
    assert [s for s, _ in list_checkpoints(out)] == [1, 2]
    return out


def copy_of(trained: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    return out


# ----------------------------------------------------------------------------- class 3: resume with other inputs
def test_resume_on_other_data_is_refused_naming_both(setup, trained, tmp_path):
    out = copy_of(trained, tmp_path)
    other = write_dataset(tmp_path / "other_data", 2, 40, seq_len=32, max_pred=5, vocab_size=1003, seed=7)
    before = snapshot(out)
    rc, err = subprocess_run("ort_training.run_pretraining", pretrain_argv({**setup, "input_dir": str(other)}, out, "--resume_from_checkpoint"))
    line = assert_refused(rc, err, "--resume_from_checkpoint", setup["input_dir"], str(other), "new --output_dir")
    assert line.count("digest") == 2
    assert snapshot(out) == before


def test_resume_with_another_architecture_is_refused_by_name(setup, trained, tmp_path, capfd):
    out = copy_of(trained, tmp_path)
    wider = write_bert_config(tmp_path / "wider.json", 1003, hidden=64)
    before = snapshot(out)
    rc, err = in_process(run_pretraining.main, pretrain_argv({**setup, "config_file": str(wider)}, out, "--resume_from_checkpoint"), capfd)
    line = assert_refused(rc, err, str(out), "hidden_size 32 vs 64", "--config_file")
    assert "size mismatch" not in err and "load_state_dict" not in err
    # Another objective is another task class: refused the same way, not as missing/unexpected keys.
    rc, err = in_process(run_pretraining.main, pretrain_argv(setup, out, "--resume_from_checkpoint", "--objective", "mlm"), capfd)
    assert_refused(rc, err, "BertForPreTraining", "BertForMaskedLM")
    assert "Unexpected key" not in err
    assert snapshot(out) == before, line


def write_notes(path: Path, n: int, seed: int, label_of=None) -> str:
    rng = random.Random(seed)
    words = "the patient was seen today for follow up with no change in plan".split()
    keys = {"a": ["fever", "cough"], "b": ["chest", "syncope"]}
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["note", "dx"])
        for i in range(n):
            label = "ab"[i % 2]
            text = " ".join(rng.choice(words) for _ in range(rng.randint(4, 10))) + " " + rng.choice(keys[label])
            w.writerow([text, label_of(i, label) if label_of else label])
    return str(path)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("task")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(
        set("the patient was seen today for follow up with no change in plan fever cough chest syncope".split()))]) + "\n")
    config = write_bert_config(root / "config.json", len(vocab.read_text().split()), hidden=32, max_position=64)
    return {"root": root, "vocab": str(vocab), "config": str(config)}


def finetune_argv(task, out: Path, train_file: str, *extra: str) -> list[str]:
    return ["--train_file", train_file, "--text_column", "note", "--label_column", "dx", "--output_dir", str(out),
            "--config_file", task["config"], "--vocab_file", task["vocab"], "--max_seq_length", "16", "--train_batch_size", "8",
            "--max_steps", "2", "--eval_steps", "2", "--test_fraction", "0", "--backend", "eager", "--disable_progress_bar", *extra]


def test_finetune_resumed_on_another_file_of_the_same_length_is_refused(task, tmp_path, capfd):
    train = tmp_path / "train.csv"
    out = tmp_path / "ft"
    write_notes(train, 40, seed=0)
    assert finetune.main(finetune_argv(task, out, str(train))) == 0
    old_sha = file_sha256(train)
    write_notes(train, 40, seed=1)  # same rows, other notes: the examples count cannot tell
    new_sha = file_sha256(train)
    before = snapshot(out)
    rc, err = subprocess_run("ort_training.finetune", finetune_argv(task, out, str(train), "--resume_from_checkpoint"))
    assert_refused(rc, err, str(train), old_sha[:12], new_sha[:12], "--output_dir")
    assert snapshot(out) == before
    # The same file resumed as another task (one label per row reads as a one-label list): refused, naming both tasks.
    write_notes(train, 40, seed=0)
    rc, err = in_process(finetune.main, finetune_argv(task, out, str(train), "--resume_from_checkpoint", "--task", "multi_label"), capfd)
    assert_refused(rc, err, "task multi_label", "task single_label")
    assert snapshot(out) == before
    # A second fine-tune into the same folder without --resume_from_checkpoint: one line, nothing touched.
    rc, err = subprocess_run("ort_training.finetune", finetune_argv(task, out, str(train)))
    assert_refused(rc, err, str(out), "holds a finished fine-tuning run")
    assert snapshot(out) == before


# ----------------------------------------------------------------------------- class 4: data that passes the schema but is wrong
def broken_copy(setup, tmp_path: Path, edit) -> tuple[Path, Path]:
    """A folder holding a copy of the first training file, changed by `edit(f)` (an open h5py.File)."""
    src = sorted(Path(setup["input_dir"]).glob("*.hdf5"))[0]
    data = tmp_path / "data"
    data.mkdir()
    first = Path(shutil.copy(src, data / src.name))
    with h5py.File(first, "r+") as f:
        edit(f)
    return data, first


def mask_padding(f, row: int = 3) -> None:
    """Point row `row`'s last used masked position at a padding token (input_mask 0), keeping it ascending."""
    mask = f["input_mask"][row]
    pos = f["masked_lm_positions"][row]
    last = int(np.flatnonzero(pos > 0)[-1])
    pad = int(np.flatnonzero(mask == 0)[-1])
    assert pad > pos[last]
    pos[last] = pad
    f["masked_lm_positions"][row] = pos


def test_masked_positions_in_padding_are_refused_naming_file_and_row(setup, tmp_path):
    with h5py.File(sorted(Path(setup["input_dir"]).glob("*.hdf5"))[0], "r") as f:
        row = int(np.flatnonzero(f["input_mask"][:].min(1) == 0)[0])  # a row with padding
    data, first = broken_copy(setup, tmp_path, lambda f: mask_padding(f, row))
    out = tmp_path / "out"
    rc, err = subprocess_run("ort_training.run_pretraining", pretrain_argv({**setup, "input_dir": str(data)}, out))
    assert_refused(rc, err, str(first), f"row {row}", "padding (input_mask 0)", "regenerate")
    assert not list_checkpoints(out)


def swap_first_two(pos, ids, r):
    pos[r, :2] = pos[r, 1::-1]


def unuse_first_slot(pos, ids, r):
    pos[r, 0] = ids[r, 0] = 0


def label_in_unused_slot(pos, ids, r):
    ids[r, -1] = 7


@pytest.mark.parametrize(("edit", "what"), [(swap_first_two, "not strictly ascending"), (unuse_first_slot, "after an unused one"),
                                            (label_in_unused_slot, "holds a label other than 0")])
def test_masking_invariants_are_checked_on_read(setup, tmp_path, edit, what):
    src = sorted(Path(setup["input_dir"]).glob("*.hdf5"))[0]
    path = tmp_path / "bad_training.hdf5"
    shutil.copy(src, path)
    with h5py.File(path, "r+") as f:
        pos, ids = f["masked_lm_positions"][:], f["masked_lm_ids"][:]
        used = (pos > 0).sum(1)
        r = int(np.flatnonzero((used >= 2) & (used < pos.shape[1]))[0])  # two predictions and an unused slot
        edit(pos, ids, r)
        f["masked_lm_positions"][:] = pos
        f["masked_lm_ids"][:] = ids
    load_shard(Shard(src))  # the untouched file passes
    with pytest.raises(DataError, match=f"{path}: row {r}: .*{what}"):
        load_shard(Shard(path))


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
@pytest.mark.parametrize("missing", [None, float("nan"), "", "NaN", "null", "N/A"])
def test_a_missing_label_is_refused_in_every_format(tmp_path, suffix, missing):
    """One rule for every format: null, NaN, an empty cell and the usual missing markers are refused with the row."""
    rows = [{"note": f"note {i}", "dx": "a" if i % 2 else "b"} for i in range(6)]
    rows[4]["dx"] = missing
    path = tmp_path / f"train{suffix}"
    if suffix in (".csv", ".tsv"):
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, ["note", "dx"], delimiter="\t" if suffix == ".tsv" else ",")
            w.writeheader()
            w.writerows({**r, "dx": "" if r["dx"] is None else ("NaN" if isinstance(r["dx"], float) else r["dx"])} for r in rows)
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))  # NaN as JSON's NaN literal, None as null
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        # A float NaN among strings is a null, as pandas writes it (from_pandas).
        column = pa.array([r["dx"] for r in rows], from_pandas=True)
        pq.write_table(pa.table({"note": [r["note"] for r in rows], "dx": column}), path)
    with pytest.raises(TextDataError, match=r"row 5 .*has no value in column 'dx' \(--label_column\)"):
        read_table(path, "note", "dx")


def test_finetune_on_a_csv_with_a_nan_label_is_one_line(task, tmp_path, capfd):
    train = write_notes(tmp_path / "train.csv", 20, seed=0, label_of=lambda i, label: "NaN" if i == 6 else label)
    rc, err = in_process(finetune.main, finetune_argv(task, tmp_path / "ft", train), capfd)
    assert_refused(rc, err, train, "row 7", "'dx'", "--label_column")


# ----------------------------------------------------------------------------- class 6: values at the edges
@pytest.mark.parametrize(("flags", "message"), [
    (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps must be >= 1, got 0"),
    (["--learning_rate", "inf"], "--learning_rate must be > 0 and finite, got inf"),
    (["--learning_rate", "nan"], "--learning_rate must be > 0 and finite, got nan"),
    (["--max_grad_norm", "inf"], "--max_grad_norm must be >= 0 and finite"),
])
def test_edge_values_are_refused_by_the_shared_config_check(setup, task, tmp_path, capfd, flags, message):
    rc, err = in_process(run_pretraining.main, pretrain_argv(setup, tmp_path / "out", *flags), capfd)
    assert_refused(rc, err, message)
    rc, err = in_process(finetune.main, finetune_argv(task, tmp_path / "ft", write_notes(tmp_path / "t.csv", 20, 0), *flags), capfd)
    assert_refused(rc, err, message)
    assert not (tmp_path / "out").exists() and not (tmp_path / "ft").exists()


def test_gradient_accumulation_zero_in_a_subprocess(setup, tmp_path):
    rc, err = subprocess_run("ort_training.run_pretraining", pretrain_argv(setup, tmp_path / "out", "--gradient_accumulation_steps", "0"))
    assert_refused(rc, err, "--gradient_accumulation_steps must be >= 1")
    assert "ZeroDivisionError" not in err


def config_with(tmp_path: Path, name: str, **fields) -> str:
    path = write_bert_config(tmp_path / name, 1003, hidden=32)
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))
    return str(path)


@pytest.mark.parametrize(("fields", "needles"), [
    ({"hidden_size": 30, "num_attention_heads": 4}, ["hidden_size 30 is not divisible by num_attention_heads 4"]),
    ({"max_position_embeddings": 16}, ["sequences of 32 tokens", "max_position_embeddings 16"]),
    ({"type_vocab_size": 1}, ["segment id 1", "type_vocab_size 1"]),
    ({"num_hidden_layers": 0}, ["num_hidden_layers must be a positive integer"]),
])
def test_config_edges_are_refused_naming_the_file(setup, tmp_path, capfd, fields, needles):
    config = config_with(tmp_path, "config.json", **fields)
    out = tmp_path / "out"
    rc, err = in_process(run_pretraining.main, pretrain_argv({**setup, "config_file": config}, out), capfd)
    file_named = setup["input_dir"] if "type_vocab_size" in fields else config
    assert_refused(rc, err, file_named, *needles)
    assert not list_checkpoints(out)


def hf_folder(tmp_path: Path, name: str = "hf") -> Path:
    from transformers import BertConfig, BertForPreTraining

    folder = tmp_path / name
    BertForPreTraining(BertConfig(vocab_size=1003, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                  max_position_embeddings=64)).save_pretrained(folder, safe_serialization=True)
    return folder


def corrupt_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:8] = (len(data) * 10).to_bytes(8, "little")  # a header longer than the file
    path.write_bytes(bytes(data))


def test_a_corrupt_safetensors_header_names_the_file(setup, tmp_path, capfd):
    folder = hf_folder(tmp_path)
    weights = folder / "model.safetensors"
    corrupt_header(weights)
    out = tmp_path / "out"
    rc, err = subprocess_run("ort_training.run_pretraining", pretrain_argv({**setup, "config_file": str(folder / "config.json")}, out,
                                                                            "--init_checkpoint", str(folder)))
    assert_refused(rc, err, str(weights), "not a readable safetensors file")
    assert not list_checkpoints(out)
    # The same file as the model folder evaluate reads.
    rc, err = in_process(evaluate.main, ["--model_dir", str(folder), "--input_dir", setup["input_dir"], "--split", "training"], capfd)
    assert_refused(rc, err, str(weights))


# ----------------------------------------------------------------------------- class 9: errors as errors
def test_config_not_json_is_one_line(setup, tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    rc, err = subprocess_run("ort_training.run_pretraining", pretrain_argv({**setup, "config_file": str(bad)}, tmp_path / "out"))
    assert_refused(rc, err, str(bad), "not a readable config JSON")


def test_non_bert_init_folder_is_one_line(task, tmp_path, capfd):
    folder = hf_folder(tmp_path, "gpt")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    rc, err = in_process(finetune.main, finetune_argv(task, tmp_path / "ft", write_notes(tmp_path / "t.csv", 20, 0), "--config_file",
                                                      str(folder / "config.json"), "--init_checkpoint", str(folder)), capfd)
    assert_refused(rc, err, str(folder / "config.json"), "model_type 'gpt2' is not supported")


def test_evaluate_returns_an_exit_code_and_refuses_in_one_line(setup, tmp_path, capfd):
    rc, err = in_process(evaluate.main, ["--model_dir", str(tmp_path / "nowhere"), "--input_dir", setup["input_dir"]], capfd)
    assert_refused(rc, err, "--model_dir", "config.json")
    folder = hf_folder(tmp_path)
    data, first = broken_copy(setup, tmp_path, lambda f: f["input_ids"].__setitem__((0, 1), 5000))
    os.rename(first, first.with_name("synthetic_test_0.hdf5"))
    rc, err = in_process(evaluate.main, ["--model_dir", str(folder), "--input_dir", str(data)], capfd)
    assert_refused(rc, err, "synthetic_test_0.hdf5", "input_ids holds 5000")
    # and a good run: the JSON on stdout, exit 0
    capfd.readouterr()
    assert evaluate.main(["--model_dir", str(folder), "--input_dir", setup["input_dir"], "--split", "training", "--max_batches", "1"]) == 0
    assert json.loads(capfd.readouterr().out.strip().splitlines()[-1])["sequences"] > 0


def test_the_expected_error_helper_keeps_tracebacks_for_bugs():
    from ort_training.errors import UsageError, exit_on_expected

    assert exit_on_expected("x", lambda: (_ for _ in ()).throw(UsageError("--flag: bad"))) == 2
    with pytest.raises(ZeroDivisionError):
        exit_on_expected("x", lambda: 1 // 0)
    with pytest.raises(ValueError):  # a library's ValueError is a bug here, not a user error
        exit_on_expected("x", lambda: int("x"))
