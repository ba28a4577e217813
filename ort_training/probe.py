"""Linear probe: how much a frozen encoder (or decoder) knows about a labelled text task, from forward passes only.

    python -m ort_training.probe --model_dir M --train_file train.csv --test_file test.csv \
        --text_column text --label_column label [--dev_file dev.csv] [--untrained [--seed N]] \
        [--pooling mean|cls|last] [--max_train N] [--max_seq_length 128]

Every text is run once through the model as it is (no gradient, dropout off); its last hidden states are pooled
into one vector (`mean`: the average over real tokens; `cls`: the first token; `last`: the last real token, what a
decoder has read the whole text by); a logistic regression (scikit-learn, lbfgs, standardised features) is fitted
on the training vectors and scored on the test (and dev) vectors. Nothing in it is random except `--untrained`'s
weights, which `--seed` fixes, and `--max_train`'s subset, drawn with a fixed generator: the same command gives the
same JSON line, so starting points can be ranked without the seed spread of fine-tuning.

Any model family transformers loads with AutoModel (BERT, ModernBERT, Llama, T5's encoder, ...) from a Hugging Face folder
(config.json, weights, tokenizer files; `trust_remote_code=False`, a folder naming custom code is refused).
`--untrained` probes a randomly initialised model of the folder's config: the control that says how much of a
score is the architecture and how much the pretraining. Files: .csv / .tsv / .parquet / .jsonl (the fine-tuning
table reader). Output: one JSON line on stdout (macro-F1 and accuracy, per split); bad input: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from ort_training.errors import UsageError, exit_on_expected, refuse_remote_code

Pooling = Literal["mean", "cls", "last"]
SUBSET_SEED = 0
"""The generator that draws --max_train's rows (fixed: the subset is part of the protocol, not a seed to vary)."""


@dataclass
class ProbeConfig:
    model_dir: str
    train_file: str
    test_file: str
    text_column: str = "text"
    label_column: str = "label"
    dev_file: Optional[str] = None
    untrained: bool = False
    seed: int = 0
    pooling: Pooling = "mean"
    max_train: Optional[int] = None
    max_seq_length: int = 128
    batch_size: int = 64
    c: float = 1.0
    max_iter: int = 2000

    def check(self) -> None:
        folder = Path(self.model_dir)
        if not folder.is_dir():
            raise UsageError(f"--model_dir {self.model_dir}: not a folder (a Hugging Face model folder with config.json)")
        if not (folder / "config.json").is_file():
            raise UsageError(f"--model_dir {self.model_dir}: no config.json (a Hugging Face model folder is expected)")
        for flag, value in (("--train_file", self.train_file), ("--test_file", self.test_file), ("--dev_file", self.dev_file)):
            if value is not None and not Path(value).is_file():
                raise UsageError(f"{flag} {value}: no such file")
        if self.max_train is not None and self.max_train < 2:
            raise UsageError(f"--max_train {self.max_train}: must be at least 2 (rows the probe is fitted on)")
        if self.max_seq_length < 4:
            raise UsageError(f"--max_seq_length {self.max_seq_length}: must be at least 4")
        if self.batch_size < 1:
            raise UsageError(f"--batch_size {self.batch_size}: must be at least 1")
        if self.c <= 0:
            raise UsageError(f"--C {self.c}: the inverse regularisation strength must be positive")


def load_model(cfg: ProbeConfig):
    """(model in eval mode, tokenizer): the folder's base model (AutoModel), or random weights of its config."""
    import torch
    from transformers import AutoConfig, AutoModel

    from ort_training.export import load_tokenizer

    refuse_remote_code(cfg.model_dir)
    try:
        config = AutoConfig.from_pretrained(cfg.model_dir, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--model_dir {cfg.model_dir}: config.json is not a model transformers knows ({exc})") from None
    tokenizer = load_tokenizer(cfg.model_dir)
    if cfg.untrained:  # same architecture, random weights: the control a pretrained model is compared with
        torch.manual_seed(cfg.seed)
        model = AutoModel.from_config(config, trust_remote_code=False)
    else:
        try:
            model = AutoModel.from_pretrained(cfg.model_dir, trust_remote_code=False)
        except OSError as exc:
            raise UsageError(f"--model_dir {cfg.model_dir}: no weights transformers can load ({exc}); "
                             "--untrained probes a random init of its config") from None
    if getattr(config, "is_encoder_decoder", False):  # T5: the text's representation is the encoder's (the decoder
        model = model.get_encoder()                    # reads targets, which a probe has none of)
    model.eval()
    if tokenizer.pad_token is None:  # decoders often ship none; padding positions are masked out anyway
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = "right"  # `last` reads position (real tokens - 1)
    return model, tokenizer


def pool(hidden, mask, pooling: Pooling):
    """One vector per row from last hidden states [B, T, H] and the attention mask [B, T] (right-padded)."""
    import torch

    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last":
        last = mask.sum(dim=1).clamp(min=1) - 1
        return hidden[torch.arange(hidden.shape[0]), last]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def features(model, tokenizer, texts: list[str], cfg: ProbeConfig) -> np.ndarray:
    """Pooled last hidden states of every text, in order, as float64 (forward passes only)."""
    import torch

    max_len = min(cfg.max_seq_length, getattr(model.config, "max_position_embeddings", cfg.max_seq_length) or cfg.max_seq_length)
    ids = tokenizer(list(texts), truncation=True, max_length=max_len, return_token_type_ids=False)["input_ids"]
    # Batches of similar lengths (a stable sort: the order, hence the result, is fixed): little padding to compute.
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = np.zeros((len(ids), model.config.hidden_size), dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, len(order), cfg.batch_size):
            rows = order[start:start + cfg.batch_size]
            batch = tokenizer.pad({"input_ids": [ids[i] for i in rows]}, padding=True, return_tensors="pt")
            hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            out[rows] = pool(hidden.float(), batch["attention_mask"], cfg.pooling).double().numpy()
    return out


def subset(n: int, max_rows: Optional[int]) -> np.ndarray:
    """Row indices of a training subset drawn with the fixed generator (all rows when max_rows is None or >= n), in
    file order."""
    if max_rows is None or max_rows >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(SUBSET_SEED).permutation(n)[:max_rows])


