"""Issue 26: dry runs and estimates that told less than the run does.

- the sizing estimate against what data_prep wrote on the bundled PubMed sample (each format, both phases);
- every pre-training refusal the real run makes at start-up (`Trainer._setup` / `_restore`, `run_pretraining`) is
  made by `run_pretraining --dry-run` too, with the same line (ort_training/checks.py is the one copy);
- continued-pretraining recipes without an init checkpoint, an init checkpoint of another architecture, absurd batch
  values, a BPE below its byte alphabet, a WordPiece vocab adopted as BPE, SIGTERM during `data_prep packed`,
  benchmark engines the machine cannot run.
Refusals: exit 2, no traceback, one error line naming the flag or file, inputs unchanged."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from bundle import layout

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "tests" / "assets" / "pubmed"
VOCAB = ASSETS / "bert-base-uncased-vocab.txt"
ENV = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def run(*argv, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, argv)], env=ENV, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def assert_refused(rc: int, err: str, *needles: str) -> str:
    """Exit 2, no traceback, exactly one error line, naming every needle."""
    assert rc == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if "error: " in line]
    assert len(lines) == 1, err[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ----------------------------------------------------------------------------- sizing vs data_prep
@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """data_prep on the bundled PubMed sample: HDF5 both phases (NSP, and MLM-only) and packed at 128 and 512."""
    w = tmp_path_factory.mktemp("sizing")
    p = run("-m", "data_prep", "all", "--corpus", "pubmed", "--input", ASSETS / "pubmed20n0014_sample.xml.gz",
            "--work-dir", w, "--vocab-file", VOCAB, "--num-shards", "1", "--test-fraction", "0", "--processes", "1",
            "--splitter", "blingfire")
    assert p.returncode == 0, p.stderr[-3000:]
    for L in (128, 512):
        p = run("-m", "data_prep", "packed", "--shard-dir", w / "shards", "--tokenizer", VOCAB, "--out-dir", w,
                "--max-seq-length", L, "--processes", "1")
        assert p.returncode == 0, p.stderr[-3000:]
    p = run("-m", "data_prep", "hdf5", "--shard-dir", w / "shards", "--vocab-file", VOCAB, "--out-dir", w / "mlm",
            "--objective", "mlm", "--processes", "1")
    assert p.returncode == 0, p.stderr[-3000:]
    return w


def _corpus_tokens(shard: Path) -> tuple[int, int]:
    """(tokens, documents) of a shard as the hdf5 stage tokenizes it."""
    from data_prep.create_hdf5 import iter_document_chunks
    from data_prep.tokenizer import WordTokenizer, clean_sentences

    wt = WordTokenizer(VOCAB, True)
    tokens = documents = 0
    for docs in iter_document_chunks(shard, 10_000):
        for d in docs:
            _, lens = wt.encode(clean_sentences(d))
            tokens += int(lens.sum())
            documents += int(lens.sum() > 0)
    return tokens, documents


@pytest.mark.parametrize("fmt,objective,L,P", [("hdf5", "nsp", 128, 20), ("hdf5", "nsp", 512, 80),
                                               ("hdf5", "mlm", 128, 20), ("hdf5", "mlm", 512, 80),
                                               ("packed", "mlm", 128, None), ("packed", "mlm", 512, None)])
def test_sizing_estimate_bounds_what_data_prep_wrote(prepared, fmt, objective, L, P):
    from ort_training.sizing import BOUND_MARGIN, instance_bytes, phase_size

    tokens, documents = _corpus_tokens(prepared / "shards" / "pubmed_training_0.txt")
    assert documents == 99 and 20_000 < tokens < 23_000
    if fmt == "packed":
        d = prepared / layout.packed_dir_name(L) / "pubmed"
    else:
        d = layout.find_data_dir(prepared if objective == "nsp" else prepared / "mlm", format="hdf5", seq_len=L, max_pred=P)
    m = json.loads((d / "manifest.json").read_text())
    written = m["sequences"] if fmt == "packed" else m["instances"]
    files = list(d.glob("*.hdf5"))
    on_disk = sum(f.stat().st_size for f in files)
    if fmt == "packed":
        uncompressed = 4 * m["tokens"] + 8 * (m["sequences"] + len(files))
    else:
        uncompressed = written * instance_bytes(L, P)
        with h5py.File(files[0], "r") as f:
            assert f["input_ids"].shape == (written, L)  # every instance padded to L: what instance_bytes counts
    est = phase_size("p", tokens, L, P or 1, 1, 1, tokens_per_document=round(tokens / documents), objective=objective,
                     fmt=fmt)
    # An honest bound: what was written is at most the bound, and the estimate is near it (measured: within 8%).
    assert written <= est.instances_bound, (written, est)
    assert est.instances / BOUND_MARGIN <= written, (written, est)
    assert abs(est.instances / written - 1) < 0.1, (written, est.instances)
    assert uncompressed <= est.disk_bound and on_disk <= est.disk_bound, (uncompressed, on_disk, est.disk_bound)


def test_sizing_old_model_undercounted_phase2_by_four():
    """The model this replaces (tokens / (L - 3) x dupe) said 210 instances for the sample's 512 phase; 881 were written."""
    from ort_training.sizing import phase_size

    assert phase_size("phase2", 21_324, 512, 80, 1, 1, tokens_per_document=215).instances > 4 * 210


