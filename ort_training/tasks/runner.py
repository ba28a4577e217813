"""One fine-tuning run of any task type: `run(cfg)` dispatches on `--task` (the command and the search both call it)."""

from __future__ import annotations

import logging
import os

from ort_training.data.text import TextClassificationLoader, encode_split, longest_tokens
from ort_training.loop.distributed import resolve_dist_env
from ort_training.tasks.finetuning import (FinetuneConfig, SequenceEarlyStopping, finish, micro_batch_size, model_and_tokenizer, train,
                                           training_identity)
from ort_training.tasks.sequence import get_task
from ort_training.tasks.token_classification import run_token_classification

logger = logging.getLogger(__name__)


def run(cfg: FinetuneConfig, on_evaluation=None) -> dict:
    """One fine-tuning run (see the module doc); `on_evaluation(step, value)`: EarlyStopping's."""
    if cfg.task == "token_classification":
        return run_token_classification(cfg, on_evaluation)
    env = resolve_dist_env(os.environ)
    config_file, tokenizer = model_and_tokenizer(cfg)
    task = get_task(cfg)
    tables = task.load_splits()
    targets = {name: task.encode(t) for name, t in tables.items()}
    # Training batches are padded to the longest training text (fixed for the run: one ORT export).
    pad_to = cfg.max_seq_length if cfg.long_text == "window" else min(
        cfg.max_seq_length, -(-longest_tokens(tokenizer, tables["train"].texts, cfg.max_seq_length) // 8) * 8)
    splits = {name: encode_split(name, t, targets[name], tokenizer, cfg.max_seq_length, cfg.long_text, cfg.stride,
                                 pad_to if name == "train" else None)
              for name, t in tables.items()}
    for name, s in splits.items():
        logger.info("%s: %s, %d documents, %d sequences of %d tokens%s", name, s.path, s.num_docs, len(s), s.input_ids.shape[1],
                    f", {s.truncated} documents longer than {cfg.max_seq_length} tokens "
                    f"({'windowed' if cfg.long_text == 'window' else 'truncated'})" if s.truncated else "")
    loader = TextClassificationLoader(splits["train"], micro_batch_size(cfg), cfg.seed, env.rank, env.world_size,
                                      identity=training_identity(cfg))
    y_val = task.truth(tables["validation"])
    trainer, stopper, summary = train(
        cfg, config_file, loader, lambda init: task.objective(init),
        lambda is_main, device, resumed_step: SequenceEarlyStopping(cfg, splits["validation"], is_main, device, resumed_step, task,
                                                                    y_val, on_evaluation),
        {"labels": task.labels, "train_sequence_length": pad_to})
    if summary.get("preempted") or not trainer.is_main or summary["pruned"]:
        return summary
    return finish(cfg, trainer, tokenizer, task, tables, splits, stopper, summary)
