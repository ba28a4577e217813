"""`python -m ort_training.predict` end to end on a tiny fine-tuned BERT (CPU, real onnxruntime): the engines agree
with fine-tuning's own test predictions (long texts windowed), a run stopped between chunks and rerun gives the
same bytes, bad input stops with one line naming the file / column and writes nothing, and the ONNX checks refuse
a corrupted graph."""

import csv
import json
import random

import numpy as np
import pytest
from cli_runs import write_csv

from ort_training import finetune, predict
from ort_training.data.text import TextDataError

FILLER = "the a patient was seen today for follow up and her his history is noted with no change in plan".split()
KEYS = {"infection": ["fever", "cough", "sputum"], "cardiac": ["chest", "palpitations", "syncope"],
        "renal": ["kidney", "dialysis", "creatinine"]}
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
            type_vocab_size=2, hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
            initializer_range=0.02, layer_norm_eps=1e-12)


def rows(n, seed, long=False):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = list(KEYS)[i % 3]
        words = [rng.choice(FILLER) for _ in range(rng.randint(20, 40) if long else rng.randint(5, 14))]
        for _ in range(2):
            words.insert(rng.randrange(len(words) + 1), rng.choice(KEYS[label]))
        out.append({"note_id": f"n{seed}-{i}", "note": " ".join(words), "dx": label})
    return out