def test_pretrain_dry_run_prints_bounded_sizing(tmp_path, capsys):
    from ort_training.pretrain import main

    rc = main(["--recipe", "tiny_cpu", "--output_dir", str(tmp_path / "out"), "--dry-run", "--corpus_documents", "1000",
               "--tokens_per_document", "215", "--phase1.max_seq_length", "128", "--phase2.max_seq_length", "512",
               "--objective", "mlm"])
    out = capsys.readouterr().out
    assert rc == 0, out
    for phase, L in (("phase1", 128), ("phase2", 512)):
        assert f"# sizing: {phase}: seq {L}: HDF5: ~" in out and f"# sizing: {phase}: seq {L}: packed: ~" in out
    assert "at most" in out and "estimate x 1.2" in out and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- the trainer's refusals, dry and real
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from ort_training.data.synthetic import tiny_setup, write_bert_config

    root = tmp_path_factory.mktemp("tiny")
    setup = tiny_setup(root / "setup", n_files=1, n_per_file=16)
    # A Hugging Face folder of another size (hidden 32 vs the run's 64): an init checkpoint of another architecture.
    from transformers import BertConfig, BertForPreTraining

    small = write_bert_config(root / "small.json", 1003, hidden=32, heads=2)
    BertForPreTraining(BertConfig.from_json_file(str(small))).save_pretrained(root / "small_hf")
    bad = json.loads(Path(setup["config_file"]).read_text()) | {"hidden_size": 30, "num_attention_heads": 4}
    (root / "bad_config.json").write_text(json.dumps(bad))
    (root / "neither").mkdir()
    (root / "neither" / "notes.txt").write_text("not a model\n")
    return {**setup, "root": root}


def _argv(tiny, out: Path, *extra: str, drop: tuple[str, ...] = ()) -> list[str]:
    base = {"--input_dir": tiny["input_dir"], "--config_file": tiny["config_file"], "--vocab_file": tiny["vocab_file"],
            "--output_dir": str(out), "--backend": "eager", "--train_batch_size": "8", "--max_steps": "1",
            "--max_seq_length": "64", "--max_predictions_per_seq": "10"}
    argv = [x for k, v in base.items() if k not in drop for x in (k, v)]
    return argv + ["--disable_progress_bar", "--skip_hf_export", *extra]


