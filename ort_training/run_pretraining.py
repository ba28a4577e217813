"""Entry point: `python -m ort_training.run_pretraining` / `bert-pretrain` (NVIDIA-compatible flags).

With `--hpo_trials N` it runs an optuna search over this phase's settings instead of one run (tasks/hpo.py's
study driver with its PRETRAIN searcher; each trial is `run_trial` below, in OUTPUT_DIR/trials/trial-NNN)."""

from __future__ import annotations

import signal
import sys

# SIGTERM is caught before torch is imported: a preemption that lands during start-up still ends with
# the exit-143 contract (nothing new to checkpoint yet) instead of Python's default kill.
_early_sigterm: list[int] = []
if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda signum, frame: _early_sigterm.append(signum))

import dataclasses  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

from bundle.cli import parse_into  # noqa: E402
from bundle.locking import RunLock  # noqa: E402
from ort_training.config import PretrainConfig, build_parser, merge_settings, read_yaml  # noqa: E402
from ort_training.errors import UsageError, exit_on_expected  # noqa: E402
from ort_training.run_status import PREEMPTED_EXIT_CODE  # noqa: E402

NON_FINITE_EXIT_CODE = 3
PROG = "run_pretraining"


def parse_args(argv: list[str] | None = None) -> tuple[PretrainConfig, bool]:
    """(config, dry_run): the trainer's flags (defaults < --config YAML < flags, as ort_training.config.parse_config)
    plus --dry-run, which belongs to this entry point, not to the config."""
    from bundle.cli import from_dict

    parser = build_parser()
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                        help="Make every check the run makes before its first step (flags, config, data, tokenizer, "
                             "--init_checkpoint's architecture, --output_dir's checkpoints and lock, precision on this "
                             "machine's device), print the plan and stop: nothing is written.")
    dry_run: list[bool] = []

    def build(ns: dict) -> PretrainConfig:
        dry_run.append(ns.pop("dry_run"))
        yaml_path = ns.pop("config")
        loaded = read_yaml(yaml_path) if yaml_path else {}
        return from_dict(PretrainConfig, merge_settings(loaded, ns), source=f"--config {yaml_path}" if yaml_path else "flags")

    cfg = parse_into(parser, build, argv)
    return cfg, dry_run[0]


