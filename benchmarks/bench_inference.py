"""Scoring throughput on CPU: PyTorch eager vs ONNX Runtime fp32 (optimized graph) vs ONNX Runtime int8, side by side.

    PYTHONPATH=. python benchmarks/bench_inference.py --model_dir demo_output/finetune/d_published/hf_model \\
        --test_file demo_output/rct_task/test.csv --label_column label --base

For each classifier (a fine-tuned folder and/or, with --base, a BERT-base-sized one with random weights), each
engine of ort_training/inference.py scores the same pre-tokenized sentences in batches, engines interleaved
round by round (so load from other jobs falls on all of them alike); reported: sentences/s (median over rounds
of sentences / model time; tokenization, the same for every engine, is left out), p50 / p95 latency of one
batch, the speed-up over PyTorch, and on --test_file (every row, windowed as fine-tuning did) each engine's
macro-F1, accuracy and agreement with PyTorch's predicted labels. Exports go to each model's onnx/ cache (the
first run includes the export and checks; later runs reuse them). A variant that predict refuses (its drift check
against PyTorch failed) is skipped with a line saying why; --time_refused times it all the same, made unchecked in
a temporary folder (never cached) and marked in its row.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.atomic import atomic_write_text  # noqa: E402
from ort_training.data.text import Table, TextDataError, encode_split, read_table  # noqa: E402
from ort_training.tasks.finetuning import classification_metrics, predict  # noqa: E402
from ort_training.inference import (CHECK_SENTENCES, ENGINES, MADE_FROM, VARIANT_FILES, DriftError, EngineUnavailableError,  # noqa: E402
                                     ensure_variant, labels_of, load_engine, load_tokenizer, load_torch_classifier,
                                     make_variant, read_classifier_config, require_provider)
from ort_training.predict import PredictConfig, text_settings  # noqa: E402

logger = logging.getLogger("bench_inference")


class Timed:
    """Wraps a model that finetune.predict runs and records the wall time of every forward pass."""

    def __init__(self, inner):
        self.inner, self.config, self.times = inner, inner.config, []

    @property
    def training(self):
        return self.inner.training

    def eval(self):
        self.inner.eval()
        return self

    def train(self, mode: bool = True):
        self.inner.train(mode)
        return self

    def __call__(self, **kw):
        t = time.perf_counter()
        out = self.inner(**kw)
        self.times.append(time.perf_counter() - t)
        return out


def random_base_classifier(tokenizer_dir: Path, out: Path, num_labels: int) -> Path:
    """A BERT-base-sized (12 layers, hidden 768) classifier with random weights and the tokenizer of `tokenizer_dir`."""
    from transformers import BertConfig, BertForSequenceClassification

    from ort_training.export import save_tokenizer

    if (out / "config.json").is_file():
        return out
    tok = load_tokenizer(tokenizer_dir)
    base = json.loads((Path(__file__).resolve().parents[1] / "ort_training/configs/bert_base_config.json").read_text())
    config = BertConfig(**{**base, "vocab_size": len(tok)}, num_labels=num_labels,
                        id2label={i: f"class_{i}" for i in range(num_labels)}, label2id={f"class_{i}": i for i in range(num_labels)})
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(out)
    save_tokenizer(tok, out)
    return out


def refused_engine(model_dir: Path, engine: str, threads: int | None, workdir: Path, reason: DriftError):
    """(model, info) of a variant that predict refuses (its drift check failed), made again unchecked into workdir,
    never into the model's cache, so that its speed and agreement can be measured; its rows say it was refused."""
    source, _ = ensure_variant(model_dir, MADE_FROM[engine])  # what it is made from: checked and cached as usual
    dst = workdir / f"{model_dir.parent.name}-{VARIANT_FILES[engine]}"
    how = make_variant(engine, source.parent, load_torch_classifier(model_dir, attention="eager"), dst)
    info = {"engine": engine, "provider": require_provider(engine), "onnx_file": str(dst), "how": how, "check": None,
            "refused": str(reason)}
    return load_engine(model_dir, engine, threads=threads, info=info)