# (id, extra flags, flags left out, needle of the refusal). Read off Trainer._setup / _restore and run_pretraining.
REFUSALS = [
    ("ort-bf16-on-cpu", ["--backend", "ort", "--precision", "bf16"], (), "--backend ort on CPU trains in fp32 only"),
    ("family-backend", ["--config_file", "modernbert_tiny", "--backend", "ort"], (), "--backend ort cannot train"),
    ("attention-backend", ["--attention", "flash_attention_2"], (), "--attention"),
    ("config-heads", ["--config_file", "{root}/bad_config.json"], (), "not divisible by num_attention_heads"),
    ("no-input-dir", [], ("--input_dir",), "--input_dir is required"),
    ("seq-length", ["--max_seq_length", "128"], (), "--max_seq_length 128"),
    ("vocab-too-big", ["--vocab_file", str(VOCAB)], (), "has 30522 tokens"),
    ("init-architecture", ["--init_checkpoint", "{root}/small_hf"], (), "small_hf"),
    ("init-neither", ["--init_checkpoint", "{root}/neither"], (), "neither a Hugging Face model folder"),
    ("init-missing", ["--init_checkpoint", "{root}/nowhere"], (), "no such file or folder"),
    ("phase2-nothing", ["--phase2", "--resume_from_checkpoint"], (), "no checkpoint in"),
]


def _refusal_argv(tiny, out, extra, drop):
    return _argv(tiny, out, *[e.format(root=tiny["root"]) for e in extra], drop=drop)


def _in_process(main, argv, capfd) -> tuple[int, str]:
    capfd.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    return rc, capfd.readouterr().err


