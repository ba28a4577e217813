"""Outcome prediction from the first 24 hours of EHR timelines (data_prep's `timelines` stage), as fms-ehrs does it
with a pretrained decoder: logistic regression on the hidden state of a stay's last real token ("representation-based
prediction"), cross-validated with folds grouped by patient, beside a bag-of-tokens logistic regression on the same
folds (the baseline a foundation model has to beat).

    python -m ort_training.outcomes --timelines_dir WORK --model_dir OUT/hf_model [--untrained] [--splits val test]

Which stays: every stay of `--splits` (default the held-out ones: patients the pretraining never read) that lasted
at least the prediction window; for the ICU and ventilation outcomes, those not already in the ICU / ventilated
within it (the question is whether it happens later). One JSON line: per outcome the stays, positives, and AUROC and
AUPRC (mean, sd, per fold) of the model's features and of bag-of-tokens. Folds without both classes are left out
and counted. `--untrained` gives the random-init control of the same architecture (same folds).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bundle import packed_schema
from ort_training.errors import UsageError, exit_on_expected

logger = logging.getLogger(__name__)

OUTCOMES = ("in_hospital_mortality", "long_length_of_stay", "icu_after_24h", "imv_after_24h")
"""outcomes.csv's outcome columns (data_prep.timelines defines them)."""
ALREADY = {"icu_after_24h": "icu_in_first_24h", "imv_after_24h": "imv_in_first_24h"}
"""An outcome -> the column that says it already happened in the window (such stays are left out of it)."""


@dataclass
class OutcomesConfig:
    timelines_dir: str
    model_dir: str
    splits: list[str] = field(default_factory=lambda: ["val", "test"])
    outcomes: list[str] = field(default_factory=lambda: list(OUTCOMES))
    folds: int = 5
    seed: int = 0
    untrained: bool = False
    batch_size: int = 16


@dataclass
class Stays:
    rows: list[dict]
    sequences: list[np.ndarray]
    vocab_size: int


def read_stays(timelines_dir: str | Path, splits: list[str]) -> Stays:
    """outcomes.csv's rows of `splits` (stays of at least the window) with their 24-hour token sequences."""
    root = Path(timelines_dir)
    table = root / "outcomes.csv"
    if not table.is_file():
        raise UsageError(f"--timelines_dir {root}: no outcomes.csv; pass the --work-dir of `python -m data_prep timelines`")
    with open(table, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r.get("split") in splits and r.get("stay_under_24h") == "0"]
    missing = [c for c in ("hospitalization_id", "patient_id", "sequence_index", "file_24h", *OUTCOMES) if rows and c not in rows[0]]
    if missing:
        raise UsageError(f"{table}: lacks the column(s) {missing}; rebuild it with `python -m data_prep timelines`")
    if not rows:
        raise UsageError(f"{table}: no stay of at least the prediction window in --splits {' '.join(splits)}")
    files: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    sequences, vocab = [], 0
    for r in rows:
        name = r["file_24h"]
        path = (root / name).resolve()
        if not path.is_relative_to(root.resolve()):
            raise UsageError(f"{table}: file_24h {name!r} leaves {root}")
        if name not in files:
            files[name] = packed_schema.read_sequences(path)
            vocab = max(vocab, packed_schema.read_attrs(path).vocab_size)
        tokens, offsets = files[name]
        i = int(r["sequence_index"])
        if not 0 <= i < len(offsets) - 1:
            raise UsageError(f"{table}: sequence_index {i} of stay {r['hospitalization_id']} is outside {path}")
        sequences.append(tokens[offsets[i]:offsets[i + 1]].astype(np.int64))
    return Stays(rows, sequences, vocab)


