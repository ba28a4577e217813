"""Both phases of a recipe: `python -m ort_training.pretrain --recipe NAME [overrides] [--dry-run]`.

    python -m ort_training.pretrain --recipe bert_large_biobert --output_dir results \\
        --phase1.input_dir data/hdf5_seq128 --phase2.input_dir data/hdf5_seq512 --vocab_file vocab.txt
    python -m ort_training.pretrain --recipe tiny_cpu ... --phase1.max_steps 10 --dry-run

Overrides: `--FLAG V` applies to both phases, `--phase1.FLAG V` / `--phase2.FLAG V` to one (any flag of
`python -m ort_training.run_pretraining`). This module owns the two-phase contract: phase 2 runs only
after phase 1 finished; a phase stopped by SIGTERM has checkpointed and this exits 143 (rerun the same
command to continue); a finished phase is skipped on a rerun; `--dry-run` checks both phases with the
trainer's own config classes and prints the two commands without running anything.

`--dry-run` plans as well as checks: data folders that do not exist yet are allowed (their checks are
skipped, and it says so), a missing --init_checkpoint or --vocab_file is refused, each phase's batch split
is printed, and `--corpus_tokens N` (or `--corpus_documents N --tokens_per_document M`) adds a sizing
estimate: shards, instances, disk and epochs per phase (ort_training/sizing.py).

    python -m ort_training.pretrain --recipe bert_large_biobert --phase1.input_dir data/p1 \
        --phase2.input_dir data/p2 --dry-run --corpus_documents 2000000 --tokens_per_document 1500
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from bundle.cli import add_arguments, from_dict, nest
from ort_training.config import PretrainConfig
from ort_training.recipe import PHASES, BatchConfig, LaunchConfig, check_init_checkpoint, load_recipe, phase_command, phase_configs, quote
from ort_training.run_status import PREEMPTED_EXIT_CODE, PREEMPTED_MARKER, phase_finished
from ort_training.errors import UsageError, exit_on_expected
from ort_training.sizing import TOKENS_PER_DOCUMENT, CorpusSize, default_max_predictions, phase_size, recommended_shards

logger = logging.getLogger("ort_training.pretrain")



class _RecipeDefaults:
    """--help shows no dataclass default for an override: an unset flag takes the recipe's value (then the
    trainer's default), which `--recipe R --dry-run` prints."""

    def __getattr__(self, name: str) -> None:
        return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ort_training.pretrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True, help="A shipped recipe (ort_training/recipes/NAME.yaml) or a YAML path.")
    parser.add_argument("--dry-run", action="store_true", help="Check both phases and print their batch split and commands; "
                        "run nothing. Data folders may not exist yet (their checks are skipped, with a note).")
    sizing = parser.add_argument_group("sizing estimate (with --dry-run)")
    add_arguments(sizing, CorpusSize)
    unset = _RecipeDefaults()
    launch = parser.add_argument_group("launch (unset: the recipe's launch: section)")
    add_arguments(launch, LaunchConfig, defaults=unset)
    both = parser.add_argument_group("both phases, any trainer flag (unset: the recipe's value, else the trainer's default; "
                                     "--dry-run prints the resolved commands)")
    add_arguments(both, BatchConfig, defaults=unset)
    add_arguments(both, PretrainConfig, defaults=unset)
    for name in PHASES:
        group = parser.add_argument_group(f"{name} only (--{name}.FLAG)")
        add_arguments(group, BatchConfig, prefix=f"{name}.", defaults=unset)
        add_arguments(group, PretrainConfig, prefix=f"{name}.", defaults=unset)
    return parser