@pytest.mark.parametrize("case,extra,drop,needle", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_run_pretraining_dry_run_makes_every_start_up_refusal(tiny, tmp_path, capfd, case, extra, drop, needle):
    from ort_training import run_pretraining

    dry_out, real_out = tmp_path / "dry", tmp_path / "real"
    rc, err = _in_process(run_pretraining.main, _refusal_argv(tiny, dry_out, extra, drop) + ["--dry-run"], capfd)
    dry = assert_refused(rc, err, needle)
    assert not dry_out.exists()  # a dry run writes nothing
    rc, err = _in_process(run_pretraining.main, _refusal_argv(tiny, real_out, extra, drop), capfd)
    real = assert_refused(rc, err, needle)
    assert dry.replace(str(dry_out), "OUT") == real.replace(str(real_out), "OUT")  # the same line


def test_dry_run_refuses_checkpoints_without_resume_and_a_locked_output(tiny, tmp_path, capfd):
    from bundle.locking import RunLock
    from ort_training import run_pretraining

    out = tmp_path / "out"
    (out / "checkpoints" / "step-1").mkdir(parents=True)
    (out / "checkpoints" / "step-1" / "checkpoint.pt").write_bytes(b"x")
    rc, err = _in_process(run_pretraining.main, _argv(tiny, out, "--dry-run"), capfd)
    assert_refused(rc, err, "already holds checkpoints")
    with RunLock(out, "training"):
        rc, err = _in_process(run_pretraining.main, _argv(tiny, out, "--dry-run", "--resume_from_checkpoint"), capfd)
    assert_refused(rc, err, "is in use by another training run")


def test_run_pretraining_dry_run_passes_a_good_run_and_writes_nothing(tiny, tmp_path, capfd):
    from ort_training import run_pretraining

    rc, err = _in_process(run_pretraining.main, _argv(tiny, tmp_path / "out", "--dry-run"), capfd)
    assert rc == 0, err
    assert not (tmp_path / "out").exists()


def test_pretrain_dry_run_refuses_ort_bf16_on_cpu(tiny, tmp_path, capfd):
    """README step 2 on a CPU machine (device auto): the dry run refuses what the trainer would."""
    from ort_training.pretrain import main

    rc, err = _in_process(main, ["--recipe", "continued_pretraining", "--phase1.init_checkpoint", str(tiny["root"] / "small_hf"),
                                 "--device", "cpu", "--output_dir", str(tmp_path / "r"), "--phase1.input_dir", "later1",
                                 "--phase2.input_dir", "later2", "--dry-run"], capfd)
    assert_refused(rc, err, "--backend ort on CPU trains in fp32 only")


@pytest.mark.parametrize("recipe", ["continued_pretraining", "modernbert_continued", "demo_continued"])
def test_continued_recipes_refuse_no_init_checkpoint(recipe, tmp_path, capfd):
    from ort_training.pretrain import main
    from ort_training.recipe import load_recipe

    assert load_recipe(recipe).requires_init_checkpoint  # stated once, in the YAML
    for dry in (["--dry-run"], []):
        rc, err = _in_process(main, ["--recipe", recipe, "--output_dir", str(tmp_path / "r"), "--phase1.input_dir", "d1",
                                     "--phase2.input_dir", "d2", *dry], capfd)
        assert_refused(rc, err, f"recipe {recipe}", "--phase1.init_checkpoint")
    assert not (tmp_path / "r").exists()


def test_dry_run_refuses_an_init_checkpoint_of_another_architecture(tiny, tmp_path, capfd):
    """BERT-large's recipe with a small model to start from: the architecture check of the real run (weights_import)."""
    from ort_training.pretrain import main

    rc, err = _in_process(main, ["--recipe", "bert_large_biobert", "--phase1.init_checkpoint", str(tiny["root"] / "small_hf"),
                                 "--device", "cuda", "--output_dir", str(tmp_path / "r"), "--phase1.input_dir", "later1",
                                 "--phase2.input_dir", "later2", "--dry-run"], capfd)
    assert_refused(rc, err, str(tiny["root"] / "small_hf"))


# ----------------------------------------------------------------------------- batch arithmetic
def test_divisor_search_is_arithmetic():
    from ort_training.recipe import largest_divisor_at_most, plan_batch

    t = time.perf_counter()
    assert largest_divisor_at_most(1 << 24, 64) == 64
    assert largest_divisor_at_most(16_777_213, 1_000_000) == 1  # a prime: no divisor but 1 below the bound
    assert largest_divisor_at_most(65_536 // 8, 10**9) == 8_192
    assert largest_divisor_at_most(96, 10) == 8 and largest_divisor_at_most(100, 30) == 25
    assert plan_batch(1 << 24, 1 << 24, 1, 1).gradient_accumulation_steps == 1
    assert time.perf_counter() - t < 1.0
    assert all(largest_divisor_at_most(n, b) == max(d for d in range(1, min(n, b) + 1) if n % d == 0)
               for n in range(1, 200) for b in range(1, 40))


def test_submit_dry_run_refuses_an_absurd_batch_at_once(tmp_path):
    t = time.perf_counter()
    p = run("azureml/submit.py", "--recipe", "bert_large_biobert", "--phase1-data", "azureml://d/p1", "--phase2-data",
            "azureml://d/p2", "--dry-run", "--output-yaml", tmp_path / "job.yaml", "--phase1.micro-batch-size",
            "1000000000000000000", timeout=120)
    assert_refused(p.returncode, p.stderr, "micro_batch_size 1,000,000,000,000,000,000", "not a batch size")
    assert time.perf_counter() - t < 60 and not (tmp_path / "job.yaml").exists()


# ----------------------------------------------------------------------------- data_prep small lies
def test_bpe_vocab_size_below_the_byte_alphabet_is_refused(tmp_path):
    p = run("-m", "data_prep", "vocab", "--shard-dir", tmp_path / "shards", "--out-dir", tmp_path / "v",
            "--tokenizer-type", "bpe", "--vocab-size", "100")
    assert_refused(p.returncode, p.stderr, "--vocab-size 100", "261")
    assert not (tmp_path / "v").exists()


def test_bpe_with_a_wordpiece_vocab_file_is_refused(tmp_path):
    before = VOCAB.read_bytes()
    for dry in (["--dry-run"], []):
        p = run("-m", "data_prep", "vocab", "--shard-dir", tmp_path / "s", "--out-dir", tmp_path / "v", "--tokenizer-type", "bpe",
                "--vocab-file", VOCAB, *dry)
        assert_refused(p.returncode, p.stderr, f"--vocab-file {VOCAB}", "WordPiece", "--tokenizer-type bpe")
    assert VOCAB.read_bytes() == before and not (tmp_path / "v" / "vocab.txt").exists()


def test_sigterm_to_packed_workers_is_quiet_and_exits_143(tmp_path):
    from data_prep.config import FormatConfig, ShardConfig
    from data_prep.formatting import run_format
    from data_prep.shard import run_shard

    run_format(FormatConfig(inputs=[ASSETS / "pubmed20n0014_sample.xml.gz"], out_dir=tmp_path / "text"))
    run_shard(ShardConfig(text_dir=tmp_path / "text", out_dir=tmp_path / "s", num_shards=1, test_fraction=0.0,
                          splitter="blingfire"))
    shards = tmp_path / "shards"
    shards.mkdir()
    text = (tmp_path / "s" / "pubmed_training_0.txt").read_text()
    for i in range(4):
        (shards / f"pubmed_training_{i}.txt").write_text(text * 60)  # seconds of work per shard
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "data_prep", "packed", "--shard-dir", str(shards), "--tokenizer", str(VOCAB),
                             "--out-dir", str(out), "--processes", "2", "--max-seq-length", "128"],
                            env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    d = out / layout.packed_dir_name(128) / "pubmed"
    deadline = time.time() + 120
    while not list(d.glob(".*.tmp-*")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "finished before it could be stopped; make the shards bigger"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err and "BrokenPipe" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if "error: " in line]
    assert len(lines) == 1 and "SIGTERM" in lines[0] and "re-run the same command" in lines[0], err[-3000:]
    time.sleep(1)  # the workers are gone, not orphans still writing
    assert not (d / "manifest.json").exists()
    p = run("-m", "data_prep", "packed", "--shard-dir", shards, "--tokenizer", VOCAB, "--out-dir", out, "--processes", "2",
            "--max-seq-length", "128")
    assert p.returncode == 0, p.stderr[-3000:]
    assert (d / "manifest.json").exists() and not list(d.glob(".*.tmp-*"))


@pytest.mark.parametrize("case, message", [
    ("no_model", "--model_dir {d}/nope: no config.json there"),
    ("no_test_file", "--test_file {d}/nope.csv: no such file"),
    ("out_is_folder", "--out {d}: is a folder; name the .json file to write"),
    ("out_is_input", "--out {d}/test.csv: is the --test_file or inside the --model_dir it reads"),
])
def test_bench_inference_refuses_bad_paths_in_one_line(tmp_path, capsys, case, message):
    """A missing model or test file, an --out that is a folder or the file it reads: one error line (after argparse's
    usage), exit 2, before any work,
    and the input left as it was (they were tracebacks, the --out folder one after the whole benchmark)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import bench_inference
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    model = tmp_path / "hf_model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    test = tmp_path / "test.csv"
    test.write_text("text,label\na,b\n")
    argv = {"no_model": ["--model_dir", str(tmp_path / "nope")],
            "no_test_file": ["--model_dir", str(model), "--test_file", str(tmp_path / "nope.csv")],
            "out_is_folder": ["--model_dir", str(model), "--test_file", str(test), "--out", str(tmp_path)],
            "out_is_input": ["--model_dir", str(model), "--test_file", str(test), "--out", str(test)]}[case]
    with pytest.raises(SystemExit) as stop:
        bench_inference.main(argv + ["--engines", "torch"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err, err  # argparse's usage, then the one line
    assert f"error: {message.format(d=tmp_path)}" in err.strip().splitlines()[-1], err
    assert test.read_text() == "text,label\na,b\n"


def test_bench_inference_skips_engines_this_machine_cannot_run(capsys):
    pytest.importorskip("onnxruntime")
    import onnxruntime

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import bench_inference
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    kept = bench_inference.runnable_engines(["torch", "onnx", "onnx-int8", "onnx-fp16"])
    err = capsys.readouterr().err
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        assert kept == ["torch", "onnx", "onnx-int8", "onnx-fp16"]
    else:
        assert kept == ["torch", "onnx", "onnx-int8"]
        assert "skipping onnx-fp16" in err and "CUDAExecutionProvider" in err

