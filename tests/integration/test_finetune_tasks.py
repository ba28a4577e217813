"""`python -m ort_training.finetune --task multi_label | regression` and the classification reports
(calibration, temperature scaling, subgroups) on real PubMed rows (tests/assets/pubmed: 259 MEDLINE citations),
tiny BERT on CPU: each trains, evaluates, exports, reloads with AutoModelForSequenceClassification and scores
with ort_training.predict as the test report did; and an optuna search (real SQLite study) killed mid-search
resumes with its finished trials kept."""

import csv
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from lxml import etree

from data_prep.downstream import DownstreamConfig, build_mesh_task
from ort_training import finetune, predict

ROOT = Path(__file__).resolve().parents[2]
ASSET = ROOT / "tests" / "assets" / "pubmed" / "pubmed20n0014_sample.xml.gz"
VOCAB = ROOT / "tests" / "assets" / "pubmed" / "bert-base-uncased-vocab.txt"
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
            type_vocab_size=2, hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
            initializer_range=0.02, layer_norm_eps=1e-12, vocab_size=30522)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The asset's citations as rows: title (+ abstract), major MeSH descriptors (the MeSH task), the number of
    MeSH headings (a regression target), whether 'Humans' is a heading (a binary label) and the journal's
    country (a subgroup)."""
    root = tmp_path_factory.mktemp("pubmed")
    rows = []
    for art in etree.fromstring(gzip.decompress(ASSET.read_bytes())).iterfind("PubmedArticle"):
        cit = art.find("MedlineCitation")
        text = " ".join("".join(e.itertext()) for e in [cit.find("Article/ArticleTitle"), *cit.iterfind("Article/Abstract/AbstractText")])
        headings = [h.findtext("DescriptorName") for h in cit.iterfind("MeshHeadingList/MeshHeading")]
        rows.append({"pmid": cit.findtext("PMID"), "text": text, "headings": len(headings),
                     "humans": "yes" if "Humans" in headings else "no", "country": cit.findtext("MedlineJournalInfo/Country")})
    with open(root / "citations.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (root / "tiny.json").write_text(json.dumps(TINY))
    mesh = root / "mesh"
    build_mesh_task(DownstreamConfig(inputs=[str(ASSET)], out_dir=mesh, task="mesh", top_k=4, output_format="jsonl",
                                     dev_fraction=0.2, test_fraction=0.2))
    return {"root": root, "csv": str(root / "citations.csv"), "rows": rows, "config": str(root / "tiny.json"), "mesh": mesh}


def argv(out, data, **kw):
    args = {"config_file": data["config"], "vocab_file": str(VOCAB), "output_dir": str(out), "max_seq_length": 64,
            "train_batch_size": 8, "eval_steps": 4, "max_steps": 12, "learning_rate": 3e-3, "backend": "eager",
            "disable_progress_bar": True, **kw}
    out = []
    for k, v in args.items():
        out += [f"--{k}"] if v is True else [f"--{k}", str(v)]
    return out


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def hf_outputs(folder, texts):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        logits = model(**tok(texts, truncation=True, max_length=64, padding=True, return_tensors="pt")).logits
    return model.config, logits


def test_multi_label_mesh_task(data, tmp_path):
    """The MeSH task from real MEDLINE records: thresholds chosen on validation go into the export's config; the
    export (AutoModelForSequenceClassification, problem_type multi_label_classification) gives the report's
    probabilities, and ort_training.predict (ONNX) the report's label sets."""
    out, mesh = tmp_path / "ml", data["mesh"]
    assert finetune.main(argv(out, data, task="multi_label", label_column="labels", train_file=mesh / "train.jsonl",
                              validation_file=mesh / "dev.jsonl", test_file=mesh / "test.jsonl", temperature_scaling=True)) == 0
    report = json.loads((out / "test_report.json").read_text())
    labels = json.loads((mesh / "manifest.json").read_text())["labels"]
    assert report["labels"] == labels and report["task"] == "multi_label"
    for key in ("micro_f1", "macro_f1", "macro_auroc", "exact_match"):
        assert key in report
    assert set(report["per_label"]) == set(labels) and all("auroc" in v for v in report["per_label"].values())
    assert report["temperature"] > 0 and 0 <= report["calibration"]["ece"] <= 1
    assert (out / "reliability.png").stat().st_size > 1000
    history = [json.loads(line) for line in (out / "validation.jsonl").read_text().splitlines()]
    summary = json.loads((out / "finetune_summary.json").read_text())
    assert summary["metric"] == "micro_f1" and summary["direction"] == "maximize"
    assert summary["validation"]["micro_f1"] == max(r["micro_f1"] for r in history)

    test_rows = [json.loads(line) for line in (mesh / "test.jsonl").read_text().splitlines()]
    config, logits = hf_outputs(out / "hf_model", [r["text"] for r in test_rows])
    assert config.problem_type == "multi_label_classification"
    assert config.label_thresholds == {lab: v["threshold"] for lab, v in report["per_label"].items()}
    written = read_csv(out / "test_predictions.csv")
    probs = np.array([[float(r[f"p_{lab}"]) for lab in labels] for r in written])
    assert np.abs(torch.sigmoid(logits).numpy() - probs).max() < 1e-4

    for engine in ("torch", "onnx"):  # torch: the report's label sets exactly; onnx (fused fp32 graph): its probabilities
        scored = tmp_path / f"scored-{engine}.csv"
        assert predict.main(["--model_dir", str(out / "hf_model"), "--input_file", str(mesh / "test.jsonl"), "--id_column", "pmid",
                             "--output_file", str(scored), "--engine", engine, "--disable_progress_bar"]) == 0
        got = read_csv(scored)
        assert [r["pmid"] for r in got] == [r["pmid"] for r in test_rows]  # the id column keeps its name
        assert np.abs(np.array([[float(r[f"p_{lab}"]) for lab in labels] for r in got]) - probs).max() < 1e-3
        if engine == "torch":
            assert [r["predicted"] for r in got] == [r["predicted"] for r in written]