def main(argv: list[str] | None = None) -> int:
    cfg, dry_run = parse_args(argv)
    rank = int(os.environ.get("RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
    )
    # Bad flags, data, checkpoints or a locked output dir: one line naming the file or flag, exit 2 (errors.py).
    if cfg.hpo_trials:  # the space was checked when cfg was built, before anything is written
        return exit_on_expected(PROG, lambda: _dry_run_search(cfg) if dry_run else _search(cfg))
    return exit_on_expected(PROG, lambda: _dry_run(cfg) if dry_run else _run(cfg, rank))


def _dry_run(cfg: PretrainConfig) -> int:
    """The run's start-up refusals (ort_training/checks.py: the ones Trainer makes, the same code), then the plan."""
    from ort_training.checks import check_unlocked, device_type, preflight

    check_unlocked(cfg.output_dir, "training")
    check_output_folder(cfg)
    notes = preflight(cfg, "auto", data=True)
    print(f"# dry run: phase {2 if cfg.phase2 else 1} on {device_type('auto')}, backend {cfg.backend}, {cfg.precision}, "
          f"{cfg.max_steps} steps of {cfg.train_batch_size} sequences per rank ({cfg.micro_batch_size} x "
          f"{cfg.gradient_accumulation_steps} accumulation), data {cfg.input_dir}, output {cfg.output_dir}")
    for note in notes:
        print(f"# note: {note}")
    print("# dry run: every start-up check passed; nothing was written")
    return 0


def _run(cfg, rank: int) -> int:
    log = logging.getLogger(__name__)
    if rank == 0:
        check_output_folder(cfg)  # before the lock file is made: a refused run writes nothing
    lock = RunLock(cfg.output_dir, "training") if rank == 0 else None  # one run per output dir (rank 0 holds it)
    if lock is not None:
        lock.acquire()
    try:
        if rank == 0:
            check_output_folder(cfg)  # again, holding the lock
        from ort_training.loop.trainer import NonFiniteError, Trainer

        try:
            trainer = Trainer(cfg)
            if _early_sigterm:
                trainer.request_stop()
            try:
                summary = trainer.train()
            finally:
                trainer.close()
        except NonFiniteError as exc:
            log.error("%s", exc)
            return NON_FINITE_EXIT_CODE
    finally:
        if lock is not None:
            lock.release()
    if summary.get("preempted"):
        done = "checkpoint written" if summary["steps_this_attempt"] else "no step trained in this attempt, nothing new to save"
        log.warning("preempted at step %d (%s), exiting %d; rerun with --resume_from_checkpoint to continue",
                    summary["global_step"], done, PREEMPTED_EXIT_CODE)
    if rank == 0:
        print(json.dumps(summary), flush=True)  # the last line of stdout: wrappers parse it
    # The checkpoint is on disk; a non-zero status keeps wrappers from treating a preempted phase as done.
    return PREEMPTED_EXIT_CODE if summary.get("preempted") else 0


# ----------------------------------------------------------------------------- hyperparameter search
SEARCH_LOCK = "hyperparameter search"


def check_output_folder(cfg: PretrainConfig) -> None:
    """Fine-tuning's rule (tasks/hpo.check_output_folder): a single run never into a search's folder, a search never
    into a single run's folder; a search also never writes over its inputs."""
    from ort_training.tasks import hpo

    out = Path(cfg.output_dir)
    single = next((name for name in ("summary.json", "checkpoints", "hf_model") if (out / name).exists()), None)
    hpo.check_output_folder(out, bool(cfg.hpo_trials), single, "pretraining", hpo.PRETRAIN.study_name)
    # a search never writes over its inputs, and no run writes into its data (--output_dir == --input_dir wrote
    # checkpoints/ and hf_model/ among the HDF5 files, beside data_prep's manifest)
    hpo.check_inputs_apart(out, {"input_dir": cfg.input_dir, "eval_dir": cfg.eval_dir, "init_checkpoint": cfg.init_checkpoint,
                                 "vocab_file": cfg.vocab_file, "hpo_space": cfg.hpo_space, "config_file": cfg.config_file,
                                 "config": None}, searching=bool(cfg.hpo_trials))


def _search_plan(cfg: PretrainConfig) -> tuple[dict, str]:
    from ort_training.tasks import hpo

    space = hpo.load_space(cfg.hpo_space, searcher=hpo.PRETRAIN)
    metric, _, _ = hpo.PRETRAIN.objective(cfg)
    return space, metric


def _check_one_process() -> None:
    world = int(os.environ.get("WORLD_SIZE", os.environ.get("OMPI_COMM_WORLD_SIZE", "1")))
    if world > 1:
        raise UsageError(f"--hpo_trials under a launcher with WORLD_SIZE={world}: a search runs its trials one after another in "
                         "one process; run it without torchrun (one GPU)")


def _dry_run_search(cfg: PretrainConfig) -> int:
    """What the search refuses (the space was checked when the config was built), the first trial's start-up
    refusals, then the plan; nothing is written."""
    from ort_training.checks import check_unlocked, device_type, preflight
    from ort_training.tasks import hpo

    _check_one_process()
    check_unlocked(cfg.output_dir, SEARCH_LOCK)
    check_output_folder(cfg)
    space, metric = _search_plan(cfg)
    out = Path(cfg.output_dir)
    trial = dataclasses.replace(cfg, hpo_trials=0, hpo_space=None, output_dir=str(out / hpo.TRIALS_DIR / "trial-000"),
                                **hpo.PRETRAIN.trial_overrides)
    notes = preflight(trial, "auto", data=True)
    print(f"# dry run: search of {cfg.hpo_trials} trials of phase {2 if cfg.phase2 else 1} on {device_type('auto')}, minimising "
          f"held-out {metric} (every {cfg.eval_every} steps, --eval_dir {cfg.eval_dir}), TPE sampler seeded by --seed "
          f"{cfg.seed}, median pruner; space {json.dumps(space)}")
    print(f"# dry run: would write {out / hpo.TRIALS_DIR}/trial-NNN (each a run's outputs), {out / hpo.STUDY_FILE}, "
          f"{out / hpo.REPORT_FILE}, and the best trial's {out / 'hf_model'} and {out / 'pretrain_config.json'}")
    for note in notes:
        print(f"# note: {note}")
    print("# dry run: every start-up check passed; nothing was written")
    return 0


def _search(cfg: PretrainConfig) -> int:
    from ort_training.tasks import hpo

    _check_one_process()
    check_output_folder(cfg)  # before the lock file is made: a refused search writes nothing
    lock = RunLock(cfg.output_dir, SEARCH_LOCK)
    lock.acquire()
    try:
        check_output_folder(cfg)
        if _early_sigterm:
            logging.getLogger(__name__).warning("SIGTERM during start-up: no trial started, exiting %d", PREEMPTED_EXIT_CODE)
            return PREEMPTED_EXIT_CODE
        result = hpo.search(cfg, hpo.PRETRAIN)
    except InterruptedError as exc:  # a trial preempted: the study is kept, a rerun of the same command continues it
        logging.getLogger(__name__).warning("%s", exc)
        return PREEMPTED_EXIT_CODE
    finally:
        lock.release()
    print(json.dumps(result), flush=True)  # the last line of stdout, as a single run's summary
    return 0


def run_trial(cfg: PretrainConfig, report) -> dict:
    """One trial of a search (tasks/hpo.PRETRAIN): a whole run of this phase in cfg.output_dir, its settings in
    pretrain_config.json there. Each held-out evaluation (every --eval_every steps) goes to `report(step, loss)`;
    True stops the trial there (pruned: no export). Early stopping works as in a single run. Returns the lowest
    held-out loss of the evaluations and of the end-of-phase evaluation (the exported weights'), with its step;
    NonFiniteError propagates (the study records the trial as failed)."""
    from bundle.atomic import atomic_write_text
    from ort_training.loop.trainer import Trainer

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "pretrain_config.json", json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    trainer = Trainer(cfg)
    key = f"eval_{trainer.objective.eval_loss}"
    evals: list[tuple[float, int]] = []

    class Pruned(Exception):
        pass

    def hook(tr, record):
        # last_record is the step's record only when it was logged this step; an evaluation step always is
        if tr.periodic_eval is not None and tr.periodic_eval.due(tr.phase_step) and record.get("step") == tr.global_step:
            evals.append((record[key], record["step"]))
            if report(record["step"], record[key]):
                raise Pruned(record["step"])

    trainer.hooks.append(hook)
    try:
        summary = trainer.train()
    except Pruned as stop:
        logging.getLogger(__name__).info("trial pruned at step %s: %s %.4f", stop.args[0], key, evals[-1][0])
        return {"pruned": True, "pruned_at": stop.args[0]}
    finally:
        trainer.close()
    if summary.get("preempted"):
        return summary
    if key in summary:  # the end-of-phase evaluation: the exported weights
        evals.append((summary[key], summary["global_step"]))
    value, step = min(evals)
    return {"value": value, "best_step": step,
            "attrs": {"final_" + key: summary.get(key), "global_step": summary["global_step"],
                      "finished_early": trainer.finished_early, "evaluations": len(evals)}}


if __name__ == "__main__":
    status = main()
    # The outcome is decided: a SIGTERM during interpreter teardown (Python resets its handlers to the
    # default there) must not turn a finished run's status into a kill.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(status)