def resolve(argv: list[str] | None = None):
    """(recipe, launch, phase-1 config, phase-2 config, dry_run) from the command line; ValueError names the flag.
    Each phase's per-GPU batch and accumulation follow from its global batch and --nproc_per_node x --nnodes."""
    ns = vars(build_parser().parse_args(argv))
    recipe = load_recipe(ns.pop("recipe"))
    dry_run = ns.pop("dry_run")
    corpus = CorpusSize(**{k: ns.pop(k) for k in list(ns) if k in CorpusSize.__dataclass_fields__})
    launch_fields = set(LaunchConfig.__dataclass_fields__)
    launch_values = {**recipe.launch, **{k: ns.pop(k) for k in list(ns) if k in launch_fields}}
    try:
        launch = from_dict(LaunchConfig, launch_values, source=f"recipe {recipe.name} [launch]")
    except ValueError as exc:  # bundle.cli's unknown or mistyped setting: the user's recipe or flag
        raise UsageError(str(exc)) from None
    nested = nest(ns)
    per_phase = {name: nested.pop(name, {}) for name in PHASES}
    plans: list = []
    p1, p2 = phase_configs(recipe, nested, per_phase["phase1"], per_phase["phase2"], resume=launch.resume,
                           nproc_per_node=launch.nproc_per_node, nnodes=launch.nnodes, plans=plans)
    if p1.hpo_trials or p2.hpo_trials:  # a search is of one phase: phase 2 would start from no checkpoint at all
        raise UsageError("--hpo_trials searches one phase: run `python -m ort_training.run_pretraining ... --hpo_trials N` on "
                         "that phase's data, then pass the best trial's settings to this recipe")
    for plan in plans:
        if plan is not None and not dry_run:
            logger.info("%s", plan.describe())
    return recipe, launch, p1, p2, dry_run, plans, corpus


def check_devices(launch: LaunchConfig) -> None:
    """One clear message instead of one traceback per worker when the machine lacks the GPUs asked for."""
    if launch.device != "cuda":
        return
    import torch

    have = torch.cuda.device_count()
    if have < launch.nproc_per_node:
        raise UsageError(f"the recipe asks for {launch.nproc_per_node} GPU processes per node (--nproc_per_node) but this machine "
                         f"has {have} CUDA device(s); pass --nproc_per_node {max(have, 1)}" +
                         ("" if have else " --device cpu (or use a GPU machine)"))


def check_data(cfg: PretrainConfig, phase: str, dry_run: bool = False) -> str | None:
    """Refuse what is certainly wrong; in a dry run a data folder that does not exist yet is a note (returned), not an error."""
    from ort_training.data.hdf5 import list_hdf5_files

    for flag, value in (("init_checkpoint", cfg.init_checkpoint if phase == "phase1" else None), ("vocab_file", cfg.vocab_file)):
        if value and not Path(value).exists():
            raise ValueError(f"--{phase}.{flag} {value}: no such file or folder" if flag == "init_checkpoint" and phase == "phase1"
                             else f"--{flag} {value}: no such file or folder")
    if cfg.input_dir is None:
        if dry_run:
            return f"{phase}: no --{phase}.input_dir given: its data checks were skipped"
        raise UsageError(f"--{phase}.input_dir is required (the folder of that phase's HDF5 shards written by data_prep)")
    if dry_run and not Path(cfg.input_dir).exists():
        return (f"{phase}: {cfg.input_dir} does not exist yet: its data checks (files, sequence length, tokenizer) were skipped; "
                "they run when the phase starts")
    list_hdf5_files(cfg.input_dir, "training")
    return None


def sizing_lines(p1: PretrainConfig, p2: PretrainConfig, plans: list, launch: LaunchConfig, tokens: int,
                 tokens_per_document: int | None = None) -> list[str]:
    """The dry run's sizing estimate, one line per fact: per phase, NVIDIA's HDF5 (the objective's instances) and,
    for an MLM-only objective, the packed format too (ort_training/sizing.py says how each is estimated)."""
    ranks = launch.nproc_per_node * launch.nnodes
    lines = [f"corpus: {tokens:,} tokens; data_prep shard --num-shards {recommended_shards(tokens, ranks)} "
             f"(one per ~25M tokens, a multiple of the {ranks} GPU process(es)) and --processes up to the CPU cores"]
    if tokens_per_document is None:
        lines.append(f"documents assumed ~{TOKENS_PER_DOCUMENT} tokens long (PubMed abstracts; shorter documents make more "
                     "HDF5 instances per token): pass --tokens_per_document for yours")
    for name, cfg, plan in zip(PHASES, (p1, p2), plans):
        if cfg.max_seq_length is None:
            lines.append(f"{name}: no max_seq_length in the recipe: no estimate")
            continue
        global_batch = plan.global_batch_size if plan else cfg.train_batch_size * ranks
        max_pred = cfg.max_predictions_per_seq or default_max_predictions(cfg.max_seq_length)
        objective = "mlm" if cfg.objective == "mlm" else "nsp"
        formats = ("hdf5", "packed") if objective == "mlm" else ("hdf5",)
        for fmt in formats:
            lines.append(phase_size(name, tokens, cfg.max_seq_length, max_pred, global_batch, cfg.max_steps,
                                    tokens_per_document=tokens_per_document, objective=objective, fmt=fmt).describe())
    return lines