@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny BERT fine-tuned (random init, a few steps) with --long_text window: hf_model/ + test_predictions.csv."""
    root = tmp_path_factory.mktemp("predict")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL + sorted(set(FILLER) | {k for v in KEYS.values() for k in v})) + "\n")
    config = root / "bert_config.json"
    config.write_text(json.dumps({**TINY, "vocab_size": len(vocab.read_text().split())}))
    files = {name: write_csv(root / f"{name}.csv", rows(n, seed, long=True)) for name, n, seed in
             (("train", 60, 1), ("dev", 12, 2), ("test", 23, 3))}
    out = root / "ft"
    argv = ["--train_file", files["train"], "--validation_file", files["dev"], "--test_file", files["test"], "--text_column", "note",
            "--label_column", "dx", "--output_dir", str(out), "--config_file", str(config), "--vocab_file", str(vocab),
            "--max_seq_length", "16", "--long_text", "window", "--stride", "4", "--max_steps", "12", "--eval_steps", "12",
            "--train_batch_size", "16", "--learning_rate", "3e-3", "--backend", "eager", "--disable_progress_bar", "--dropout", "0"]
    assert finetune.main(argv) == 0
    return {"root": root, "hf": out / "hf_model", "test": files["test"], "expected": out / "test_predictions.csv"}


def score(model, out, engine="torch", **kw):
    args = {"model_dir": model["hf"], "input_file": model["test"], "output_file": out, "text_column": "note", "engine": engine,
            "disable_progress_bar": True, "cache_dir": model["root"] / "onnx_cache", **kw}
    return predict.run(predict.PredictConfig(**{k: (str(v) if hasattr(v, "parent") else v) for k, v in args.items()}))


def read(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_torch_engine_equals_finetune_test_predictions(model, tmp_path):
    """Same windows (stride 4 at 16 tokens, from finetune_config.json), same per-document averaging."""
    out = tmp_path / "pred.csv"
    summary = score(model, out)
    got, want = read(out), read(model["expected"])
    assert summary["rows"] == len(want) == 23 and summary["windows_this_run"] > 23  # long texts: several windows each
    labels = ["cardiac", "infection", "renal"]
    assert list(got[0]) == ["id", "predicted"] + [f"p_{lab}" for lab in labels]
    assert [r["id"] for r in got] == [str(i) for i in range(23)]
    assert [r["predicted"] for r in got] == [r["predicted"] for r in want]
    diff = max(abs(float(g[f"p_{lab}"]) - float(w[f"p_{lab}"])) for g, w in zip(got, want) for lab in labels)
    assert diff <= 1e-5  # test_predictions.csv holds 5 decimals
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["identity"]["engine"] == "torch" and len(record["identity"]["model_digest"]) == 64
    assert record["identity"]["long_text"] == "window" and record["identity"]["stride"] == 4
    assert record["settings_from"].endswith("finetune_config.json")


@pytest.mark.onnx
@pytest.mark.parametrize("engine,tol,min_agree", [("onnx", 1e-4, 1.0), ("onnx-int8", 0.1, 0.9)])
def test_onnx_engines_agree_with_pytorch(model, tmp_path, engine, tol, min_agree):
    out = tmp_path / f"{engine}.csv"
    score(model, out, engine=engine, id_column="note_id")
    got, want = read(out), read(model["expected"])
    assert got[0]["note_id"] == "n3-0"  # the id column keeps the input's name
    agree = np.mean([g["predicted"] == w["predicted"] for g, w in zip(got, want)])
    diff = max(abs(float(g[k]) - float(w[k])) for g, w in zip(got, want) for k in g if k.startswith("p_"))
    assert agree >= min_agree and diff <= tol, (agree, diff)
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["identity"]["engine"] == engine and record["identity"]["onnx_sha256"] == record["engine"]["onnx_sha256"]
    assert record["engine"]["check"]["ok"] and record["identity"]["runtime"]["onnxruntime"]
    # The variant is cached by weights digest: a second run uses the same file.
    manifest = json.loads((model["root"] / "onnx_cache").glob("*/manifest.json").__next__().read_text())
    assert manifest["model_digest"] == record["identity"]["model_digest"]


def test_stopped_between_chunks_then_rerun_is_identical(model, tmp_path):
    whole = tmp_path / "whole.csv"
    score(model, whole, chunk_rows=5)
    out = tmp_path / "resumed.csv"

    def stop_after_two(index):
        if index == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict.run(predict.PredictConfig(model_dir=str(model["hf"]), input_file=model["test"], output_file=str(out), text_column="note",
                                          engine="torch", chunk_rows=5, disable_progress_bar=True), on_chunk=stop_after_two)
    parts = predict.parts_dir(out)
    assert not out.exists() and sorted(p.name for p in parts.glob("part-*.csv")) == ["part-00000000.csv", "part-00000001.csv"]
    (parts / ".part-00000002.csv.tmp-999999999").write_text("half a row,")  # a killed writer's leftover
    summary = score(model, out, chunk_rows=5)
    assert summary["rows_scored_this_run"] == 23 - 10
    assert out.read_bytes() == whole.read_bytes() and not parts.exists()
    # Rerun of a finished output: nothing to do. Other settings: refused, the finished file kept.
    assert score(model, out, chunk_rows=5)["already_finished"]
    with pytest.raises(predict.OutputExistsError, match="--overwrite"):
        score(model, out, chunk_rows=5, batch_size=4)
    assert out.read_bytes() == whole.read_bytes()


@pytest.mark.parametrize("case,message", [
    ("no_column", "no column 'note' (--text_column)"),
    ("empty_text", "row 3 (after the header) has an empty text in column 'note'"),
    ("no_id", "no column 'mrn' (--id_column)"),
    ("not_classifier", "not a sequence classifier"),
    ("remote_code", "auto_map"),
    ("no_folder", "no config.json"),
])
def test_bad_input_one_line_exit_2_nothing_written(model, tmp_path, capsys, case, message):
    import shutil

    hf, data = model["hf"], model["test"]
    extra = []
    if case == "no_column":
        data = write_csv(tmp_path / "in.csv", [{"text": "x", "dx": "renal"}])
    elif case == "empty_text":
        data = write_csv(tmp_path / "in.csv", [{"note": "fever"}, {"note": "cough"}, {"note": "  "}])
    elif case == "no_id":
        extra = ["--id_column", "mrn"]
    elif case in ("not_classifier", "remote_code"):
        hf = tmp_path / "hf"
        shutil.copytree(model["hf"], hf)
        config = json.loads((hf / "config.json").read_text())
        if case == "not_classifier":
            config["architectures"] = ["BertForMaskedLM"]
        else:
            config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_evil.EvilModel"}
        (hf / "config.json").write_text(json.dumps(config))
    elif case == "no_folder":
        hf = tmp_path
    out = tmp_path / "pred.csv"
    out_kept = tmp_path / "kept.csv"
    out_kept.write_text("earlier output\n")
    for target in (out, out_kept):
        rc = predict.main(["--model_dir", str(hf), "--input_file", str(data), "--output_file", str(target), "--text_column", "note",
                           "--engine", "torch", "--disable_progress_bar", *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and message in err[0], err
        assert str(data if case in ("no_column", "empty_text", "no_id") else hf) in err[0]
    assert not out.exists() and not predict.parts_dir(out).exists()
    assert out_kept.read_text() == "earlier output\n"


def test_chunked_readers_csv_jsonl_parquet_agree(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = rows(11, 5)
    paths = [write_csv(tmp_path / "a.csv", data), tmp_path / "a.jsonl", tmp_path / "a.parquet", tmp_path / "a.tsv"]
    paths[1].write_text("".join(json.dumps(r) + "\n" for r in data))
    pq.write_table(pa.Table.from_pylist(data), paths[2])
    with open(paths[3], "w", newline="") as fh:
        w = csv.DictWriter(fh, list(data[0]), delimiter="\t")
        w.writeheader()
        w.writerows(data)
    want = [(r["note_id"], r["note"]) for r in data]
    for path in paths:
        chunks = list(predict.iter_chunks(predict.Path(path), "note", "note_id", 4))
        assert [c[0] for c in chunks] == [0, 4, 8]
        assert [(i, t) for _, ids, texts in chunks for i, t in zip(ids, texts)] == want, path
    with pytest.raises(TextDataError, match="no column 'body'"):
        list(predict.iter_chunks(paths[1], "body", None, 4))


@pytest.mark.onnx
def test_drift_check_refuses_a_corrupted_onnx(model, tmp_path):
    import onnx
    from onnx import numpy_helper

    from ort_training import inference

    cache = tmp_path / "cache"
    path, entry = inference.ensure_variant(model["hf"], "fp32", cache)
    assert entry["check"]["ok"] and entry["check"]["max_abs_logit"] <= inference.TOLERANCES["fp32"]["max_abs_logit"]
    graph = onnx.load(str(path))
    bias = next(t for t in graph.graph.initializer if "classifier.bias" in t.name)
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + np.array([0.5, 0, 0], np.float32), bias.name))
    onnx.save(graph, str(path))
    torch_model = inference.load_torch_classifier(model["hf"], attention="eager")
    feed = inference.check_batch(inference.load_tokenizer(model["hf"]), torch_model.config)
    with pytest.raises(inference.DriftError, match="drifts from PyTorch"):
        inference.verify_variant(path, "fp32", torch_model, feed)
    # The cache notices the file no longer matches what was checked, makes it again and checks it.
    again, entry2 = inference.ensure_variant(model["hf"], "fp32", cache)
    assert again == path and entry2["check"]["ok"]
    inference.verify_variant(path, "fp32", torch_model, feed)


@pytest.mark.onnx
def test_a_refused_variant_is_named_by_its_model_folder_and_leaves_nothing(model, tmp_path, monkeypatch):
    """A variant that fails its check when it is made is refused naming the model folder the user gave (not the
    temporary file it was checked in, which is gone by then), and nothing of it is kept."""
    from ort_training import inference

    monkeypatch.setitem(inference.TOLERANCES, "fp32", {"max_abs_logit": -1.0})  # no export can pass this
    cache = tmp_path / "cache"
    with pytest.raises(inference.DriftError) as refused:
        inference.ensure_variant(model["hf"], "fp32", cache)
    message = str(refused.value)
    assert message.startswith(f"{model['hf']}: the fp32 ONNX variant drifts from PyTorch") and ".tmp-" not in message
    assert not [p for p in cache.rglob("*") if p.suffix == ".onnx" or ".tmp-" in p.name]


@pytest.mark.onnx
def test_bench_inference_skips_a_refused_variant_or_times_it_unchecked_outside_the_cache(model, tmp_path, monkeypatch, capsys):
    """benchmarks/bench_inference.py on a model whose int8 variant predict refuses: by default the engine is skipped
    with one line naming the refusal (it used to end the benchmark with a traceback); --time_refused times it, made
    unchecked in a temporary folder, its row marked, and the model's ONNX cache never holds it."""
    import shutil
    import sys
    from pathlib import Path

    from ort_training import inference

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        import bench_inference
    finally:
        sys.path.pop(0)
    hf = tmp_path / "ft" / "hf_model"
    shutil.copytree(model["hf"], hf)
    shutil.copy(model["hf"].parent / "finetune_config.json", hf.parent)
    monkeypatch.setitem(inference.TOLERANCES, "onnx-int8", {"max_abs_logit": -1.0})  # no quantization can pass this
    argv = ["--model_dir", str(hf), "--test_file", str(model["test"]), "--text_column", "note", "--label_column", "dx",
            "--timing_rows", "8", "--rounds", "1", "--threads", "1", "--engines", "torch", "onnx-int8"]
    assert bench_inference.main(argv) == 0
    out = capsys.readouterr()
    assert "bench_inference: skipping onnx-int8 for ft: " in out.err and "drifts from PyTorch" in out.err
    assert "| onnx-int8" not in out.out and "| ft | torch |" in out.out
    assert bench_inference.main(argv + ["--time_refused", "--out", str(tmp_path / "bench.json")]) == 0
    assert "| ft | onnx-int8 (refused by predict) |" in capsys.readouterr().out
    rows = json.loads((tmp_path / "bench.json").read_text())["results"]
    assert [r["engine"] for r in rows] == ["torch", "onnx-int8 (refused by predict)"] and "drifts" in rows[1]["refused"]
    assert rows[1]["onnx_bytes"] > 0 and 0 <= rows[1]["agreement_with_torch"] <= 1
    assert not list(hf.rglob(inference.VARIANT_FILES["onnx-int8"]))  # the cache has the checked variants only


