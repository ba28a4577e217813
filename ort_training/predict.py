"""Score new text with a fine-tuned classifier: `python -m ort_training.predict`.

    python -m ort_training.predict --model_dir ft/hf_model --input_file notes.csv --text_column note \\
        --id_column note_id --output_file predictions.csv --engine onnx-int8

- input: .csv / .tsv / .parquet / .jsonl (.json) read in chunks of --chunk_rows rows (CSV through
  data/text.py's reader; parquet by record batches; jsonl line by line), so memory stays bounded;
- long texts: the settings the model was fine-tuned with (OUTPUT_DIR/finetune_config.json beside hf_model/:
  --max_seq_length, --long_text truncate|window, --stride) unless given; windows are made by data/text.py's
  `encode_split` and scored by finetune's `predict` (softmax per window, averaged per document), so a
  document gets the probabilities fine-tuning's test report gives it;
- engines: torch (PyTorch eager), onnx (ONNX Runtime, fp32, fused graph), onnx-int8 (int8 dynamic
  quantization), onnx-fp16 (float16 on a CUDA GPU): see ort_training/inference.py (export, checks against PyTorch, cache in MODEL/onnx/);
- output: a CSV with id, predicted, p_<class> per class (6 decimals), and OUTPUT.json beside it (model digest,
  engine, settings, input sha256, rows, throughput). A multi-label model (`--task multi_label`): predicted is
  the labels whose probability reaches the label's threshold from the folder's config (`label_thresholds`,
  chosen on validation; 0.5 where absent), joined by '|'; a regression model: id, predicted (the value);
- resumable: every chunk is written whole (write-then-rename) into OUTPUT.parts/ with state.json; a killed
  run rerun with the same command skips the chunks on disk and continues, and the final file (header + the
  chunks, renamed into place at the end) is byte-identical to an uninterrupted run's. A finished output
  is kept: rerunning says so; --overwrite replaces it only when the new one is complete.

Bad input (no such file or column, an empty text, a folder that is not a classifier, custom model code)
stops before anything is written with one line naming the file, row and column, exit 2.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal, Optional

import numpy as np
import torch

from bundle.atomic import atomic_path, atomic_write_text
from bundle.cli import add_arguments, from_dict, parse_into
from bundle.digest import file_sha256
from bundle.locking import RunLock
from ort_training.data.text import SUFFIXES, Table, TextDataError, _rows_csv, encode_split, is_json_array, iter_json_lines
from ort_training.inference import (
    ENGINES,
    DriftError,
    Engine,
    labels_of,
    load_engine,
    load_tokenizer,
    model_digest,
    read_classifier_config,
    tokenizer_digest,
)
from ort_training.errors import EXPECTED_ERRORS, UsageError, report

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
STATE_FILE = "state.json"


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class PredictConfig:
    """Settings of one scoring run (flags generated from these fields)."""

    model_dir: str = _f(None, "A fine-tuned classifier folder: the hf_model/ that python -m ort_training.finetune writes.")
    input_file: str = _f(None, "Text to score: .csv / .tsv / .parquet / .jsonl (.json).")
    output_file: str = _f(None, "Predictions CSV to write (OUTPUT.json beside it records model, engine and settings).")
    text_column: str = _f("text", "Column holding the text.", aliases=("--text-column",))
    id_column: Optional[str] = _f(None, "Column whose value identifies each row in the output (default: the row number, from 0).",
                                  aliases=("--id-column",))
    engine: Engine = _f("onnx", "torch = PyTorch eager; onnx = ONNX Runtime fp32 with the transformer optimizer's fused graph; "
                                "onnx-int8 = int8 dynamic quantization (CPU); onnx-fp16 = float16 on ONNX Runtime's CUDA provider (GPU).")
    max_seq_length: Optional[int] = _f(None, "Tokens per window; default: the fine-tuning run's (finetune_config.json), else 128.")
    long_text: Optional[Literal["truncate", "window"]] = _f(None, "Texts longer than --max_seq_length: truncate or window "
                                                                  "(probabilities averaged per document); default: the fine-tuning run's.")
    stride: Optional[int] = _f(None, "With --long_text window: tokens shared by consecutive windows; default: the fine-tuning run's.")
    batch_size: int = _f(32, "Windows per forward pass.")
    chunk_rows: int = _f(2048, "Rows read, scored and written at a time (memory bound; the unit of resumption).")
    cache_dir: Optional[str] = _f(None, "Where the ONNX variants are cached (default: MODEL_DIR/onnx).")
    threads: Optional[int] = _f(None, "CPU threads for PyTorch / onnxruntime (default: theirs).")
    overwrite: bool = _f(False, "Replace a finished output (or a partial one made with other settings); the old file stays "
                                "until the new one is complete.")
    disable_progress_bar: bool = _f(False, "Turn the progress bar off.")

    def __post_init__(self) -> None:
        for name in ("model_dir", "input_file", "output_file"):
            if not getattr(self, name):
                raise ValueError(f"--{name} is required")
        if Path(self.output_file).suffix.lower() != ".csv":
            raise ValueError(f"--output_file {self.output_file}: must end in .csv")
        for name in ("batch_size", "chunk_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.max_seq_length is not None and self.max_seq_length < 8:
            raise ValueError(f"--max_seq_length must be >= 8, got {self.max_seq_length}")
        if self.engine not in ENGINES:
            raise ValueError(f"--engine must be one of {', '.join(ENGINES)}")


# ----------------------------------------------------------------------------- settings
def text_settings(cfg: PredictConfig, model_dir: Path, max_positions: int) -> dict:
    """max_seq_length / long_text / stride: the flags, else the fine-tuning run's (finetune_config.json in the
    folder above hf_model/), else 128 / truncate / 32."""
    ft_file = model_dir.parent / "finetune_config.json"
    ft = json.loads(ft_file.read_text()) if ft_file.is_file() else {}
    s = {"max_seq_length": cfg.max_seq_length or ft.get("max_seq_length") or 128,
         "long_text": cfg.long_text or ft.get("long_text") or "truncate",
         "stride": cfg.stride if cfg.stride is not None else ft.get("stride", 32),
         "from": str(ft_file) if ft else "defaults"}
    if s["max_seq_length"] > max_positions:
        raise UsageError(f"--max_seq_length {s['max_seq_length']} > the model's max_position_embeddings {max_positions}")
    if s["long_text"] == "window" and not 0 <= s["stride"] < s["max_seq_length"] - 2:
        raise UsageError(f"--stride {s['stride']} must be >= 0 and < --max_seq_length - 2 ({s['max_seq_length'] - 2})")
    return s


# ----------------------------------------------------------------------------- reading, in chunks
def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def iter_rows(path: Path, text_column: str, id_column: str | None) -> Iterator[dict]:
    """Records of the file (dicts holding at least the wanted columns), streamed. A missing file or column
    is a TextDataError naming them."""
    if not path.is_file():
        raise TextDataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    wanted = [c for c in (text_column, id_column) if c]
    flags = {text_column: "--text_column", id_column: "--id_column"}
    if suffix in (".csv", ".tsv"):
        columns, rows = _rows_csv(path, "\t" if suffix == ".tsv" else ",")
        _check_columns(path, columns, wanted, flags)
        yield from rows
    elif suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except Exception as exc:  # noqa: BLE001 -- pyarrow raises several types for corrupt files
            raise TextDataError(f"{path}: cannot read parquet file ({exc})") from None
        _check_columns(path, pf.schema_arrow.names, wanted, flags)
        for batch in pf.iter_batches(batch_size=4096, columns=wanted):
            yield from batch.to_pylist()
    elif suffix in (".jsonl", ".ndjson", ".json"):
        yield from _rows_jsonl(path, wanted, flags)
    elif suffix == ".gz":
        raise TextDataError(f"{path}: compressed files are not read; decompress it first")
    else:
        raise TextDataError(f"{path}: unknown file type {suffix!r}; use one of {', '.join(SUFFIXES)}")


def _check_columns(path: Path, columns: list[str], wanted: list[str], flags: dict) -> None:
    for col in wanted:
        if col not in columns:
            raise TextDataError(f"{path}: no column {col!r} ({flags[col]}); the file has columns {list(columns)}")


def _rows_jsonl(path: Path, wanted: list[str], flags: dict) -> Iterator[dict]:
    if is_json_array(path):  # a JSON array: read whole (data/text.py's reader)
        from ort_training.data.text import _rows_jsonl as whole

        columns, rows = whole(path)
        _check_columns(path, columns, wanted, flags)
        yield from rows
        return
    first = True
    for _, row in iter_json_lines(path):
        if first:
            _check_columns(path, list(row), wanted, flags)
            first = False
        yield row


def iter_chunks(path: Path, text_column: str, id_column: str | None, chunk_rows: int) -> Iterator[tuple[int, list[str], list[str]]]:
    """(first row number, ids, texts) per chunk of `chunk_rows` rows. An empty or missing text or id is a
    TextDataError naming the file, row and column."""
    csv_like = path.suffix.lower() in (".csv", ".tsv")
    ids: list[str] = []
    texts: list[str] = []
    start = 0
    for n, row in enumerate(iter_rows(path, text_column, id_column)):
        where = f"row {n + 1}" + (" (after the header)" if csv_like else "")
        text = row.get(text_column)
        if _missing(text):
            raise TextDataError(f"{path}: {where} has no value in column {text_column!r} (--text_column)")
        text = str(text)
        if not text.strip():
            raise TextDataError(f"{path}: {where} has an empty text in column {text_column!r} (--text_column); remove the row or fill it")
        if id_column:
            value = row.get(id_column)
            if _missing(value) or str(value).strip() == "":
                raise TextDataError(f"{path}: {where} has no value in column {id_column!r} (--id_column)")
            ids.append(_id_str(value))
        else:
            ids.append(str(n))
        texts.append(text)
        if len(texts) == chunk_rows:
            yield start, ids, texts
            start, ids, texts = n + 1, [], []
    if texts:
        yield start, ids, texts


def _id_str(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def scan(path: Path, text_column: str, id_column: str | None, chunk_rows: int) -> int:
    """Rows in the file, every row checked (one streamed pass: bad input stops the run before any scoring)."""
    total = 0
    for _, _, texts in iter_chunks(path, text_column, id_column, chunk_rows):
        total += len(texts)
    if total == 0:
        raise TextDataError(f"{path}: holds no rows")
    return total


# ----------------------------------------------------------------------------- scoring
def score_texts(model, tokenizer, texts: list[str], settings: dict, batch_size: int, path: str = "input") -> tuple[np.ndarray, int]:
    """(probabilities [documents, classes], windows): fine-tuning's windowing (data.text.encode_split) and
    per-document averaging (finetune.predict) with any engine's model."""
    from ort_training.finetune import predict

    table = Table(Path(path), list(texts), [""] * len(texts), "text", "")
    split = encode_split("predict", table, np.zeros(len(texts), dtype=np.int64), tokenizer, settings["max_seq_length"],
                         settings["long_text"], settings["stride"])
    return predict(model, split, batch_size, torch.device("cpu")), len(split)