def test_regression_on_real_rows(data, tmp_path):
    """Number of MeSH headings per citation: RMSE minimised by early stopping; the export outputs the target's unit
    (standardisation folded in), and ort_training.predict writes the values the report used."""
    out = tmp_path / "reg"
    assert finetune.main(argv(out, data, task="regression", train_file=data["csv"], label_column="headings",
                              validation_fraction=0.15, test_fraction=0.15)) == 0
    report = json.loads((out / "test_report.json").read_text())
    for key in ("mae", "rmse", "r2", "spearman"):
        assert key in report
    assert (out / "scatter.png").stat().st_size > 1000
    history = [json.loads(line) for line in (out / "validation.jsonl").read_text().splitlines()]
    summary = json.loads((out / "finetune_summary.json").read_text())
    assert summary["direction"] == "minimize" and summary["validation"]["rmse"] == min(r["rmse"] for r in history)
    written = read_csv(out / "test_predictions.csv")
    pred = np.array([float(r["predicted"]) for r in written])
    targets = np.array([float(r["headings"]) for r in data["rows"]])
    assert abs(pred.mean() - targets.mean()) < 2 * targets.std()  # the target's unit, not z-scores
    assert report["rmse"] == pytest.approx(float(np.sqrt(np.mean((pred - np.array([float(r["target"]) for r in written])) ** 2))),
                                           rel=1e-4)
    texts = [r["text"] for r in data["rows"][:5]]
    config, logits = hf_outputs(out / "hf_model", texts)
    assert config.problem_type == "regression" and config.num_labels == 1
    src = tmp_path / "five.csv"
    with open(src, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text"])
        w.writerows([t] for t in texts)
    scored = tmp_path / "scored.csv"
    assert predict.main(["--model_dir", str(out / "hf_model"), "--input_file", str(src), "--output_file", str(scored),
                         "--engine", "torch", "--disable_progress_bar"]) == 0
    got = read_csv(scored)
    assert list(got[0]) == ["id", "predicted"]
    assert np.abs(np.array([float(r["predicted"]) for r in got]) - logits.numpy().reshape(-1)).max() < 1e-3


def test_single_label_calibration_and_subgroups(data, tmp_path):
    """'Humans' yes/no with the journal's country as --group_column: every metric and the ECE per group (groups
    add up to the test set), temperature scaling lowers (or keeps) the validation loss."""
    out = tmp_path / "cls"
    assert finetune.main(argv(out, data, train_file=data["csv"], label_column="humans", group_column="country",
                              temperature_scaling=True, validation_fraction=0.15, test_fraction=0.15)) == 0
    report = json.loads((out / "test_report.json").read_text())
    assert report["group_column"] == "country"
    assert sum(g["documents"] for g in report["groups"].values()) == report["documents"]
    for g in report["groups"].values():
        assert {"accuracy", "macro_f1", "ece", "confusion_matrix"} <= set(g)
    before, after = report["validation_loss_before_after"]
    assert after <= before + 1e-6
    assert (out / "reliability.png").is_file() and (out / "confusion_matrix.png").is_file()
    with pytest.raises(SystemExit):
        finetune.parse_config(argv(tmp_path / "x", data, train_file=data["csv"], task="regression", temperature_scaling=True))
    with pytest.raises(SystemExit):  # text-level flags on the tagging task
        finetune.parse_config(argv(tmp_path / "x", data, train_file=data["csv"], task="token_classification", group_column="country"))


@pytest.mark.ort
def test_ort_backend_multi_label_and_regression(data, tmp_path):
    mesh = data["mesh"]
    assert finetune.main(argv(tmp_path / "ml", data, task="multi_label", label_column="labels", train_file=mesh / "train.jsonl",
                              validation_file=mesh / "dev.jsonl", test_file=mesh / "test.jsonl", max_steps=2, eval_steps=1,
                              backend="ort")) == 0
    assert finetune.main(argv(tmp_path / "reg", data, task="regression", label_column="headings", train_file=data["csv"],
                              max_steps=2, eval_steps=1, backend="ort")) == 0
    for d in ("ml", "reg"):
        assert (tmp_path / d / "hf_model" / "model.safetensors").is_file()


def test_hpo_killed_mid_search_resumes(data, tmp_path):
    """An optuna search of 2 trials (SQLite in OUTPUT_DIR), SIGKILLed while the second runs: the rerun keeps the
    finished trial, runs the killed trial's parameters again, finishes 2 trials and exports the best."""
    import optuna

    space = tmp_path / "space.yaml"
    space.write_text("hpo:\n  learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}\n  warmup_proportion: {low: 0.0, high: 0.2}\n"
                     "  train_batch_size: {choices: [8, 16]}\n")
    out = tmp_path / "hpo"
    args = argv(out, data, train_file=data["csv"], label_column="humans", hpo_trials=2, hpo_space=space, max_steps=4, eval_steps=2)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ort_training.finetune", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    storage = f"sqlite:///{out / 'hpo.sqlite3'}"
    deadline = time.time() + 900
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.25)  # a trial takes seconds: the second is seen running before it ends
            try:
                trials = optuna.load_study(study_name="finetune", storage=storage).trials
            except Exception:  # noqa: BLE001 -- the study is not created yet
                continue
            states = [t.state.name for t in trials]
            # output_dir is set once every parameter is drawn: a kill between two draws leaves a partial set
            if "COMPLETE" in states and states[-1] == "RUNNING" and "output_dir" in trials[-1].user_attrs:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = optuna.load_study(study_name="finetune", storage=storage).trials
    killed = before[-1]
    assert killed.state.name == "RUNNING" and len(killed.params) == 3
    kept = {t.number: (t.value, t.params) for t in before if t.state.name in ("COMPLETE", "PRUNED")}
    assert kept

    assert finetune.main(args) == 0
    after = optuna.load_study(study_name="finetune", storage=storage).trials
    assert {t.number: (t.value, t.params) for t in after if t.number in kept} == kept
    assert after[killed.number].state.name == "FAIL" and after[killed.number].user_attrs["interrupted"]
    redo = [t for t in after if t.user_attrs.get("redo_of") == killed.number]
    assert len(redo) == 1 and redo[0].params == killed.params
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in after) == 2
    report = json.loads((out / "hpo_report.json").read_text())
    complete = [t for t in after if t.state.name == "COMPLETE"]
    best = max(complete, key=lambda t: t.value)
    assert report["objective"]["metric"] == "macro_f1" and report["objective"]["direction"] == "maximize"
    assert report["best_trial"]["number"] == best.number and report["best_trial"]["params"] == best.params
    assert all(t.intermediate_values for t in complete)  # every evaluation reported to the pruner
    assert (Path(best.user_attrs["output_dir"]) / "hf_model").is_dir()
    config, _ = hf_outputs(out / "hf_model", ["a test"])
    assert sorted(config.label2id) == ["no", "yes"]