def bench_model(name: str, model_dir: Path, texts: list[str], test, args) -> list[dict]:
    settings = text_settings(PredictConfig(model_dir=str(model_dir), input_file="x", output_file="x.csv", max_seq_length=args.max_seq_length),
                             model_dir, 10**6)
    tokenizer = load_tokenizer(model_dir)
    labels = labels_of(read_classifier_config(model_dir))
    split = encode_split("bench", Table(Path("bench"), texts, [""] * len(texts), "text", ""), np.zeros(len(texts), dtype=np.int64),
                         tokenizer, settings["max_seq_length"], settings["long_text"], settings["stride"])
    engines = {}
    for engine in args.engines:
        t = time.perf_counter()
        try:
            model, info = load_engine(model_dir, engine, threads=args.threads)
        except DriftError as exc:
            if not args.time_refused:
                print(f"bench_inference: skipping {engine} for {name}: {exc} (--time_refused times it all the same)",
                      file=sys.stderr, flush=True)
                continue
            model, info = refused_engine(model_dir, engine, args.threads, args.refused_dir, exc)
        engines[engine] = {"model": Timed(model), "info": info, "load_s": time.perf_counter() - t, "rounds": [], "lat": []}
        logger.info("%s %s ready in %.1f s", name, engine, engines[engine]["load_s"])
    for e in engines.values():  # warm-up: one pass each
        predict(e["model"], split, args.batch_size, torch.device("cpu"))
    for r in range(args.rounds):
        for engine, e in engines.items():
            e["model"].times.clear()
            predict(e["model"], split, args.batch_size, torch.device("cpu"))
            e["rounds"].append(len(texts) / sum(e["model"].times))
            e["lat"] += e["model"].times
        logger.info("%s round %d: %s", name, r + 1, ", ".join(f"{k} {v['rounds'][-1]:.1f}/s" for k, v in engines.items()))
    results, ref = [], None
    for engine, e in engines.items():
        refused = e["info"].get("refused")
        row = {"model": name, "engine": engine + (" (refused by predict)" if refused else ""), "refused": refused,
               "sentences_per_s": float(np.median(e["rounds"])), "rounds": [round(x, 1) for x in e["rounds"]],
               "p50_batch_ms": 1000 * float(np.percentile(e["lat"], 50)), "p95_batch_ms": 1000 * float(np.percentile(e["lat"], 95)),
               "load_s": round(e["load_s"], 1), "onnx_bytes": e["info"].get("onnx_file") and os.path.getsize(e["info"]["onnx_file"]),
               "check": e["info"].get("check")}
        if test is not None:
            tsplit = encode_split("test", Table(test.path, test.texts, test.labels, "text", ""), np.zeros(len(test), dtype=np.int64),
                                  tokenizer, settings["max_seq_length"], settings["long_text"], settings["stride"])
            probs = predict(e["model"].inner, tsplit, args.batch_size, torch.device("cpu"))
            index = {lab: i for i, lab in enumerate(labels)}
            y = np.asarray([index.get(lab, -1) for lab in test.labels])
            if (y >= 0).all():
                m = classification_metrics(y, probs, labels)
                row.update(macro_f1=m["macro_f1"], accuracy=m["accuracy"])
            pred = probs.argmax(1)
            ref = pred if ref is None else ref
            row["agreement_with_torch"] = float((pred == ref).mean())
        results.append(row)
    base = next((r["sentences_per_s"] for r in results if r["engine"] == "torch"), None)
    for r in results:
        r["speedup"] = r["sentences_per_s"] / base if base else None
    return results


def runnable_engines(engines: list[str]) -> list[str]:
    """The engines this machine can run, each other one skipped with a line saying why (onnx-fp16 needs ONNX Runtime's
    CUDA provider: on a CPU machine the default engine list would otherwise stop at it with a traceback)."""
    keep = []
    for engine in engines:
        try:
            if engine != "torch":
                require_provider(engine)
        except EngineUnavailableError as exc:
            print(f"bench_inference: skipping {engine}: {exc}", file=sys.stderr, flush=True)
            continue
        keep.append(engine)
    return keep


