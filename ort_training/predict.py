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
  is kept: rerunning says so; --overwrite replaces it only when the new one is complete;
- GPUs and several processes: --device cuda runs the torch engine on a GPU (--precision fp16 | bf16: autocast),
  onnx-fp16 on ONNX Runtime's CUDA provider; --shard i/n (or torchrun's RANK / WORLD_SIZE, on cuda:LOCAL_RANK) gives
  process i the chunks i, i+n, i+2n, ... of the same OUTPUT.parts/, and the process that finds every chunk written
  merges them (`merge`) into the output in input order: byte-identical to one process's file (the chunks are the
  same bytes whoever scores them), resumable the same way, and a lost merge is redone by any rerun or --merge.

Bad input (no such file or column, an empty text, a folder that is not a classifier, custom model code)
stops before anything is written with one line naming the file, row and column, exit 2.
"""

from __future__ import annotations

import argparse
import csv
import errno
import hashlib
import io
import json
import logging
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
from ort_training.data.text import MAX_WINDOWS, Table, TextDataError, encode_split, iter_records
from ort_training.inference import (
    ENGINES,
    VARIANT_FILES,
    DriftError,
    Engine,
    engine_info,
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
    stride: Optional[int] = _f(None, "With --long_text window: tokens shared by consecutive windows; default: the fine-tuning run's, "
                                     "else min(32, (--max_seq_length - 2) // 2).")
    max_windows: Optional[int] = _f(None, f"With --long_text window: windows read per text (its tail is not read past them); "
                                          f"default: the fine-tuning run's, else {MAX_WINDOWS}.")
    batch_size: int = _f(32, "Windows per forward pass.")
    chunk_rows: int = _f(2048, "Rows read, scored and written at a time (memory bound; the unit of resumption).")
    cache_dir: Optional[str] = _f(None, "Where the ONNX variants are cached (default: MODEL_DIR/onnx).")
    threads: Optional[int] = _f(None, "CPU threads for PyTorch / onnxruntime (default: theirs).")
    device: Optional[Literal["cpu", "cuda"]] = _f(
        None, "Where the engine runs. --engine torch: cpu (the default) or cuda (cuda:LOCAL_RANK under torchrun; refused "
              "where torch sees no GPU); onnx-fp16 runs on CUDA, onnx and onnx-int8 on the CPU (their default; the other is refused).")
    precision: Literal["fp32", "fp16", "bf16"] = _f(
        "fp32", "--engine torch: the forward pass's autocast precision (fp16: --device cuda; bf16: a GPU with bf16, or a "
                "CPU). The ONNX engines' precision is the engine's (onnx-fp16 for float16).")
    shard: Optional[str] = _f(
        None, "i/n: this process scores chunks i, i+n, i+2n, ... (0 <= i < n) of the shared OUTPUT.parts/; start n processes "
              "0/n .. n-1/n (one per GPU) with the same other flags: the last to finish merges the file. Under torchrun "
              "(RANK / WORLD_SIZE set) each rank is its shard without this flag.")
    merge: bool = _f(False, "Score nothing: merge OUTPUT.parts/ into --output_file when every chunk is written (a sharded run "
                            "whose merge was lost), else list the missing chunks and the --shard commands to rerun (exit 2).")
    id_header: Optional[Literal["id", "input"]] = _f(None, "The output's first column header: input = the --id_column's own name "
                                                           "(note_id), as in the input, or id. Default: input with --id_column "
                                                           "(the ids keep their name), else id (row numbers).")
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
        if self.max_windows is not None and self.max_windows < 1:
            raise ValueError(f"--max_windows must be >= 1, got {self.max_windows}")
        if self.max_seq_length is not None and self.max_seq_length < 8:
            raise ValueError(f"--max_seq_length must be >= 8, got {self.max_seq_length}")
        if self.engine not in ENGINES:
            raise ValueError(f"--engine must be one of {', '.join(ENGINES)}")
        if self.engine != "torch" and self.precision != "fp32":
            raise ValueError(f"--precision {self.precision} applies to --engine torch; the ONNX engines' precision is the engine's "
                             "(--engine onnx-fp16 for float16 on a GPU)")
        if self.engine in ("onnx", "onnx-int8") and self.device == "cuda":
            raise ValueError(f"--engine {self.engine} runs on the CPU; on a GPU use --engine onnx-fp16 or --engine torch --device cuda")
        if self.engine == "onnx-fp16" and self.device == "cpu":
            raise ValueError("--engine onnx-fp16 runs on ONNX Runtime's CUDA provider; on a CPU use --engine onnx or onnx-int8")
        if self.precision == "fp16" and self.engine == "torch" and self.device != "cuda":
            raise ValueError("--precision fp16 needs --device cuda (float16 autocast is for GPUs); on a CPU use fp32 or bf16")
        if self.shard is not None:
            parse_shard(self.shard)
        if self.id_header == "input" and not self.id_column:
            raise ValueError("--id_header input names the output's id column after --id_column: give --id_column")
        if self.id_header is None:
            self.id_header = "input" if self.id_column else "id"


def parse_shard(value: str) -> tuple[int, int]:
    """'i/n' -> (i, n), 0 <= i < n; ValueError naming the flag otherwise."""
    try:
        index, count = (int(x) for x in value.split("/"))
    except ValueError:
        raise ValueError(f"--shard {value!r}: give i/n (this process's index and the number of processes), e.g. 0/4") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard {value}: needs 0 <= i < n")
    return index, count


# ----------------------------------------------------------------------------- devices and shards
@dataclass(frozen=True)
class Placement:
    """Which chunks this process scores (index of count) and where (device); `launcher`: flag, torchrun or single."""

    index: int = 0
    count: int = 1
    device: str = "cpu"
    launcher: str = "single"

    def mine(self, chunk: int) -> bool:
        return chunk % self.count == self.index


def placement(cfg: PredictConfig, environ=None) -> Placement:
    """The shard (--shard, else torchrun's RANK / WORLD_SIZE) and the device (the torch engine's --device, cuda:LOCAL_RANK;
    onnx-fp16's CUDA device) of this process. A GPU asked for where torch sees none is refused (one line); --merge
    scores nothing and runs anywhere."""
    from ort_training.loop.distributed import resolve_dist_env

    env = resolve_dist_env(os.environ if environ is None else environ)
    if cfg.shard is not None and env.world_size > 1:
        raise UsageError(f"--shard {cfg.shard} under a launcher that set WORLD_SIZE={env.world_size}: each rank is already its "
                         "shard; drop --shard (or run the processes without torchrun)")
    index, count = parse_shard(cfg.shard) if cfg.shard is not None else (env.rank, env.world_size)
    launcher = "flag" if cfg.shard is not None else ("torchrun" if env.world_size > 1 else "single")
    wants_gpu = cfg.engine == "onnx-fp16" or (cfg.engine == "torch" and cfg.device == "cuda")
    if not wants_gpu:
        return Placement(index, count, "cpu", launcher)
    if cfg.merge:
        return Placement(index, count, "cuda", launcher)
    local = env.local_rank if env.world_size > 1 else int((os.environ if environ is None else environ).get("LOCAL_RANK", 0))
    if cfg.engine == "torch":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda: torch.cuda.is_available() is false here (no GPU, no driver, or a CPU-only torch "
                             f"{torch.__version__}); use --device cpu, or run on a GPU machine")
        if local >= torch.cuda.device_count():
            raise UsageError(f"--device cuda: LOCAL_RANK {local} but this machine shows {torch.cuda.device_count()} GPU(s); "
                             "start at most one process per GPU (torchrun --nproc_per_node)")
    return Placement(index, count, f"cuda:{local}", launcher)


# ----------------------------------------------------------------------------- settings
WINDOWS_PER_PASS = 4096
"""Windows tokenized and held at once while scoring a chunk: a chunk's texts are encoded in groups of at most
WINDOWS_PER_PASS // max_windows texts, so memory follows windows, not --chunk_rows (a 2 MB text is 8,000 windows)."""


def read_finetune_config(model_dir: Path) -> tuple[Path, dict]:
    """(path, settings) of the fine-tuning run's finetune_config.json beside hf_model/ ({} where there is none); a
    file that is not a JSON object (a truncated copy) is one error naming it."""
    ft_file = model_dir.parent / "finetune_config.json"
    if not ft_file.is_file():
        return ft_file, {}
    try:
        ft = json.loads(ft_file.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise UsageError(f"{ft_file}: not a readable JSON file ({one_line_reason(exc)}); it is truncated or corrupt: restore "
                         "it from the fine-tuning run, or give --max_seq_length / --long_text / --stride and move it away") from None
    if not isinstance(ft, dict):
        raise UsageError(f"{ft_file}: holds a {type(ft).__name__}, not the settings object the fine-tuning run writes")
    return ft_file, ft


def one_line_reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def text_settings(cfg: PredictConfig, model_dir: Path, max_positions: int) -> dict:
    """max_seq_length / long_text / stride / max_windows: the flags, else the fine-tuning run's (finetune_config.json in
    the folder above hf_model/), else 128 / truncate / min(32, (max_seq_length - 2) // 2) / MAX_WINDOWS."""
    from ort_training.tasks.finetuning import default_stride

    ft_file, ft = read_finetune_config(model_dir)
    for key in ("max_seq_length", "stride", "max_windows"):
        value = ft.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise UsageError(f"{ft_file}: {key} is {value!r}, not a whole number; the file was edited or is corrupt")
    if ft.get("long_text") not in (None, "truncate", "window"):
        raise UsageError(f"{ft_file}: long_text is {ft['long_text']!r}, not truncate or window")
    length = cfg.max_seq_length or ft.get("max_seq_length") or 128
    s = {"max_seq_length": length,
         "long_text": cfg.long_text or ft.get("long_text") or "truncate",
         "stride": cfg.stride if cfg.stride is not None else ft.get("stride", default_stride(length)),
         "max_windows": cfg.max_windows or ft.get("max_windows") or MAX_WINDOWS,
         "from": str(ft_file) if ft else "defaults"}
    if cfg.max_seq_length and cfg.stride is None and ft.get("max_seq_length") != length:
        s["stride"] = default_stride(length)  # the run's stride was for its own window length
    if s["max_seq_length"] > max_positions:
        raise UsageError(f"--max_seq_length {s['max_seq_length']} > the model's max_position_embeddings {max_positions}")
    if s["long_text"] == "window" and not 0 <= s["stride"] < s["max_seq_length"] - 2:
        raise UsageError(f"--stride {s['stride']} must be >= 0 and < --max_seq_length - 2 ({s['max_seq_length'] - 2})")
    return s


# ----------------------------------------------------------------------------- reading, in chunks
def iter_rows(path: Path, text_column: str, id_column: str | None) -> Iterator[tuple[str, dict]]:
    """(where, record) of the file, streamed by data/text.py's `iter_records` (the reader fine-tuning uses: one rule
    for encodings, quoting, headers, field sizes and value types). A missing file or column is a TextDataError naming them."""
    wanted = {text_column: "--text_column", **({id_column: "--id_column"} if id_column else {})}
    yield from iter_records(path, wanted)


def iter_chunks(path: Path, text_column: str, id_column: str | None, chunk_rows: int) -> Iterator[tuple[int, list[str], list[str]]]:
    """(first row number, ids, texts) per chunk of `chunk_rows` rows. An empty or missing text or id is a
    TextDataError naming the file, row and column."""
    ids: list[str] = []
    texts: list[str] = []
    start = 0
    for n, (where, row) in enumerate(iter_rows(path, text_column, id_column)):
        text = row.get(text_column)
        if text is None:  # null / NaN (iter_records' cell_value); a blank string is an empty text, below
            raise TextDataError(f"{path}: {where} has no value in column {text_column!r} (--text_column)")
        if not text.strip():
            raise TextDataError(f"{path}: {where} has an empty text in column {text_column!r} (--text_column); remove the row or fill it")
        if id_column:
            value = row.get(id_column)
            if value is None or value.strip() == "":
                raise TextDataError(f"{path}: {where} has no value in column {id_column!r} (--id_column)")
            ids.append(value)
        else:
            ids.append(str(n))
        texts.append(text)
        if len(texts) == chunk_rows:
            yield start, ids, texts
            start, ids, texts = n + 1, [], []
    if texts:
        yield start, ids, texts


def scan(path: Path, text_column: str, id_column: str | None, chunk_rows: int) -> int:
    """Rows in the file, every row checked (one streamed pass: bad input stops the run before any scoring). With
    --id_column an id given twice is refused naming it, the file and both rows (a 16-byte digest per id is kept)."""
    total = 0
    seen: dict[bytes, int] = {}
    for start, ids, texts in iter_chunks(path, text_column, id_column, chunk_rows):
        if id_column:
            for i, value in enumerate(ids):
                key = hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=16).digest()
                if key in seen:
                    raise TextDataError(f"{path}: id {value!r} in column {id_column!r} (--id_column) is given twice (rows "
                                        f"{seen[key] + 1} and {start + i + 1}); ids must identify one row each")
                seen[key] = start + i
        total += len(texts)
    if total == 0:
        raise TextDataError(f"{path}: holds no rows")
    return total


# ----------------------------------------------------------------------------- scoring
_AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


def score_texts(model, tokenizer, texts: list[str], settings: dict, batch_size: int, path: str = "input",
                device: torch.device | str = "cpu", precision: str = "fp32") -> tuple[np.ndarray, int]:
    """(probabilities [documents, classes], windows): fine-tuning's windowing (data.text.encode_split) and
    per-document averaging (finetune.predict) with any engine's model. Texts are encoded and scored in groups of
    at most WINDOWS_PER_PASS windows (each text gives at most max_windows), so memory follows windows. `device`: where
    the torch model's inputs go (an ONNX engine takes CPU tensors); `precision` fp16 / bf16: autocast around the
    forward passes (logits are read back in float32, the softmax and averaging stay in float32 / float64)."""
    import contextlib

    from ort_training.tasks.finetuning import predict

    device = torch.device(device)
    autocast = (torch.autocast(device.type, dtype=_AUTOCAST[precision]) if precision in _AUTOCAST
                else contextlib.nullcontext())
    max_windows = settings.get("max_windows", MAX_WINDOWS) if settings["long_text"] == "window" else 1
    group = max(1, WINDOWS_PER_PASS // max_windows)
    out, windows = [], 0
    for first in range(0, len(texts), group):
        part = list(texts[first:first + group])
        table = Table(Path(path), part, [""] * len(part), "text", "")
        split = encode_split("predict", table, np.zeros(len(part), dtype=np.int64), tokenizer, settings["max_seq_length"],
                             settings["long_text"], settings["stride"], max_windows=max_windows)
        with autocast:
            out.append(predict(model, split, batch_size, device))
        windows += len(split)
    return np.concatenate(out), windows


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


def header(labels: list[str], kind: str = "single_label_classification", id_name: str = "id") -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([id_name, "predicted"] if kind == "regression" else
                                                  [id_name, "predicted", *[f"p_{lab}" for lab in labels]])
    return buf.getvalue()


# ----------------------------------------------------------------------------- the run
def parts_dir(output: Path) -> Path:
    return output.with_name(output.name + ".parts")


def sidecar(output: Path) -> Path:
    return output.with_suffix(".json")


class OutputExistsError(UsageError):
    """The output is already there (finished) or half-made with other settings."""


ENV_ERRORS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system",
              errno.EACCES: "permission denied", errno.EPERM: "not permitted", errno.EISDIR: "a folder is in the way",
              errno.ENOTDIR: "a file is in the way", errno.EEXIST: "a file is in the way"}
"""Failures of the machine, not of the program: one line naming the path (exit 2), as data_prep reports them."""


MODEL_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json", "vocab.txt", "tokenizer_config.json",
               "special_tokens_map.json", "merges.txt", "vocab.json")