def load_decoder(model_dir: str, untrained: bool, seed: int):
    from transformers import AutoConfig

    from ort_training.models import family_of

    from ort_training.evaluate import check_model_dir

    check_model_dir(model_dir)  # a folder with a readable config.json of a known family, no custom code: said by name
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    family = family_of(config)
    if "clm" not in family.pretraining_tasks:
        raise UsageError(f"--model_dir {model_dir}: a {family.name} model; outcome prediction from timelines reads a decoder's "
                         "last-token state (pretrain one with --objective clm)")
    cls = family.hf_class("clm")
    if untrained:
        torch.manual_seed(seed)
        return cls(config).eval(), family
    return cls.from_pretrained(model_dir, trust_remote_code=False).eval(), family


@torch.no_grad()
def last_token_states(model, family, sequences: list[np.ndarray], batch_size: int, pad_id: int) -> np.ndarray:
    """The final hidden state (after the last norm) at each sequence's last real token, in batches padded right."""
    out = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start:start + batch_size]
        length = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), length), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, s in enumerate(chunk):
            ids[b, :len(s)] = torch.from_numpy(s)
            mask[b, :len(s)] = 1
        hidden, _ = family.encode(model, ids, None, mask)
        last = mask.sum(1) - 1
        out.append(hidden[torch.arange(len(chunk)), last].float().numpy())
    return np.concatenate(out)


def bag_of_tokens(sequences: list[np.ndarray], vocab_size: int) -> np.ndarray:
    """log(1 + count) of every token id in each sequence."""
    counts = np.zeros((len(sequences), vocab_size), dtype=np.float64)
    for i, s in enumerate(sequences):
        counts[i] = np.bincount(s, minlength=vocab_size)[:vocab_size]
    return np.log1p(counts)