def output_kind(config: dict) -> tuple[str, list[float] | None]:
    """(problem_type, per-label thresholds for a multi-label model) of a classifier folder's config."""
    kind = config.get("problem_type") or "single_label_classification"
    if kind != "multi_label_classification":
        return kind, None
    saved = config.get("label_thresholds") or {}
    if not saved:
        logger.warning("multi-label model without label_thresholds in its config: predicting each label at probability >= 0.5")
    return kind, [float(saved.get(lab, 0.5)) for lab in labels_of(config)]


def format_rows(ids: list[str], probs: np.ndarray, labels: list[str], kind: str = "single_label_classification",
                thresholds: list[float] | None = None) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for i, p in zip(ids, probs):
        if kind == "regression":
            w.writerow([i, f"{p[0]:.6g}"])
        elif kind == "multi_label_classification":
            w.writerow([i, "|".join(lab for lab, x, t in zip(labels, p, thresholds) if x >= t), *[f"{x:.6f}" for x in p]])
        else:
            w.writerow([i, labels[int(p.argmax())], *[f"{x:.6f}" for x in p]])
    return buf.getvalue()


def header(labels: list[str], kind: str = "single_label_classification") -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(["id", "predicted"] if kind == "regression" else
                                                  ["id", "predicted", *[f"p_{lab}" for lab in labels]])
    return buf.getvalue()