@pytest.mark.onnx
def test_modernbert_classifier_scores_on_onnx(model, tmp_path):
    """A tiny ModernBERT classifier (sliding-window attention narrower than the text) exports, passes its checks and
    scores like PyTorch."""
    import torch
    from transformers import ModernBertConfig, ModernBertForSequenceClassification

    from ort_training.inference import load_tokenizer

    tok = load_tokenizer(model["hf"])
    base = json.loads((predict.Path(finetune.__file__).parent / "configs" / "modernbert_tiny_config.json").read_text())
    base.pop("architectures")
    base.update(vocab_size=len(tok), pad_token_id=tok.pad_token_id, cls_token_id=tok.cls_token_id, sep_token_id=tok.sep_token_id,
                bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                num_hidden_layers=3, local_attention=8, num_labels=3, id2label={0: "cardiac", 1: "infection", 2: "renal"},
                label2id={"cardiac": 0, "infection": 1, "renal": 2})
    torch.manual_seed(0)
    hf = tmp_path / "modernbert"
    ModernBertForSequenceClassification(ModernBertConfig(**base)).save_pretrained(hf)
    tok.save_pretrained(hf)
    out = {}
    for engine in ("torch", "onnx"):
        out[engine] = tmp_path / f"{engine}.csv"
        predict.run(predict.PredictConfig(model_dir=str(hf), input_file=model["test"], output_file=str(out[engine]), text_column="note",
                                          engine=engine, max_seq_length=32, disable_progress_bar=True))
    got, want = read(out["onnx"]), read(out["torch"])
    assert [r["predicted"] for r in got] == [r["predicted"] for r in want]
    assert max(abs(float(g[k]) - float(w[k])) for g, w in zip(got, want) for k in g if k.startswith("p_")) <= 1e-4