def cross_validate(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> dict:
    """AUROC / AUPRC of a standardised, L2-regularised logistic regression over folds grouped by patient (stratified)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score, roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n_splits = min(folds, int(labels.sum()), int((1 - labels).sum()), len(set(groups.tolist())))
    if n_splits < 2:
        return {"auroc_mean": None, "auroc_sd": None, "folds_scored": 0, "note": "too few positives or negatives for 2 folds"}
    auroc, auprc, skipped = [], [], 0
    for train, test in StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(features, labels, groups):
        if len(set(labels[test].tolist())) < 2 or len(set(labels[train].tolist())) < 2:
            skipped += 1
            continue
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, C=0.1))
        clf.fit(features[train], labels[train])
        p = clf.predict_proba(features[test])[:, 1]
        auroc.append(float(roc_auc_score(labels[test], p)))
        auprc.append(float(average_precision_score(labels[test], p)))
    return {"auroc_mean": float(np.mean(auroc)) if auroc else None, "auroc_sd": float(np.std(auroc)) if auroc else None,
            "auprc_mean": float(np.mean(auprc)) if auprc else None, "auroc_folds": auroc, "folds_scored": len(auroc),
            "folds_skipped": skipped}


def write_tables(timelines_dir: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """The 24-hour timelines as text tables for fine-tuning (`python -m ort_training.finetune --text_column timeline
    --label_column OUTCOME`): OUT/<split>.csv per split, one row per stay of at least the window, the timeline's
    tokens joined by spaces (the timeline tokenizer splits on whitespace) beside the ids and every outcome column."""
    from bundle.atomic import atomic_write_text
    from ort_training.export import load_tokenizer

    root, out = Path(timelines_dir), Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--write_tables {out}: is a file, not a folder; pass a folder (it is created)")
    tokenizer = load_tokenizer(root / "tokenizer")
    written = {}
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        stays = read_stays(root, [split])
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["hospitalization_id", "patient_id", "timeline", *OUTCOMES])
        for row, seq in zip(stays.rows, stays.sequences):
            text = " ".join(tokenizer.convert_ids_to_tokens(seq.tolist()))
            writer.writerow([row["hospitalization_id"], row["patient_id"], text, *(row[o] for o in OUTCOMES)])
        target = written[split] = out / f"{split}.csv"
        if target.exists() and (not target.is_file() or target.read_text(encoding="utf-8") != buffer.getvalue()):
            raise UsageError(f"--write_tables {out}: {target} exists with other content; this command never writes over a "
                             "file it did not make: choose an empty folder")
        atomic_write_text(target, buffer.getvalue())
    return written


def predict_outcomes(cfg: OutcomesConfig) -> dict:
    unknown = [o for o in cfg.outcomes if o not in OUTCOMES]
    if unknown:
        raise UsageError(f"--outcomes {' '.join(unknown)}: not an outcome of outcomes.csv ({', '.join(OUTCOMES)})")
    stays = read_stays(cfg.timelines_dir, cfg.splits)
    model, family = load_decoder(cfg.model_dir, cfg.untrained, cfg.seed)
    if stays.vocab_size > model.config.vocab_size:
        raise UsageError(f"{cfg.timelines_dir}: timelines of {stays.vocab_size} token ids, more than {cfg.model_dir}'s vocabulary "
                         f"of {model.config.vocab_size}: the model was trained on other timelines")
    states = last_token_states(model, family, stays.sequences, cfg.batch_size, model.config.pad_token_id or 0)
    bags = bag_of_tokens(stays.sequences, stays.vocab_size)
    result = {"model_dir": cfg.model_dir, "untrained": cfg.untrained, "splits": cfg.splits, "folds": cfg.folds, "outcomes": {}}
    for outcome in cfg.outcomes:
        keep = np.array([r.get(ALREADY.get(outcome, ""), "0") != "1" for r in stays.rows])
        labels = np.array([int(r[outcome]) for r in stays.rows])[keep]
        groups = np.array([r["patient_id"] for r in stays.rows])[keep]
        result["outcomes"][outcome] = {
            "stays": int(keep.sum()), "positives": int(labels.sum()), "patients": len(set(groups.tolist())),
            "model": cross_validate(states[keep], labels, groups, cfg.folds, cfg.seed),
            "bag_of_tokens": cross_validate(bags[keep], labels, groups, cfg.folds, cfg.seed),
        }
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ort_training.outcomes", description=__doc__.strip().splitlines()[0])
    p.add_argument("--timelines_dir", required=True, help="The --work-dir of `python -m data_prep timelines` (outcomes.csv, 24 h files).")
    p.add_argument("--model_dir", help="An exported decoder (OUTPUT_DIR/hf_model of a --objective clm run).")
    p.add_argument("--splits", nargs="+", default=["val", "test"], help="Splits whose stays are cross-validated (default: the held-out ones).")
    p.add_argument("--outcomes", nargs="+", default=list(OUTCOMES), help="Outcome columns to predict.")
    p.add_argument("--folds", type=int, default=5, help="Cross-validation folds, grouped by patient and stratified.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the folds (and of the --untrained weights).")
    p.add_argument("--untrained", action="store_true", help="A randomly initialised model of the same config instead (the control).")
    p.add_argument("--batch_size", type=int, default=16, help="Timelines per forward pass.")
    p.add_argument("--write_tables", metavar="DIR", default=None,
                   help="Instead: write the 24-hour timelines as text tables DIR/{train,val,test}.csv for "
                        "`python -m ort_training.finetune --text_column timeline --label_column OUTCOME` and exit.")
    return p


def run(argv: list[str] | None = None) -> dict:
    p = build_parser()
    args = p.parse_args(argv)
    if args.folds < 2 or args.batch_size < 1:
        p.error("--folds must be >= 2 and --batch_size >= 1")
    if not args.model_dir and not args.write_tables:
        p.error("--model_dir is required (or --write_tables DIR)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tables = vars(args).pop("write_tables")
    if tables:
        result = {split: str(path) for split, path in write_tables(args.timelines_dir, tables).items()}
        print(json.dumps(result), flush=True)
        return result
    result = predict_outcomes(OutcomesConfig(**vars(args)))
    print(json.dumps(result), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    """The JSON on stdout, exit 0; a bad folder or flag is one line on stderr, exit 2."""
    return exit_on_expected("outcomes", lambda: run(argv) and 0)


if __name__ == "__main__":
    sys.exit(main())
