"""Entity tagging (`python -m ort_training.finetune --task token_classification`) on the fine-tuning run of
finetune.py: the same Trainer, checkpoints, resume and early stopping, with the `token_classification`
objective and the data of data/tagged.py.

- data: CoNLL-style or JSONL files of words + IOB2 tags (`--tokens_column` / `--tags_column` for JSONL);
  `--validation_file` / `--test_file`, or a seeded random split of `--train_file`'s documents;
- long documents: windows sharing `--stride` sub-tokens (`--long_text window`, the default here); each
  word is read from the window where its first sub-token has the most context;
- validation entity-level F1 (seqeval, strict IOB2: an entity counts only with its exact span and type)
  every `--eval_steps` steps; early stopping on it;
- at the end: the best model exported as a Hugging Face `*ForTokenClassification` with its tokenizer and
  id2label / label2id (OUTPUT_DIR/hf_model; `pipeline("token-classification")` loads it), the test report
  (OUTPUT_DIR/test_report.json: entity precision / recall / F1, per entity type, token accuracy) and the
  predicted tags per test document (test_predictions.jsonl).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from bundle.atomic import atomic_path, atomic_write_text
from ort_training.data.tagged import TaggedSplit, TaggedTable, check_known_tags, encode_tagged, longest_window, read_tagged, tag_set
from ort_training.data.text import TextClassificationLoader, random_split
from ort_training.tasks.finetuning import (REPORT_FILE, EarlyStopping, FinetuneConfig, export_best, held_out_fractions, load_best, micro_batch_size,
                                   model_and_tokenizer, train, training_identity)
from ort_training.loop.distributed import resolve_dist_env
from ort_training.models import family_of
from ort_training.objectives import TokenClassification

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "test_predictions.jsonl"


# ----------------------------------------------------------------------------- metrics
def entity_metrics(gold: list[list[str]], predicted: list[list[str]]) -> dict:
    """seqeval's entity-level micro precision / recall / F1 in strict IOB2 mode (a predicted entity counts only
    with its exact span and type; an I- that starts an entity starts none), per entity type, and token accuracy."""
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    report = classification_report(gold, predicted, mode="strict", scheme=IOB2, output_dict=True, zero_division=0)
    micro = report.pop("micro avg")
    for key in ("macro avg", "weighted avg"):
        report.pop(key, None)
    flat_gold = [t for doc in gold for t in doc]
    flat_pred = [t for doc in predicted for t in doc]
    return {
        "entity_precision": float(micro["precision"]), "entity_recall": float(micro["recall"]), "entity_f1": float(micro["f1-score"]),
        "entities": int(micro["support"]),
        "per_type": {t: {"precision": float(r["precision"]), "recall": float(r["recall"]), "f1": float(r["f1-score"]),
                         "support": int(r["support"])} for t, r in sorted(report.items())},
        "token_accuracy": float(np.mean([g == p for g, p in zip(flat_gold, flat_pred)])) if flat_gold else 0.0,
        "documents": len(gold), "words": len(flat_gold),
    }


@torch.no_grad()
def predict_tags(model, split: TaggedSplit, batch_size: int, device: torch.device) -> tuple[list[list[str]], float]:
    """(predicted tags per document, mean cross-entropy of the gold tags at the words read). Each word is read at
    its first sub-token in the window `encode_tagged` chose for it; a word with no sub-token is predicted O.
    `model` is the plain Hugging Face token classifier; run in eval mode, fp32."""
    was_training = model.training
    model.eval()
    id2label = model.config.id2label
    label2id = {label: i for i, label in id2label.items()}
    predicted = [["O"] * len(tags) for tags in split.tags]
    nll, read = 0.0, 0
    family = family_of(model.config)
    try:
        for start in range(0, len(split), batch_size):
            b = split.batch(slice(start, start + batch_size))
            width = int(b["input_mask"].sum(1).max())
            logits = family.seq_logits(model, b["input_ids"][:, :width].to(device), b["segment_ids"][:, :width].to(device),
                                       b["input_mask"][:, :width].to(device)).float().cpu()
            words = split.word_index[start:start + batch_size, :width]
            docs = split.doc_index[start:start + batch_size]
            rows, cols = torch.nonzero(words >= 0, as_tuple=True)
            log_probs = torch.log_softmax(logits[rows, cols], -1)
            for r, w, lp in zip(rows.tolist(), words[rows, cols].tolist(), log_probs):
                doc = int(docs[r])
                predicted[doc][w] = id2label[int(lp.argmax())]
                nll -= float(lp[label2id[split.tags[doc][w]]])
                read += 1
    finally:
        model.train(was_training)
    return predicted, nll / max(read, 1)


class EntityEarlyStopping(EarlyStopping):
    """finetune.EarlyStopping on the validation entity F1 (seqeval, strict IOB2)."""

    metric = "entity_f1"

    def evaluate(self, hf_model) -> dict:
        predicted, loss = predict_tags(hf_model, self.split, self.cfg.eval_batch_size, self.device)
        m = entity_metrics(self.split.tags, predicted)
        return {k: m[k] for k in ("entity_f1", "entity_precision", "entity_recall", "token_accuracy")} | {"loss": loss}


# ----------------------------------------------------------------------------- data
def load_tagged_splits(cfg: FinetuneConfig) -> tuple[list[str], dict[str, TaggedTable]]:
    """(tags, {"train"|"validation"|"test": table}): tags fixed by the training file, the other files checked against them."""
    read = lambda path: read_tagged(path, cfg.tokens_column, cfg.tags_column)  # noqa: E731
    train_table = read(cfg.train_file)
    fractions = held_out_fractions(cfg)
    tables = {}
    if fractions:
        train_table, tables = random_split(train_table, fractions, cfg.split_seed)
    tables["train"] = train_table
    if cfg.validation_file:
        tables["validation"] = read(cfg.validation_file)
    if cfg.test_file:
        tables["test"] = read(cfg.test_file)
    labels = tag_set(train_table)
    for table in tables.values():
        # the tags are those of the training rows: with a split, the "train split" of --train_file, not the whole file
        check_known_tags(table, labels, train_table.path)
    return labels, {name: tables[name] for name in ("train", "validation", "test") if name in tables}


# ----------------------------------------------------------------------------- the run
def run_token_classification(cfg: FinetuneConfig, on_evaluation=None) -> dict:
    """One entity-tagging run (see the module doc); `on_evaluation(step, value)`: EarlyStopping's (the search's pruner)."""
    env = resolve_dist_env(os.environ)
    config_file, tokenizer = model_and_tokenizer(cfg)
    labels, tables = load_tagged_splits(cfg)
    # Training windows are padded to the longest (fixed for the run: one ORT export), at most --max_seq_length.
    pad_to = min(cfg.max_seq_length, -(-longest_window(tokenizer, tables["train"], cfg.max_seq_length) // 8) * 8)
    splits = {name: encode_tagged(name, t, labels, tokenizer, cfg.max_seq_length, cfg.long_text, cfg.stride, cfg.label_all_subtokens,
                                  pad_to if name == "train" else None)
              for name, t in tables.items()}
    for name, s in splits.items():
        logger.info("%s: %s, %d documents, %d windows of %d tokens%s%s", name, s.path, s.num_docs, len(s), s.input_ids.shape[1],
                    f", {s.truncated} documents longer than {cfg.max_seq_length} tokens ({cfg.long_text})" if s.truncated else "",
                    f", {s.unreadable_words} words without a sub-token read (predicted O)" if s.unreadable_words else "")
    loader = TextClassificationLoader(splits["train"], micro_batch_size(cfg), cfg.seed, env.rank, env.world_size,
                                      identity=training_identity(cfg))
    trainer, stopper, summary = train(
        cfg, config_file, loader, lambda init: TokenClassification(labels, init_checkpoint=init),
        lambda is_main, device, resumed_step: EntityEarlyStopping(cfg, splits["validation"], is_main, device, resumed_step, on_evaluation),
        {"labels": labels, "train_sequence_length": pad_to})
    if summary.get("preempted") or not trainer.is_main or summary["pruned"]:
        return summary
    return finish(cfg, trainer, tokenizer, labels, splits, stopper, summary)


def finish(cfg: FinetuneConfig, trainer, tokenizer, labels: list[str], splits: dict[str, TaggedSplit], stopper, summary: dict) -> dict:
    """Best weights -> hf_model/, the test report and the predicted tags."""
    out = Path(cfg.output_dir)
    best = load_best(out, trainer, stopper)
    export_best(trainer, tokenizer, out / "hf_model")
    result = {**summary, "best_step": best["step"], "validation": {k: v for k, v in best.items() if k != "step"},
              "labels": labels, "hf_model": str(out / "hf_model")}
    if "test" in splits:
        split = splits["test"]
        predicted, loss = predict_tags(trainer.model.hf_model, split, cfg.eval_batch_size, trainer.device)
        report = {"file": split.path, "task": cfg.task, "scheme": "IOB2", "mode": "strict", "long_text": cfg.long_text,
                  "max_seq_length": cfg.max_seq_length, "stride": cfg.stride, "label_all_subtokens": cfg.label_all_subtokens,
                  "windows": len(split), "words_not_read": split.unreadable_words, "init_checkpoint": cfg.init_checkpoint,
                  "best_step": best["step"], "labels": labels, "loss": loss, **entity_metrics(split.tags, predicted)}
        atomic_write_text(out / REPORT_FILE, json.dumps(report, indent=2) + "\n")
        with atomic_path(out / PREDICTIONS_FILE) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            for words, gold, pred in zip(split.words, split.tags, predicted):
                fh.write(json.dumps({"tokens": words, "tags": gold, "predicted": pred}, ensure_ascii=False) + "\n")
        result["test"] = {k: report[k] for k in ("entity_f1", "entity_precision", "entity_recall", "token_accuracy", "documents", "entities")}
        result["test_report"] = str(out / REPORT_FILE)
    atomic_write_text(out / "finetune_summary.json", json.dumps(result, indent=2) + "\n")
    return result