@pytest.mark.onnx
def test_optimizer_imports_twice_in_one_process():
    """The pinned stack's onnxruntime optimizer imports coloredlogs (not installed): the stand-in must survive a
    second import (a benchmark makes several models' variants in one process)."""
    from ort_training.inference import _import_optimizer

    assert _import_optimizer() is _import_optimizer()


@pytest.mark.onnx
def test_demo_scoring_table_from_real_runs(model, tmp_path):
    """`make demo`'s last step: the engines' outputs side by side, macro-F1 against the labels of the scored file."""
    import importlib.util
    from pathlib import Path

    from sklearn.metrics import f1_score

    spec = importlib.util.spec_from_file_location("demo_report", Path(__file__).resolve().parents[2] / "scripts" / "demo_report.py")
    demo_report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo_report)
    outputs = []
    for engine in ("torch", "onnx-int8"):
        score(model, tmp_path / f"{engine}.csv", engine=engine, id_column="note_id")
        outputs.append((engine, tmp_path / f"{engine}.csv"))
    md = demo_report.scoring_report(Path(model["test"]), "dx", outputs, tmp_path / "report")
    result = json.loads((tmp_path / "report" / "scoring_results.json").read_text())
    gold = [r["dx"] for r in read(model["test"])]
    torch_row, int8_row = result["rows"]
    assert torch_row["macro_f1"] == pytest.approx(f1_score(gold, [r["predicted"] for r in read(outputs[0][1])], average="macro"))
    assert torch_row["agreement"] == 1.0 and 0.9 <= int8_row["agreement"] <= 1.0
    assert all(r["rows_per_s"] > 0 for r in result["rows"]) and "| onnx-int8 |" in md
    with pytest.raises(SystemExit, match="predictions for the 12 rows"):
        demo_report.scoring_report(Path(model["root"] / "dev.csv"), "dx", outputs, tmp_path / "bad")


@pytest.mark.onnx
def test_fp16_variant_needs_cuda_and_converts(model, tmp_path, capsys):
    """onnx-fp16 is for a GPU: without ONNX Runtime's CUDA provider it is refused before anything is written (one
    line, exit 2); the conversion itself (fused graph -> float16, int64 inputs and float32 logits kept) runs anywhere."""
    import onnx
    import onnxruntime

    from ort_training import inference

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime offers CUDA: the GPU path is exercised by test_onnx_engines_agree_with_pytorch's engines")
    out = tmp_path / "fp16.csv"
    code = predict.main(["--model_dir", str(model["hf"]), "--input_file", model["test"], "--output_file", str(out), "--text_column", "note",
                         "--engine", "onnx-fp16", "--cache_dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--engine onnx-fp16 needs ONNX Runtime's CUDAExecutionProvider" in err[0], err
    assert not out.exists() and not (tmp_path / "cache").exists()
    fused, _ = inference.ensure_variant(model["hf"], "onnx", model["root"] / "onnx_cache")
    how = inference._to_fp16(fused, tmp_path / "model-fp16.onnx")
    graph = onnx.load(str(tmp_path / "model-fp16.onnx")).graph
    assert "float16" in how and {i.type.tensor_type.elem_type for i in graph.input} == {onnx.TensorProto.INT64}
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    float_inits = [i for i in graph.initializer if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    assert float_inits and all(i.data_type == onnx.TensorProto.FLOAT16 for i in float_inits)