def table(results: list[dict]) -> str:
    lines = ["| model | engine | sentences/s | vs PyTorch | p50 batch ms | p95 batch ms | macro-F1 | accuracy | same label as PyTorch | file MB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        f1 = f"{r['macro_f1']:.4f}" if r.get("macro_f1") is not None else ""
        acc = f"{r['accuracy']:.4f}" if r.get("accuracy") is not None else ""
        agree = f"{r['agreement_with_torch']:.3f}" if r.get("agreement_with_torch") is not None else ""
        size = f"{r['onnx_bytes'] / 1e6:.0f}" if r.get("onnx_bytes") else ""
        lines.append(f"| {r['model']} | {r['engine']} | {r['sentences_per_s']:.1f} | {r['speedup']:.2f}x | {r['p50_batch_ms']:.1f} | "
                     f"{r['p95_batch_ms']:.1f} | {f1} | {acc} | {agree} | {size} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model_dir", help="A fine-tuned classifier folder (hf_model/ of ort_training.finetune).")
    p.add_argument("--base", action="store_true", help="Also a BERT-base-sized classifier with random weights (tokenizer of --model_dir).")
    p.add_argument("--base_timing_rows", type=int, help="Sentences timed per round for the BERT-base model (default: --timing_rows).")
    p.add_argument("--base_dir", help="Where the random BERT-base classifier is kept (default: a temporary folder).")
    p.add_argument("--test_file", help="Labelled file: sentences for timing and macro-F1 per engine.")
    p.add_argument("--text_column", default="text")
    p.add_argument("--label_column", default="label")
    p.add_argument("--timing_rows", type=int, default=512, help="Sentences timed per round (the first rows of --test_file).")
    p.add_argument("--rounds", type=int, default=3, help="Timed rounds (engines interleaved in each).")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_seq_length", type=int, help="Default: the fine-tuning run's (finetune_config.json), else 128.")
    p.add_argument("--threads", type=int, help="CPU threads for every engine (default: theirs).")
    p.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    p.add_argument("--time_refused", action="store_true",
                   help="Time an ONNX variant that predict refuses (its drift check against PyTorch failed) all the same: made "
                        "unchecked in a temporary folder, never cached, its rows marked. Default: skip it with a line saying why.")
    p.add_argument("--out", help="Write the results JSON here.")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger().setLevel(logging.WARNING)  # onnxruntime's quantizer logs every tensor on the root logger
    logger.setLevel(logging.INFO)
    if not args.model_dir:
        p.error("--model_dir is needed (a fine-tuned classifier; with --base its tokenizer is used for the random BERT-base)")
    if not (Path(args.model_dir) / "config.json").is_file():
        p.error(f"--model_dir {args.model_dir}: no config.json there; pass a fine-tuned classifier folder (finetune's hf_model/)")
    if args.test_file and not Path(args.test_file).is_file():
        p.error(f"--test_file {args.test_file}: no such file; pass a labelled .csv/.tsv/.parquet/.jsonl")
    if args.out:
        out = Path(args.out).resolve()
        if out.is_dir():
            p.error(f"--out {args.out}: is a folder; name the .json file to write")
        if (args.test_file and out == Path(args.test_file).resolve()) or out.is_relative_to(Path(args.model_dir).resolve()):
            p.error(f"--out {args.out}: is the --test_file or inside the --model_dir it reads; write it elsewhere")
    args.engines = runnable_engines(args.engines)
    if not args.engines:
        p.error("none of the --engines can run on this machine (see the lines above)")
    try:
        test = read_table(args.test_file, args.text_column, args.label_column) if args.test_file else None
    except TextDataError as exc:
        p.error(str(exc))
    if test is not None:
        texts = test.texts[:args.timing_rows]
    else:
        texts = [CHECK_SENTENCES[i % len(CHECK_SENTENCES)] for i in range(args.timing_rows)]
    results = []
    refused_dir = tempfile.TemporaryDirectory()  # --time_refused's unchecked variants, removed at exit
    args.refused_dir = Path(refused_dir.name)
    results += bench_model(Path(args.model_dir).parent.name or "model", Path(args.model_dir), texts, test, args)
    print(table(results), flush=True)  # each model's rows as soon as they are measured
    if args.base:
        with tempfile.TemporaryDirectory() as tmp:
            base_dir = Path(args.base_dir or Path(tmp) / "bert_base_random")
            n = len(labels_of(read_classifier_config(args.model_dir)))
            random_base_classifier(Path(args.model_dir), base_dir, n)
            # Random weights: macro-F1 would say nothing; timing only.
            results += bench_model("BERT-base size, random weights", base_dir, texts[:args.base_timing_rows or len(texts)], None, args)
    threads = args.threads or torch.get_num_threads()
    print(f"\n{len(texts)} sentences per round, batch {args.batch_size}, {args.rounds} rounds, {threads} threads, "
          f"cpu count {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}; torch {torch.__version__}, "
          f"onnxruntime {next((r['check'] and __import__('onnxruntime').__version__ for r in results if r.get('check')), '-')}")
    print(table(results))
    if args.out:
        atomic_write_text(Path(args.out), json.dumps({"args": vars(args), "results": results}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