def scores(gold: list[str], predicted: np.ndarray, labels: list[str]) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    return {"macro_f1": round(float(f1_score(gold, predicted, labels=labels, average="macro", zero_division=0)), 6),
            "accuracy": round(float(accuracy_score(gold, predicted)), 6), "rows": len(gold)}


def run(cfg: ProbeConfig) -> dict:
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from ort_training.data.text import read_table

    cfg.check()
    start = time.perf_counter()
    train = read_table(cfg.train_file, cfg.text_column, cfg.label_column)
    tables = {"test": read_table(cfg.test_file, cfg.text_column, cfg.label_column)}
    if cfg.dev_file:
        tables["dev"] = read_table(cfg.dev_file, cfg.text_column, cfg.label_column)
    rows = subset(len(train), cfg.max_train)
    train_texts, train_labels = [train.texts[i] for i in rows], [train.labels[i] for i in rows]
    labels = sorted(set(train_labels))
    if len(labels) < 2:
        raise UsageError(f"--train_file {cfg.train_file}: {len(rows)} training rows hold one label ({labels[0]!r}); "
                         "a probe needs at least two")
    for name, table in tables.items():
        unknown = sorted(set(table.labels) - set(labels))
        if unknown:
            raise UsageError(f"--{name}_file {table.path}: labels the training rows lack: {', '.join(map(repr, unknown[:5]))}")
    model, tokenizer = load_model(cfg)
    x_train = features(model, tokenizer, train_texts, cfg)
    scaler = StandardScaler().fit(x_train)
    probe = LogisticRegression(C=cfg.c, max_iter=cfg.max_iter)  # lbfgs: deterministic, no random state used
    probe.fit(scaler.transform(x_train), train_labels)
    result = {"model_dir": cfg.model_dir, "model_type": model.config.model_type, "untrained": cfg.untrained,
              "seed": cfg.seed if cfg.untrained else None, "pooling": cfg.pooling, "train_rows": len(rows),
              "features": int(x_train.shape[1]), "labels": labels}
    for name, table in tables.items():
        predicted = probe.predict(scaler.transform(features(model, tokenizer, table.texts, cfg)))
        result[name] = scores(table.labels, predicted, labels)
    result["macro_f1"], result["accuracy"] = result["test"]["macro_f1"], result["test"]["accuracy"]
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["threads"] = torch.get_num_threads()
    result["settings"] = {k: v for k, v in asdict(cfg).items() if k in ("max_seq_length", "batch_size", "c", "max_iter", "max_train")}
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ort_training.probe", description=__doc__.strip().splitlines()[0])
    p.add_argument("--model_dir", required=True, help="Hugging Face model folder (config.json, weights, tokenizer files).")
    p.add_argument("--train_file", required=True, help="Labelled rows the logistic regression is fitted on (.csv/.tsv/.parquet/.jsonl).")
    p.add_argument("--test_file", required=True, help="Labelled rows it is scored on (macro-F1, accuracy).")
    p.add_argument("--dev_file", default=None, help="Optional: labelled rows scored as well (choose settings on these, not on test).")
    p.add_argument("--text_column", default="text", help="Column holding the text.")
    p.add_argument("--label_column", default="label", help="Column holding the label.")
    p.add_argument("--untrained", action="store_true", help="Probe a random init of the folder's config instead of its weights.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the --untrained weights.")
    p.add_argument("--pooling", choices=("mean", "cls", "last"), default="mean",
                   help="mean over real tokens (encoders), first token (cls), or last real token (last: decoders).")
    p.add_argument("--max_train", type=int, default=None, help="Fit on at most N training rows (a fixed subset; default all).")
    p.add_argument("--max_seq_length", type=int, default=128, help="Tokens per text (longer ones are cut).")
    p.add_argument("--batch_size", type=int, default=64, help="Texts per forward pass.")
    p.add_argument("--C", dest="c", type=float, default=1.0, help="Inverse L2 strength of the logistic regression.")
    p.add_argument("--max_iter", type=int, default=2000, help="lbfgs iterations at most.")
    return p


def main(argv: list[str] | None = None) -> int:
    """One JSON line on stdout, exit 0; a bad folder, file or flag is one line on stderr, exit 2."""
    args = build_parser().parse_args(argv)
    cfg = ProbeConfig(**vars(args))

    def body() -> int:
        import warnings

        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence and tokenizer chatter: the JSON line is the output
            print(json.dumps(run(cfg)), flush=True)
        return 0

    return exit_on_expected("probe", body)


if __name__ == "__main__":
    sys.exit(main())
