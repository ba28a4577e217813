"""Fine-tune a pretrained model (BERT, ModernBERT, a Llama decoder, T5's encoder) for text tasks: `python -m ort_training.finetune`.

The pretraining loop does the training (`Trainer` with the `sequence_classification` objective and the
text loader of text_data.py): backends ort / eager / compile, accumulation, fp16/bf16, checkpoints and
bitwise resume, DDP, all as in pretraining. This module adds what a downstream task needs around it:

- data: CSV / TSV / parquet / jsonl with `--text_column` / `--label_column`; `--validation_file` and
  `--test_file`, or a seeded stratified split of `--train_file` for whichever is not given;
- weights: `--init_checkpoint` (Hugging Face folder, NVIDIA .pt, this bundle's checkpoint; see
  weights_import.py) or random init with `--config_file` (the baseline); the tokenizer comes from the
  init folder or `--vocab_file`;
- long texts: `--long_text truncate` (cut at --max_seq_length) or `window` (overlapping windows sharing
  `--stride` tokens; probabilities averaged per document);
- tasks (`--task`): single_label (softmax), multi_label (sigmoid, per-label thresholds chosen on validation)
  and regression (MSE) in ort_training/tasks/sequence.py, token_classification (entity tagging) in
  ort_training/tasks/token_classification.py; each names the validation metric that early stopping and the
  hyperparameter search (`--hpo_trials`, tasks/hpo.py) follow;
- the validation metric every `--eval_steps` steps, early stopping after `--patience` evaluations without
  improvement, the best weights kept (OUTPUT_DIR/best_model/); `--temperature_scaling` calibrates them on
  validation, `--group_column` adds every test metric per subgroup, and classification reports carry the
  expected calibration error and OUTPUT_DIR/reliability.png;
- several GPUs (or CPU processes): under torchrun each rank trains on its own part of every global batch
  (TextClassificationLoader deals each epoch's order to the ranks: --train_batch_size is per rank, the global batch
  is it x WORLD_SIZE), DDP averages the gradients, every rank's data position and RNG go into each checkpoint (a
  resume is bitwise), validation batches are dealt to the ranks and their logits gathered (`predict_across_ranks`:
  computed once, the same numbers as one process), and rank 0 writes the record, best model and reports; --device
  cpu | cuda | auto picks where (cuda:LOCAL_RANK);
- at the end: the best model exported as a Hugging Face `*ForSequenceClassification` of its family with its
  tokenizer (OUTPUT_DIR/hf_model, id2label/label2id in its config), the test-set report
  (OUTPUT_DIR/test_report.json: accuracy, macro-F1, AUROC one-vs-rest, per-class figures, confusion
  matrix), OUTPUT_DIR/confusion_matrix.png and per-document predictions (test_predictions.csv).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import torch

from bundle.cli import add_arguments, from_dict, parse_into
from bundle.locking import RunLock
from ort_training.errors import EXPECTED_ERRORS, UsageError, interrupted, report
from ort_training.loop.checkpoint import list_checkpoints
from ort_training.loop.distributed import resolve_dist_env
from ort_training.run_status import PREEMPTED_EXIT_CODE
from ort_training.tasks.finetuning import (  # noqa: F401 -- the fine-tuning API, importable from the command as before
    BEST_DIR, HISTORY_FILE, REPORT_FILE, EarlyStopping, FinetuneConfig, SequenceEarlyStopping, activate, check_loss_and_selection,
    classification_metrics, default_stride, doc_average, export_best, finish, held_out_fractions, load_best, load_tokenizer,
    micro_batch_size, model_and_tokenizer, parse_class_weights, plot_confusion_matrix, predict, predict_across_ranks, resolve_device,
    resolve_model_source, save_best, tokenizer_source_digest, train, training_identity, validation_metric, window_logits,
    write_predictions)
from ort_training.tasks.runner import run

logger = logging.getLogger(__name__)


def check_output_folder(cfg: FinetuneConfig) -> None:
    """A finished run's output belongs to that run: a single fine-tune never writes into a search's folder (it would
    replace the search's best hf_model/ and leave hpo_report.json describing another model), a search never into a
    single run's folder, and a fresh run never over a finished one (without its checkpoints a resume cannot continue
    it). Refused before anything is written, naming the folder and the file that shows whose it is."""
    from ort_training.tasks import hpo

    out = Path(cfg.output_dir)
    summary = out / "finetune_summary.json"
    single = summary.name if summary.is_file() else "checkpoints/" if list_checkpoints(out) else None
    # the rule pretraining's search shares (a single run vs a search, another kind's study)
    hpo.check_output_folder(out, bool(cfg.hpo_trials), single, "fine-tuning", hpo.FINETUNE.study_name)
    if not cfg.hpo_trials and summary.is_file() and not (cfg.resume_from_checkpoint and list_checkpoints(out)):
        raise UsageError(f"--output_dir {out}: holds a finished fine-tuning run ({summary}); a new run would replace its "
                         "hf_model/ and reports. Use another --output_dir (or --resume_from_checkpoint where its checkpoints are kept)")


# ----------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ort_training.finetune",
        description="Fine-tune a BERT, ModernBERT, Llama or T5 (encoder) model on a text task (CSV / parquet / jsonl) with the pretraining loop "
                    "(ORT / eager / torch.compile), early stopping on validation macro-F1, a test report and a "
                    "Hugging Face classifier export (the class of the config's model_type: ort_training/models/).")
    add_arguments(parser, FinetuneConfig, required=("train_file",))
    parser.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS,
                        help="Check the settings and that the files and folders exist, print the outputs; train nothing.")
    return parser


def parse_config(argv: list[str] | None = None) -> FinetuneConfig:
    return parse_into(build_parser(), lambda ns: from_dict(FinetuneConfig, {k: v for k, v in ns.items() if k != "dry_run"},
                                                           source="flags"), argv)


def dry_run(cfg: FinetuneConfig) -> int:
    """What a run would read and write. A missing model or vocab is refused (exit 2); data files that do not exist
    yet are a note (their checks are skipped), so a run can be planned before its data."""
    for flag in ("init_checkpoint", "vocab_file"):
        value = getattr(cfg, flag)
        if value and not Path(value).exists():
            print(f"error: --{flag} {value}: no such file or folder", file=sys.stderr)
            return 2
    for flag in ("train_file", "validation_file", "test_file"):
        value = getattr(cfg, flag)
        if value and not Path(value).exists():
            print(f"note: --{flag} {value} does not exist yet: its checks (columns, labels) were skipped")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        print("note: --device cuda: torch sees no GPU on this machine; the run needs one (or --device cpu / auto)")
    from ort_training.tasks import hpo

    try:
        check_output_folder(cfg)
    except UsageError as exc:
        return report("finetune", exc)
    out = Path(cfg.output_dir)
    metric, higher_is_better = validation_metric(cfg)
    writes = (f"{cfg.hpo_trials} trials under {out / hpo.TRIALS_DIR} (each a run's outputs), {out / hpo.STUDY_FILE}, "
              f"{out / hpo.REPORT_FILE} and the best trial's {out / 'hf_model'}" if cfg.hpo_trials else
              f"{out / 'hf_model'}, {out / REPORT_FILE}, the test predictions and plots, {out / 'finetune_summary.json'}")
    print(f"dry run: settings checked; --task {cfg.task} keeps the step with the {'highest' if higher_is_better else 'lowest'} "
          f"validation {metric}; would write {writes}")
    return 0


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(argv)
    if "--dry-run" in (sys.argv[1:] if argv is None else argv):
        return dry_run(cfg)
    env = resolve_dist_env(os.environ)
    rank = env.rank
    try:
        if cfg.hpo_trials and env.world_size > 1:
            raise UsageError(f"--hpo_trials {cfg.hpo_trials} under a launcher with WORLD_SIZE={env.world_size}: a search runs its "
                             "trials one after another in one process; run it without torchrun (one GPU)")
        device = resolve_device(cfg)
    except UsageError as exc:
        return report("finetune", exc)
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")
    if rank == 0:
        logging.getLogger(__name__).info("device %s, %d rank(s)%s", device, env.world_size,
                                         " (DDP: --train_batch_size per rank, the global batch is it x the ranks)" if env.world_size > 1 else "")
    # One run (or search) per output dir, as in pretraining; a search's trials run in its subfolders.
    lock = RunLock(cfg.output_dir, "hyperparameter search" if cfg.hpo_trials else "fine-tuning") if rank == 0 else None
    try:
        if lock is not None:
            lock.acquire()
        try:
            if rank == 0:
                check_output_folder(cfg)
            if cfg.hpo_trials:
                from ort_training.tasks.hpo import search

                result = search(cfg)
            else:
                result = run(cfg)
        finally:
            if lock is not None:
                lock.release()
    except EXPECTED_ERRORS as exc:  # bad flags, data, checkpoint or folder: one line, exit 2 (errors.py)
        return report("finetune", exc)
    except KeyboardInterrupt:
        return interrupted("finetune")
    except InterruptedError as exc:  # a search's trial preempted (tasks/hpo.py): the study is kept, a rerun continues it
        logger.warning("%s", exc)
        return PREEMPTED_EXIT_CODE
    if result.get("preempted"):
        logger.warning("preempted at step %d: checkpoint written; rerun with --resume_from_checkpoint", result["global_step"])
        return PREEMPTED_EXIT_CODE
    if rank == 0:
        print(json.dumps({k: result.get(k) for k in ("global_step", "best_step", "finished_early", "validation", "test", "hf_model")}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
