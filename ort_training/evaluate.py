"""Held-out metrics of an exported model: MLM accuracy of an encoder on NVIDIA-schema HDF5 files, or, on packed
sequences, the metrics of the family's plain pretraining objective: masked-LM accuracy (encoders), perplexity beside a
unigram baseline (decoders: a model that knows only the training files' token frequencies), span-corruption loss
beside the uniform distribution's (encoder-decoders; a DEPTH export is scored on the same span-corrupted batches as a
span-corruption one, so the two compare).

    python -m ort_training.evaluate --model_dir OUT/hf_model --input_dir TEST_HDF5_DIR [--untrained]

Each held-out sequence is evaluated once: one pass over the `--split` files in name order, the last
(partial) batch included; `--max_sequences` / `--max_batches` stop earlier, never wrap around. The result also carries the
"most frequent token" baseline: the accuracy of always predicting the token that is most often the
masked-LM label in the *training* files beside the held-out ones (masked_lm_ids of the
*training*.hdf5 files of `--input_dir`; the held-out labels when there are none -- `source` says
which), so a trained model's accuracy reads against a model that learnt nothing but word frequency.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import h5py
import numpy as np
import torch
from transformers import AutoConfig

from bundle import hdf5_schema
from ort_training.data.hdf5 import held_out_batches, list_hdf5_files
from ort_training.models import family_of
from ort_training.objectives import get_objective
from ort_training.objectives.masked_lm import mlm_accuracy
from ort_training.errors import refuse_remote_code, UsageError, exit_on_expected

logger = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    model_dir: str
    input_dir: str
    batch_size: int = 32
    max_sequences: Optional[int] = None
    max_batches: Optional[int] = None
    split: str = "test"
    untrained: bool = False
    seed: int = 0
    baseline_max_files: int = 8
    baseline_dir: Optional[str] = None


def masked_label_counts(files: list[Path]) -> Counter:
    """How often each token id is a masked-LM label in `files` (unused prediction slots left out)."""
    counts: Counter = Counter()
    for path in files:
        with h5py.File(path, "r") as f:
            ids = np.asarray(f["masked_lm_ids"])
            used = np.asarray(f["masked_lm_positions"]) > hdf5_schema.PAD_POSITION
        values, n = np.unique(ids[used], return_counts=True)
        counts.update(dict(zip(values.tolist(), n.tolist())))
    return counts


def most_frequent_token(input_dir: str | Path, held_out: list[Path], max_files: int = 8) -> dict:
    """The baseline's token: the most frequent masked label of the training files beside the held-out
    ones (at most `max_files` of them), else of the held-out files themselves."""
    train = [f for f in sorted(Path(input_dir).rglob("*.hdf5")) if "training" in f.name and f not in held_out]
    files, source = (train[:max_files], "training") if train else (held_out, "held-out")
    counts = masked_label_counts(files)
    if not counts:
        raise UsageError(f"{input_dir}: no masked-LM labels in {[str(f) for f in files]}")
    token_id, n = counts.most_common(1)[0]
    return {"token_id": int(token_id), "source": f"{source} masked labels ({sum(counts.values())} in {len(files)} files)",
            "share_in_source": n / sum(counts.values())}


def _token_text(model_dir: str, token_id: int) -> str | None:
    vocab = Path(model_dir) / "vocab.txt"
    if not vocab.is_file():
        return None
    with open(vocab, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i == token_id:
                return line.rstrip("\n")
    return None


def check_model_dir(model_dir: str | Path) -> None:
    """A folder with a readable config.json of a family this bundle knows and no custom code, said by name before
    transformers tries it (its errors name neither the file nor what to pass)."""
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except OSError:
        raise UsageError(f"--model_dir {model_dir}: no readable config.json; pass the hf_model folder a training run exported") from None
    except ValueError as exc:
        raise UsageError(f"{path}: not valid JSON ({exc}); export the model again") from None
    if not isinstance(config, dict):
        raise UsageError(f"{path}: expected a JSON object, got {type(config).__name__}")
    try:
        family_of(config)
    except UsageError as exc:
        raise UsageError(f"{path}: {exc}") from None
    refuse_remote_code(model_dir)


def check_inputs(cfg: EvalConfig) -> list[Path]:
    """Every refusal evaluate makes before it loads a model: the model folder (config, custom code, weight headers),
    --input_dir (a folder holding --split files) and the files' sequence length against the config's positions.
    Returns the held-out files."""
    check_model_dir(cfg.model_dir)
    if not cfg.untrained:
        from ort_training.weights_import import check_weight_files

        check_weight_files(cfg.model_dir)
    if cfg.baseline_dir is not None and not Path(cfg.baseline_dir).is_dir():  # else the baseline would quietly count held-out data
        raise UsageError(f"--baseline_dir {cfg.baseline_dir}: no such folder; pass the folder of the training split's files")
    if not Path(cfg.input_dir).is_dir():
        raise UsageError(f"--input_dir {cfg.input_dir}: {'is a file, not a folder' if Path(cfg.input_dir).exists() else 'no such folder'}; "
                         "pass the folder of held-out HDF5 files")
    files = list_hdf5_files(cfg.input_dir, cfg.split, require_match=True)
    config = AutoConfig.from_pretrained(cfg.model_dir, trust_remote_code=False)
    try:
        seq_len = hdf5_schema.read_shape(files[0])[1]
    except Exception:  # noqa: BLE001 -- corrupt or not the schema: load_shard names the problem when it reads the file
        seq_len = 0
    family_of(config).check_sequence_length(config, seq_len, str(files[0]), f"{cfg.model_dir}/config.json")
    return files




def evaluate_packed(cfg: EvalConfig, model, files: list[Path], family) -> dict:
    """A model on packed held-out sequences, batched by its objective's own collator (masks and spans drawn as the
    training loader draws epoch 0 of --seed), scored by the objective's held-out evaluation, beside a baseline that
    learnt nothing (the objective's `baselines`: the unigram model for decoders, the uniform distribution over the ids
    for span corruption). Which objective: the first of the family's pretraining objectives that `scores_exports` (the
    plain one of each kind, so that every model of a family is scored on the same batches)."""
    from ort_training.data.packed import held_out_packed_batches
    from ort_training.objectives import get_objective

    objective = get_objective(next(t for t in family.pretraining_tasks if get_objective(t).scores_exports))
    objective.attach(model)
    batches = held_out_packed_batches(files, cfg.batch_size, cfg.max_sequences, cfg.seed, objective.collator(family),
                                      model.config.vocab_size)
    if cfg.max_batches is not None:
        batches = itertools.islice(batches, cfg.max_batches)
    return {"model_dir": cfg.model_dir, "untrained": cfg.untrained, "objective": objective.name,
            **objective.evaluate(model, batches), "files": [str(f) for f in files],
            **objective.baselines(model, files, Path(cfg.baseline_dir or cfg.input_dir), cfg.baseline_max_files)}


def evaluate(cfg: EvalConfig) -> dict:
    files = check_inputs(cfg)
    config = AutoConfig.from_pretrained(cfg.model_dir, trust_remote_code=False)
    family = family_of(config)
    lm_class = family.hf_class(family.pretraining_tasks[-1])  # BertForMaskedLM, ModernBertForMaskedLM, LlamaForCausalLM
    if cfg.untrained:  # same architecture, random weights: the baseline the trained model is compared with
        torch.manual_seed(cfg.seed)
        model = lm_class(config)
    else:
        model = lm_class.from_pretrained(cfg.model_dir, trust_remote_code=False)
    from ort_training.data.packed import is_packed_folder

    if is_packed_folder(files):
        return evaluate_packed(cfg, model, files, family)
    if not any(get_objective(t).premasked_data for t in family.pretraining_tasks):
        raise UsageError(f"--input_dir {cfg.input_dir}: NVIDIA-schema HDF5 holds masked-LM instances; a {family.name} model is "
                         "evaluated on packed sequences (`python -m data_prep packed` or `timelines`)")
    base = most_frequent_token(cfg.baseline_dir or cfg.input_dir, files, cfg.baseline_max_files)
    base["token"] = _token_text(cfg.model_dir, base["token_id"])
    batches = held_out_batches(files, cfg.batch_size, cfg.max_sequences, model.config.vocab_size,
                               model.config.type_vocab_size if family.token_types else None)
    if cfg.max_batches is not None:
        batches = itertools.islice(batches, cfg.max_batches)
    result = mlm_accuracy(model, batches, base["token_id"])
    base["accuracy"] = result.pop("most_frequent_token_accuracy")
    return {"model_dir": cfg.model_dir, "untrained": cfg.untrained, **result, "files": [str(f) for f in files],
            "most_frequent_token": base}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ort_training.evaluate", description=__doc__.strip().splitlines()[0])
    p.add_argument("--model_dir", required=True, help="Hugging Face export folder (OUTPUT_DIR/hf_model).")
    p.add_argument("--input_dir", required=True, help="Folder of held-out NVIDIA-schema HDF5 or packed files.")
    p.add_argument("--batch_size", type=int, default=32, help="Sequences per batch.")
    p.add_argument("--max_sequences", type=int, default=None,
                   help="Evaluate at most this many held-out sequences (default: all of them, each once).")
    p.add_argument("--max_batches", type=int, default=None,
                   help="Evaluate at most this many batches (still each sequence at most once; default: all).")
    p.add_argument("--split", default="test", help="Evaluate only files whose name contains this (an error if none do; '' = every *.hdf5).")
    p.add_argument("--untrained", action="store_true", help="Evaluate a randomly initialised model of the same config instead.")
    p.add_argument("--seed", type=int, default=0, help="Seed for the --untrained weights.")
    p.add_argument("--baseline_dir", default=None,
                   help="Folder whose *training* files give the baseline's counts (default: --input_dir; data_prep timelines "
                        "keeps the train split in its own folder).")
    p.add_argument("--baseline_max_files", type=int, default=8,
                   help="Training files read for the most-frequent-token baseline (their masked_lm_ids only).")
    p.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                   help="Make every check the evaluation makes before loading the model (folder, weights, files, sequence "
                        "length) and print what it would evaluate; evaluate nothing.")
    return p


def run(argv: list[str] | None = None) -> dict:
    """Parse the flags, evaluate, print the result as one JSON line and return it (main's work, for callers in Python)."""
    p = build_parser()
    args = p.parse_args(argv)
    if args.batch_size < 1 or any(v is not None and v < 1 for v in (args.max_sequences, args.max_batches)):
        p.error("--batch_size, --max_sequences and --max_batches must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    dry = vars(args).pop("dry_run")
    cfg = EvalConfig(**vars(args))
    if dry:
        files = check_inputs(cfg)
        print(f"dry run: checked; would evaluate {'an untrained copy of ' if cfg.untrained else ''}{cfg.model_dir} on "
              f"{len(files)} file(s) of {cfg.input_dir} (--split {cfg.split!r}): {', '.join(f.name for f in files[:5])}"
              f"{' ...' if len(files) > 5 else ''}", flush=True)
        return {"dry_run": True}
    result = evaluate(cfg)
    print(json.dumps(result), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    """`bert-evaluate`: the JSON on stdout, exit 0; a bad folder or file is one line on stderr, exit 2."""
    return exit_on_expected("evaluate", lambda: run(argv) and 0)


if __name__ == "__main__":
    sys.exit(main())