"""Files a model folder holds (present or not): predict's outputs never take these names inside --model_dir."""


def _real(path: Path) -> str:
    return os.path.realpath(path)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _probe_writable(folder: Path, what: str) -> None:
    """Create and remove a file in `folder` (or its nearest existing ancestor): a read-only file system or folder is
    found before any work, whoever runs it (os.access says yes to root on a read-only folder)."""
    import tempfile

    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None:
        return
    if not existing.is_dir():
        raise UsageError(f"{what} {folder}: {existing} is a file, not a folder")
    try:
        fd, name = tempfile.mkstemp(prefix=".predict-probe-", dir=existing)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        reason = ENV_ERRORS.get(exc.errno, one_line_reason(exc))
        raise UsageError(f"{what} {folder}: cannot write in {existing} ({reason}); choose a writable folder") from None


def _is_record(path: Path) -> dict | None:
    """The record ort_training.predict writes beside its output (OUTPUT.json), or None for any other file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("identity"), dict) and "format_version" in data["identity"] else None


def check_paths(cfg: PredictConfig) -> None:
    """What the run writes (--output_file, OUTPUT.json beside it, OUTPUT.parts/) must be none of what it reads (the
    --input_file, the model folder, the fine-tuning run's finetune_config.json), after symbolic links are resolved,
    must not be a folder, and must be writable; an existing output or record that this command did not make is never
    replaced, --overwrite or not. Refused before anything is read or written."""
    output, input_file, model_dir = Path(cfg.output_file), Path(cfg.input_file), Path(cfg.model_dir)
    if output.is_dir():
        raise UsageError(f"--output_file {output}: is a folder; name the .csv file to write")
    reads = {_real(input_file): f"the --input_file {input_file}", _real(model_dir.parent / "finetune_config.json"):
             f"the fine-tuning run's {model_dir.parent / 'finetune_config.json'}"}
    model_real = _real(model_dir)
    for written, what in ((output, "--output_file"), (sidecar(output), "its record (OUTPUT.json)"),
                          (parts_dir(output), "its chunk folder (OUTPUT.parts)")):
        real = _real(written)
        if real in reads:
            raise UsageError(f"--output_file {output}: {what} {written} is {reads[real]}"
                             f"{' (through a symbolic link)' if os.path.abspath(written) != real else ''}; predict never writes over "
                             "what it reads: choose another --output_file")
        if _inside(real, model_real) and (os.path.lexists(real) or Path(real).name in MODEL_FILES
                                          or _inside(real, os.path.join(model_real, "onnx"))):
            raise UsageError(f"--output_file {output}: {what} {written} is a file of the --model_dir {model_dir}; predict never "
                             "writes over the model it scores with: choose another --output_file")
    for written in (output, sidecar(output)):
        if written.exists() and not written.is_file():
            raise UsageError(f"--output_file {output}: {written} is {'a folder' if written.is_dir() else 'not a regular file'}; "
                             "choose another --output_file")
    _probe_writable(output.parent, "--output_file's folder")


def check_existing(cfg: PredictConfig) -> None:
    """An existing output or record that this command did not make is never replaced, --overwrite or not."""
    output = Path(cfg.output_file)
    record = _is_record(sidecar(output)) if sidecar(output).is_file() else None
    if sidecar(output).exists() and record is None:
        raise OutputExistsError(f"--output_file {output}: {sidecar(output)} exists and is not a record of ort_training.predict; "
                                "predict writes its record there and never replaces a file it did not make (--overwrite "
                                "neither): move it or choose another --output_file")
    if output.exists() and record is None:
        raise OutputExistsError(f"--output_file {output}: exists and was not made by ort_training.predict (no record "
                                f"{sidecar(output).name} beside it); --overwrite replaces only predict's own output: move it "
                                "or choose another --output_file")


def check_cache(cfg: PredictConfig, model_dir: Path) -> None:
    """An ONNX engine writes its variants to --cache_dir (default MODEL_DIR/onnx): refused up front where that is not
    writable and the variant is not already cached there."""
    if cfg.engine == "torch":
        return
    root = Path(cfg.cache_dir) if cfg.cache_dir else model_dir / "onnx"
    if root.is_dir() and any(root.glob(f"*/{VARIANT_FILES[cfg.engine]}")):
        return  # made before: ensure_variant reads it (and checks its digest) without writing
    try:
        _probe_writable(root, "--cache_dir" if cfg.cache_dir else f"the ONNX cache (--cache_dir, default {root})")
    except UsageError as exc:
        raise UsageError(f"{exc}; pass --cache_dir to a writable folder (the model folder may stay read-only)") from None


def plan(cfg: PredictConfig) -> dict:
    """Every refusal the run makes before scoring, in order (paths, model folder, settings, every input row, the
    cache folder), and what it would do: the dry run prints it, the run starts from it."""
    model_dir, input_file = Path(cfg.model_dir), Path(cfg.input_file)
    config = read_classifier_config(model_dir)
    check_paths(cfg)
    settings = text_settings(cfg, model_dir, int(config.get("max_position_embeddings", 512)))
    where = placement(cfg)  # a GPU that is not there, a --shard beside torchrun: refused before the input is read
    rows = scan(input_file, cfg.text_column, cfg.id_column, cfg.chunk_rows)  # bad input stops here, before any writing
    check_cache(cfg, model_dir)
    check_existing(cfg)
    return {"config": config, "settings": settings, "rows": rows, "chunks": -(-rows // cfg.chunk_rows), "placement": where}


def part_path(parts: Path, index: int) -> Path:
    return parts / f"part-{index:08d}.csv"


def run(cfg: PredictConfig, on_chunk: Callable[[int], None] | None = None) -> dict:
    """Score cfg.input_file into cfg.output_file (see the module doc). `on_chunk(index)` is called after each chunk
    is on disk (tests use it to stop a run between chunks)."""
    from tqdm import tqdm

    from bundle.atomic import clean_stale_temps

    started = time.perf_counter()
    model_dir, input_file, output = Path(cfg.model_dir), Path(cfg.input_file), Path(cfg.output_file)
    checked = plan(cfg)
    config, settings, rows, chunks = checked["config"], checked["settings"], checked["rows"], checked["chunks"]
    where: Placement = checked["placement"]
    labels = labels_of(config)
    kind, thresholds = output_kind(config)
    info = engine_info(model_dir, cfg.engine, cfg.cache_dir)  # an ONNX variant is made (once, under a lock) and checked here
    import transformers

    identity = {"format_version": FORMAT_VERSION, "model_digest": model_digest(model_dir), "tokenizer_digest": tokenizer_digest(model_dir),
                "engine": cfg.engine, "onnx_sha256": info.get("onnx_sha256"),
                "runtime": {"torch": torch.__version__, "transformers": transformers.__version__, "onnxruntime": info.get("onnxruntime")},
                "input_file": str(input_file.resolve()), "input_sha256": file_sha256(input_file), "rows": rows,
                "text_column": cfg.text_column, "id_column": cfg.id_column,
                **{k: settings[k] for k in ("max_seq_length", "long_text", "stride")},
                **({"max_windows": settings["max_windows"]} if settings["long_text"] == "window" else {}),
                "batch_size": cfg.batch_size, "chunk_rows": cfg.chunk_rows, "labels": labels,
                **({"problem_type": kind, "thresholds": thresholds} if kind != "single_label_classification" else {}),
                # Where and how the numbers were made, when not the CPU in fp32 (a GPU's sums differ in the last digits):
                # a partial run continues only on the same kind of device. The number of shards is not part of it: a
                # chunk's bytes do not depend on which process scored it.
                **({"device": "cuda"} if where.device.startswith("cuda") and cfg.engine == "torch" else {}),
                **({"precision": cfg.precision} if cfg.precision != "fp32" else {}),
                **({"id_header": cfg.id_column} if cfg.id_header == "input" else {})}
    parts = parts_dir(output)
    if output.exists() and not parts.exists():
        previous = _is_record(sidecar(output)) or {}  # check_paths refused an output predict did not make
        if previous.get("identity") == identity and not cfg.overwrite:
            logger.info("%s is already complete for this model, engine, input and settings (%s)", output, sidecar(output))
            return {**previous["summary"], "already_finished": True}
        if not cfg.overwrite:
            raise OutputExistsError(f"{output}: exists (made {'with other settings' if previous else 'by something else'}); pass "
                                    "--overwrite to replace it (the old file stays until the new one is complete) or choose another --output_file")
    # One process per chunk set: a single run locks the folder; shards lock their own slot (two processes claiming
    # shard 1/4 are refused), and write different chunks of the same folder.
    lock_folder = parts if where.count == 1 else parts / f"shard-{where.index}-of-{where.count}"
    # A shard (or --merge) holds the folder shared while it works; the merge takes it exclusively, so the folder is never
    # removed under a working shard, nor made again (with its chunks gone) by a shard that wrote its state after the merge.
    held = hold_shared(parts) if where.count > 1 or cfg.merge else None
    try:
        with RunLock(lock_folder, "predict" if where.count == 1 else f"predict shard {where.index}/{where.count}"):
            clean_stale_temps(parts)
            state_path = parts / STATE_FILE
            previous = _is_record(sidecar(output)) or {}
            if where.count > 1 and not state_path.is_file() and previous.get("identity") == identity and not cfg.overwrite:
                # Another shard merged and removed the folder between the check above and this lock (the lock made it again).
                shutil.rmtree(parts, ignore_errors=True)
                held.close()
                return {**previous["summary"], "already_finished": True}
            if state_path.is_file():
                state = json.loads(state_path.read_text())
                changed = sorted(k for k in set(state["identity"]) | set(identity) if state["identity"].get(k) != identity.get(k))
                if changed and (not cfg.overwrite or where.count > 1):
                    raise OutputExistsError(f"{parts}: a partial run with other settings ({', '.join(changed)} differ); rerun it with the "
                                            "same ones to continue, or " + ("pass --overwrite to start again" if where.count == 1 else
                                                                           "remove that folder (or rerun with --overwrite in one process) "
                                                                           "to start again; shards never delete each other's chunks"))
                if changed:
                    for p in parts.glob("part-*.csv"):
                        p.unlink()
            atomic_write_text(state_path, json.dumps({"identity": identity, "settings_from": settings["from"]}, indent=2) + "\n")
            mine = [i for i in range(chunks) if where.mine(i)] if not cfg.merge else []
            done = sum(1 for i in mine if part_path(parts, i).is_file())
            if done:
                logger.info("resuming: %d of %d chunks%s already in %s", done, len(mine),
                            f" of shard {where.index}/{where.count}" if where.count > 1 else "", parts)
            model = None
            tokenizer = load_tokenizer(model_dir)
            scored = windows = 0
            scoring_started = time.perf_counter()
            bar = tqdm(total=rows, unit="rows", desc=f"scoring ({cfg.engine}{f', shard {where.index}/{where.count}' if where.count > 1 else ''})",
                       disable=cfg.disable_progress_bar or cfg.merge, dynamic_ncols=True)
            with bar:
                for index, (start, ids, texts) in enumerate(iter_chunks(input_file, cfg.text_column, cfg.id_column, cfg.chunk_rows)
                                                             if mine else ()):
                    part = part_path(parts, index)
                    if where.mine(index) and not part.is_file():
                        if model is None:  # built at the first chunk to score: a finished shard or a merge loads no model
                            model, info = load_engine(model_dir, cfg.engine, cfg.cache_dir, cfg.threads, where.device, info)
                        probs, n_windows = score_texts(model, tokenizer, texts, settings, cfg.batch_size, str(input_file),
                                                       where.device, cfg.precision)
                        with atomic_path(part) as tmp:
                            tmp.write_text(format_rows(ids, probs, labels, kind, thresholds), encoding="utf-8")
                        scored, windows = scored + len(texts), windows + n_windows
                        if on_chunk is not None:
                            on_chunk(index)
                    bar.update(len(texts))
            seconds = time.perf_counter() - scoring_started
            summary = {"output": str(output), "rows": rows, "engine": cfg.engine, "device": where.device, "rows_scored_this_run": scored,
                       "windows_this_run": windows, "scoring_seconds": round(seconds, 2),
                       "rows_per_s": round(scored / seconds, 1) if scored and seconds > 0 else None,
                       **({"shard": f"{where.index}/{where.count}"} if where.count > 1 else {})}
            if where.count == 1 and not cfg.merge:
                missing = [i for i in range(chunks) if not part_path(parts, i).is_file()]
                if missing:
                    raise RuntimeError(f"{parts}: chunks {missing[:5]} missing after the pass; the input changed while it was read")
                return merge(cfg, parts, chunks, labels, kind, identity, info, settings, summary, started)
    except BaseException:  # the shared lock goes with the error (an in-process caller may run again)
        if held is not None:
            held.close()
        raise
    # A shard (or --merge): the process that finds every chunk written merges; the others leave it to that one.
    return merge(cfg, parts, chunks, labels, kind, identity, info, settings, summary, started, where=where, held=held)


MERGE_LOCK = ".merge.lock"


def hold_shared(parts: Path):
    """A shared flock on OUTPUT.parts/.merge.lock (the folder made if missing), held by a shard while it works. The
    lock file is checked to still be the folder's after the wait: a merge that removed the folder meanwhile made it
    stale, and the folder is made again (the caller then finds no state and the finished output)."""
    import fcntl

    path = parts / MERGE_LOCK
    for _ in range(5):
        parts.mkdir(parents=True, exist_ok=True)
        try:
            fh = open(path, "a+")
        except FileNotFoundError:  # removed between the mkdir and the open
            continue
        fcntl.flock(fh, fcntl.LOCK_SH)  # waits only for a merge in progress (seconds)
        try:
            if os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino:
                return fh
        except FileNotFoundError:
            pass
        fh.close()
    raise OutputExistsError(f"{parts}: removed and made again by other processes five times while this one started; rerun the command")


def merge(cfg: PredictConfig, parts: Path, chunks: int, labels: list[str], kind: str, identity: dict, info: dict, settings: dict,
          summary: dict, started: float, where: Placement | None = None, held=None) -> dict:
    """The chunks of OUTPUT.parts/, in input order after the header, renamed into --output_file; the record beside it;
    the chunk folder removed. With `where` (a shard, or --merge): the shared lock `held` (hold_shared) turned exclusive,
    and only when every chunk is there; a shard that cannot have it leaves the merge to the ones still working (the
    last to finish gets it); a merge with chunks missing says which (--merge: refused naming them)."""
    import fcntl

    output = Path(cfg.output_file)
    fh = held
    if fh is not None:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a failed conversion drops the shared lock (flock(2))
        except BlockingIOError:
            fh.close()
            return {**summary, "merged": False, "merged_by": "another shard (still working, or merging now)"}
    try:
        if where is not None and not (parts / STATE_FILE).is_file():
            return _merged_by_another(cfg, output, identity, summary)
        missing = [i for i in range(chunks) if not part_path(parts, i).is_file()]
        if missing:
            if cfg.merge:
                count = where.count if where is not None and where.count > 1 else None
                shards = sorted({i % count for i in missing}) if count else None
                raise OutputExistsError(f"{parts}: {len(missing)} of {chunks} chunks are not written yet (first: {missing[:5]}); "
                                        + (f"rerun --shard {', '.join(f'{s}/{count}' for s in shards)}" if shards else
                                           "rerun the scoring command (with its --shard i/n, or under torchrun)") + " to score them")
            logger.info("shard %s done; %d chunk(s) of other shards still to come: the last shard to finish merges",
                        summary.get("shard"), len(missing))
            return {**summary, "merged": False, "chunks_missing": len(missing)}
        with atomic_path(output) as tmp:
            with open(tmp, "w", encoding="utf-8", newline="") as out:
                out.write(header(labels, kind, cfg.id_column if cfg.id_header == "input" else "id"))
                for i in range(chunks):
                    with open(part_path(parts, i), encoding="utf-8", newline="") as part:
                        shutil.copyfileobj(part, out)
        summary = {**summary, "total_seconds": round(time.perf_counter() - started, 2),
                   **({"merged": True} if where is not None else {})}
        record = {"identity": identity, "summary": summary, "model_dir": str(Path(cfg.model_dir).resolve()), "engine": info,
                  "settings_from": settings["from"], "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        atomic_write_text(sidecar(output), json.dumps(record, indent=2) + "\n")
        shutil.rmtree(parts, ignore_errors=True)
    finally:
        if fh is not None:
            fh.close()
    logger.info("wrote %s (%d rows; %s)", output, summary["rows"], sidecar(output))
    return summary


def _merged_by_another(cfg: PredictConfig, output: Path, identity: dict, summary: dict) -> dict:
    previous = _is_record(sidecar(output)) or {}
    if previous.get("identity") != identity:
        raise OutputExistsError(f"{parts_dir(output)}: removed while this shard ran, and {output} is not this run's output; "
                                "rerun the same command")
    return {**summary, "merged": False, "merged_by": "another shard"}


# ----------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ort_training.predict",
        description="Score a CSV / parquet / jsonl file with a fine-tuned classifier folder (PyTorch, ONNX Runtime fp32 or int8): "
                    "a predictions CSV (id, predicted, one probability per class), streamed in chunks and resumable.")
    add_arguments(parser, PredictConfig, required=("model_dir", "input_file", "output_file"))
    parser.add_argument("--dry-run", "--dry_run", action="store_true", default=argparse.SUPPRESS,
                        help="Make every check the run makes before scoring (paths, model folder, settings, every input row, "
                             "cache folder) and print the plan; score and write nothing.")
    return parser


def parse_config(argv: list[str] | None = None) -> PredictConfig:
    return parse_into(build_parser(), lambda ns: from_dict(PredictConfig, {k: v for k, v in ns.items() if k != "dry_run"},
                                                           source="flags"), argv)


def dry_run(cfg: PredictConfig) -> int:
    checked = plan(cfg)
    output = Path(cfg.output_file)
    state = ("complete for these settings, or made with others (--overwrite replaces it)" if output.exists() else
             "partly written: a run continues it" if parts_dir(output).exists() else "new")
    s = checked["settings"]
    print(f"dry run: checked; would score {checked['rows']} rows of {cfg.input_file} in {checked['chunks']} chunk(s) with "
          f"{cfg.model_dir} (--engine {cfg.engine}; max_seq_length {s['max_seq_length']}, long_text {s['long_text']}"
          + (f", stride {s['stride']}, at most {s['max_windows']} windows per text" if s["long_text"] == "window" else "")
          + f"; settings from {s['from']}) into {output} and {sidecar(output)} (output {state})"
          + (f"; device {checked['placement'].device}" + (f", precision {cfg.precision}" if cfg.precision != "fp32" else "")
             if checked["placement"].device != "cpu" else "")
          + (f"; this process is shard {checked['placement'].index}/{checked['placement'].count} "
             f"({sum(1 for i in range(checked['chunks']) if checked['placement'].mine(i))} chunk(s); the last shard to finish merges)"
             if checked["placement"].count > 1 else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cfg = parse_config(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if "--dry-run" in (sys.argv[1:] if argv is None else argv) or "--dry_run" in (sys.argv[1:] if argv is None else argv):
            return dry_run(cfg)
        summary = run(cfg)
    except (*EXPECTED_ERRORS, DriftError) as exc:  # bad input or model folder, or an ONNX variant that drifted: one line, exit 2
        return report("predict", exc)
    except OSError as exc:  # the machine: a full disk, a read-only folder (one line naming the path, exit 2)
        if exc.errno not in ENV_ERRORS:
            raise
        where = exc.filename or cfg.output_file
        return report("predict", UsageError(f"{ENV_ERRORS[exc.errno]} while writing {where}; free space or fix the folder's "
                                            "permissions, then rerun the same command (the chunks written so far are kept)"))
    except KeyboardInterrupt:
        print(f"interrupted: the chunks written so far are kept in {parts_dir(Path(cfg.output_file))}; rerun the same command to continue",
              file=sys.stderr)
        return 130
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
