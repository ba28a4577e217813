"""Entry point: `python -m ort_training.run_pretraining` / `bert-pretrain` (NVIDIA-compatible flags)."""

from __future__ import annotations

import signal
import sys

# SIGTERM is caught before torch is imported: a preemption that lands during start-up still ends with
# the exit-143 contract (nothing new to checkpoint yet) instead of Python's default kill.
_early_sigterm: list[int] = []
if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda signum, frame: _early_sigterm.append(signum))

import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402

from bundle.cli import parse_into  # noqa: E402
from bundle.locking import RunLock  # noqa: E402
from ort_training.config import PretrainConfig, build_parser, merge_settings, read_yaml  # noqa: E402
from ort_training.errors import exit_on_expected  # noqa: E402
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
    return exit_on_expected(PROG, lambda: _dry_run(cfg) if dry_run else _run(cfg, rank))


def _dry_run(cfg: PretrainConfig) -> int:
    """The run's start-up refusals (ort_training/checks.py: the ones Trainer makes, the same code), then the plan."""
    from ort_training.checks import check_unlocked, device_type, preflight

    check_unlocked(cfg.output_dir, "training")
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
    lock = RunLock(cfg.output_dir, "training") if rank == 0 else None  # one run per output dir (rank 0 holds it)
    if lock is not None:
        lock.acquire()
    try:
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


if __name__ == "__main__":
    status = main()
    # The outcome is decided: a SIGTERM during interpreter teardown (Python resets its handlers to the
    # default there) must not turn a finished run's status into a kill.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(status)