def child_env(launch: LaunchConfig) -> dict[str, str]:
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if launch.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def run_phase(cmd: list[str], log_file: Path | None, env: dict[str, str]) -> int:
    """Run one phase, its output to the console (and the log file); SIGTERM/SIGINT reach the trainer,
    which checkpoints and exits 143."""
    log = None
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_file, "a", encoding="utf-8")
        log.write(f"# {quote(cmd)}\n")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE if log else None, stderr=subprocess.STDOUT if log else None,
                            text=True, errors="replace")
    forward = lambda signum, frame: proc.send_signal(signum)  # noqa: E731
    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        if log is not None:
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)
            sys.stdout.flush()
        return proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if log is not None:
            log.close()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return exit_on_expected("pretrain", lambda: _run(argv))


def _run(argv: list[str] | None) -> int:
    try:  # settings and data checks: a ValueError here names the user's flag, recipe value or file
        recipe, launch, p1, p2, dry_run, plans, corpus = resolve(argv)
        tokens = corpus.tokens()
        if tokens is not None and not dry_run:
            raise UsageError("--corpus_tokens / --corpus_documents are for planning: add --dry-run")
        check_init_checkpoint(recipe, p1.init_checkpoint)
        from bundle.locking import file_in_the_way

        for cfg in (p1, p2):  # the runner writes OUTPUT/phaseN/train.log before the trainer could say it
            if problem := file_in_the_way(cfg.output_dir):
                raise UsageError(problem)
        notes = [check_data(p1, "phase1", dry_run), check_data(p2, "phase2", dry_run)]
    except ValueError as exc:
        raise exc if isinstance(exc, UsageError) else UsageError(str(exc)) from None
    if dry_run:
        # The trainer's own start-up refusals (ort_training/checks.py), for the device the phases would run on: a dry
        # run that passes is a run that starts. Data folders that do not exist yet are skipped (a note above).
        from ort_training.checks import preflight

        for cfg, note in ((p1, notes[0]), (p2, notes[1])):
            notes += preflight(cfg, launch.device, data=note is None)
    try:
        check_devices(launch)
    except UsageError as exc:
        if not dry_run:
            raise
        print(f"pretrain: warning: {exc}", file=sys.stderr)  # a dry run prints the commands for the machine they are meant for
    commands = [phase_command(cfg, launch) for cfg in (p1, p2)]
    if dry_run:
        print(f"# recipe {recipe.name}: {recipe.description}")
        for plan in plans:
            if plan is not None:
                print(f"# {plan.describe()}")
        for note in notes:
            if note:
                print(f"# note: {note}")
        if tokens is not None:
            for line in sizing_lines(p1, p2, plans, launch, tokens, corpus.tokens_per_document):
                print(f"# sizing: {line}")
        for name, cmd in zip(PHASES, commands):
            print(f"# {name}")
            print(quote(cmd))
        return 0
    logger.info("recipe %s: %s", recipe.name, recipe.description)
    env = child_env(launch)
    for name, cfg, cmd in zip(PHASES, (p1, p2), commands):
        out = Path(cfg.output_dir)
        if phase_finished(out, cfg):
            logger.info("%s already finished in %s: skipped", name, out)
            continue
        logger.info("%s: %s", name, quote(cmd))
        rc = run_phase(cmd, out / "train.log" if launch.log_to_file else None, env)
        # Under torchrun the launcher's status is its own; the trainer's marker says it was preempted.
        if rc == PREEMPTED_EXIT_CODE or (rc != 0 and (out / PREEMPTED_MARKER).is_file()):
            logger.warning("%s was preempted after writing a checkpoint; rerun the same command to continue it", name)
            return PREEMPTED_EXIT_CODE
        if rc != 0:
            logger.error("%s failed with exit status %d (log: %s)", name, rc, out / "train.log")
            return rc
        if not phase_finished(out, cfg):
            logger.error("%s exited 0 but %s lacks its summary or export; rerun the same command to complete it", name, out)
            return 1
    summary = json.loads((Path(p2.output_dir) / "summary.json").read_text())
    print(json.dumps({"phase1": str(p1.output_dir), "phase2": str(p2.output_dir), **summary}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