# ----------------------------------------------------------------------------- the run
def parts_dir(output: Path) -> Path:
    return output.with_name(output.name + ".parts")


def sidecar(output: Path) -> Path:
    return output.with_suffix(".json")


class OutputExistsError(UsageError):
    """The output is already there (finished) or half-made with other settings."""


def run(cfg: PredictConfig, on_chunk: Callable[[int], None] | None = None) -> dict:
    """Score cfg.input_file into cfg.output_file (see the module doc). `on_chunk(index)` is called after each chunk
    is on disk (tests use it to stop a run between chunks)."""
    from tqdm import tqdm

    from bundle.atomic import clean_stale_temps

    started = time.perf_counter()
    model_dir, input_file, output = Path(cfg.model_dir), Path(cfg.input_file), Path(cfg.output_file)
    config = read_classifier_config(model_dir)
    labels = labels_of(config)
    kind, thresholds = output_kind(config)
    settings = text_settings(cfg, model_dir, int(config.get("max_position_embeddings", 512)))
    rows = scan(input_file, cfg.text_column, cfg.id_column, cfg.chunk_rows)  # bad input stops here, before any writing
    chunks = -(-rows // cfg.chunk_rows)
    model, info = load_engine(model_dir, cfg.engine, cfg.cache_dir, cfg.threads)
    tokenizer = load_tokenizer(model_dir)
    import transformers

    identity = {"format_version": FORMAT_VERSION, "model_digest": model_digest(model_dir), "tokenizer_digest": tokenizer_digest(model_dir),
                "engine": cfg.engine, "onnx_sha256": info.get("onnx_sha256"),
                "runtime": {"torch": torch.__version__, "transformers": transformers.__version__, "onnxruntime": info.get("onnxruntime")},
                "input_file": str(input_file.resolve()), "input_sha256": file_sha256(input_file), "rows": rows,
                "text_column": cfg.text_column, "id_column": cfg.id_column,
                **{k: settings[k] for k in ("max_seq_length", "long_text", "stride")},
                "batch_size": cfg.batch_size, "chunk_rows": cfg.chunk_rows, "labels": labels,
                **({"problem_type": kind, "thresholds": thresholds} if kind != "single_label_classification" else {})}
    parts = parts_dir(output)
    if output.exists() and not parts.exists():
        previous = json.loads(sidecar(output).read_text()) if sidecar(output).is_file() else {}
        if previous.get("identity") == identity and not cfg.overwrite:
            logger.info("%s is already complete for this model, engine, input and settings (%s)", output, sidecar(output))
            return {**previous["summary"], "already_finished": True}
        if not cfg.overwrite:
            raise OutputExistsError(f"{output}: exists (made {'with other settings' if previous else 'by something else'}); pass "
                                    "--overwrite to replace it (the old file stays until the new one is complete) or choose another --output_file")
    with RunLock(parts, "predict"):
        clean_stale_temps(parts)
        state_path = parts / STATE_FILE
        if state_path.is_file():
            state = json.loads(state_path.read_text())
            changed = sorted(k for k in set(state["identity"]) | set(identity) if state["identity"].get(k) != identity.get(k))
            if changed and not cfg.overwrite:
                raise OutputExistsError(f"{parts}: a partial run with other settings ({', '.join(changed)} differ); rerun it with the "
                                        "same ones to continue, or pass --overwrite to start again")
            if changed:
                for p in parts.glob("part-*.csv"):
                    p.unlink()
        atomic_write_text(state_path, json.dumps({"identity": identity, "settings_from": settings["from"]}, indent=2) + "\n")
        done = sum(1 for i in range(chunks) if (parts / f"part-{i:08d}.csv").is_file())
        if done:
            logger.info("resuming: %d of %d chunks already in %s", done, chunks, parts)
        scored = windows = 0
        scoring_started = time.perf_counter()
        bar = tqdm(total=rows, unit="rows", desc=f"scoring ({cfg.engine})", disable=cfg.disable_progress_bar, dynamic_ncols=True)
        with bar:
            for index, (start, ids, texts) in enumerate(iter_chunks(input_file, cfg.text_column, cfg.id_column, cfg.chunk_rows)):
                part = parts / f"part-{index:08d}.csv"
                if not part.is_file():
                    probs, n_windows = score_texts(model, tokenizer, texts, settings, cfg.batch_size, str(input_file))
                    with atomic_path(part) as tmp:
                        tmp.write_text(format_rows(ids, probs, labels, kind, thresholds), encoding="utf-8")
                    scored, windows = scored + len(texts), windows + n_windows
                    if on_chunk is not None:
                        on_chunk(index)
                bar.update(len(texts))
        seconds = time.perf_counter() - scoring_started
        missing = [i for i in range(chunks) if not (parts / f"part-{i:08d}.csv").is_file()]
        if missing:
            raise RuntimeError(f"{parts}: chunks {missing[:5]} missing after the pass; the input changed while it was read")
        with atomic_path(output) as tmp:
            with open(tmp, "w", encoding="utf-8", newline="") as out:
                out.write(header(labels, kind))
                for i in range(chunks):
                    with open(parts / f"part-{i:08d}.csv", encoding="utf-8", newline="") as fh:
                        shutil.copyfileobj(fh, out)
        summary = {"output": str(output), "rows": rows, "engine": cfg.engine, "rows_scored_this_run": scored,
                   "windows_this_run": windows, "scoring_seconds": round(seconds, 2),
                   "rows_per_s": round(scored / seconds, 1) if scored and seconds > 0 else None,
                   "total_seconds": round(time.perf_counter() - started, 2)}
        record = {"identity": identity, "summary": summary, "model_dir": str(model_dir.resolve()), "engine": info,
                  "settings_from": settings["from"], "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        atomic_write_text(sidecar(output), json.dumps(record, indent=2) + "\n")
        shutil.rmtree(parts, ignore_errors=True)
    logger.info("wrote %s (%d rows; %s)", output, rows, sidecar(output))
    return summary


# ----------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ort_training.predict",
        description="Score a CSV / parquet / jsonl file with a fine-tuned classifier folder (PyTorch, ONNX Runtime fp32 or int8): "
                    "a predictions CSV (id, predicted, one probability per class), streamed in chunks and resumable.")
    add_arguments(parser, PredictConfig, required=("model_dir", "input_file", "output_file"))
    return parser


def parse_config(argv: list[str] | None = None) -> PredictConfig:
    return parse_into(build_parser(), lambda ns: from_dict(PredictConfig, ns, source="flags"), argv)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cfg = parse_config(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        summary = run(cfg)
    except (*EXPECTED_ERRORS, DriftError) as exc:  # bad input or model folder, or an ONNX variant that drifted: one line, exit 2
        return report("predict", exc)
    except KeyboardInterrupt:
        print(f"interrupted: the chunks written so far are kept in {parts_dir(Path(cfg.output_file))}; rerun the same command to continue",
              file=sys.stderr)
        return 130
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
