"""Hyperparameter search with optuna, shared by fine-tuning (`python -m ort_training.finetune ... --hpo_trials N`)
and pretraining (`python -m ort_training.run_pretraining ... --hpo_trials N`).

The study driver (`search`) is one: storage, resume, sampler seeding, pruner, report, best-trial copy. Each entry
point hands it a `Searcher` (FINETUNE, PRETRAIN below): the space's DOMAIN (what a value may be, checked by the
config class whose checks every corner of a space goes through), the default space, the objective's name and
direction, the trial runner, and what is copied up from the best trial.

- objective: fine-tuning, the validation metric the run early-stops on (finetune.validation_metric: macro-F1 /
  micro-F1 maximised, RMSE minimised, entity F1 maximised for token_classification), the best evaluation of each
  trial (the weights it keeps); pretraining, the lowest held-out loss `eval_<objective's eval_loss>` of each trial
  (every --eval_every steps and at its end), minimised. Named and given its direction explicitly, never a sum of
  metrics (transformers' `hyperparameter_search` without `compute_objective` minimises precision + recall + F1 +
  ..., keeping the worst trial);
- space: the searcher's default space, or the `hpo` section of a YAML file (`--hpo_space`):
  `name: {low, high[, log][, step]}` or `name: {choices: [...]}`;
- pruning: every evaluation (fine-tuning: validation; pretraining: held-out) is reported to optuna's MedianPruner; a
  pruned trial stops there (no export);
- a trial whose loss or weights became NaN/inf (loop.trainer.NonFiniteError) is recorded FAILED with its reason
  (user attribute `failed`) and counts as run; the search goes on;
- storage: OUTPUT_DIR/hpo.sqlite3. A killed search rerun with the same command continues the study: the
  finished trials are kept, a trial that was running is marked failed and its parameters are run again
  (as a new trial), and the sampler is seeded by (--seed, trials so far) so it does not repeat itself;
- each trial in OUTPUT_DIR/trials/trial-NNN (a whole run: checkpoints, metrics, export, reports); the best trial's
  hf_model/ and its run's config (finetune_config.json / pretrain_config.json) are copied to OUTPUT_DIR, and
  OUTPUT_DIR/hpo_report.json gives the objective, the best trial's parameters and figures, and every trial.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Callable

from bundle.atomic import atomic_dir, atomic_write_text
from ort_training.errors import UsageError, one_line

logger = logging.getLogger(__name__)

STUDY_FILE = "hpo.sqlite3"
STUDY_NAME = "finetune"
REPORT_FILE = "hpo_report.json"
TRIALS_DIR = "trials"
PRUNER_STARTUP_TRIALS = 2
"""Trials run to the end before the median pruner may stop one (it needs others' curves to compare with)."""
GRID_LIMIT = 512
"""Integer ranges of batch size and accumulation with at most this many values are checked value by value."""
DEFAULT_SPACE: dict[str, dict] = {
    "learning_rate": {"low": 1e-5, "high": 1e-3, "log": True},
    "train_batch_size": {"choices": [16, 32]},
    "warmup_proportion": {"low": 0.0, "high": 0.2},
    # > 0 turns the trainer's optimizer from Adam into LAMB (see FinetuneConfig.weight_decay)
    "weight_decay": {"choices": [0.0, 0.01]},
    "num_train_epochs": {"low": 1, "high": 4, "step": 1},
}
SEARCHABLE = ("learning_rate", "train_batch_size", "warmup_proportion", "weight_decay", "num_train_epochs", "dropout",
              "gradient_accumulation_steps", "max_steps")


DOMAIN: dict[str, tuple[str, float, float | None, bool]] = {
    # name: (type, lowest allowed, highest allowed (None: unbounded), whether the lowest is excluded)
    "learning_rate": ("float", 0.0, None, True),
    "train_batch_size": ("int", 1, None, False),
    "warmup_proportion": ("float", 0.0, 1.0, False),
    "weight_decay": ("float", 0.0, None, False),
    "num_train_epochs": ("float", 0.0, None, True),
    "dropout": ("float", 0.0, 1.0, False),
    "gradient_accumulation_steps": ("int", 1, None, False),
    "max_steps": ("int", 1, None, False),
}
"""What each searchable value may be, as FinetuneConfig checks the flag (a range's both ends and every choice are
checked against it; a high bound of 1.0 is excluded, as for --warmup_proportion and --dropout)."""

PRETRAIN_DOMAIN: dict[str, tuple[str, float, float | None, bool]] = {
    name: DOMAIN[name] for name in ("learning_rate", "train_batch_size", "gradient_accumulation_steps", "warmup_proportion",
                                    "weight_decay", "max_steps")}
"""What a pretraining search may vary, as PretrainConfig checks the flag (train_batch_size divisible by
gradient_accumulation_steps: checked on the space's values by PretrainConfig itself, `_check_corners`)."""
PRETRAIN_SPACE: dict[str, dict] = {
    # fms-ehrs (03_tune_llama_with_packing.py): TPE over learning rate 5e-5..5e-4 (log), per-device batch {4, 8, 16},
    # accumulation 1..3. Here train_batch_size counts the sequences of one optimizer step per rank (micro-batch x
    # accumulation) and must be divisible by every accumulation the space offers: 12, 24, 48 give micro-batches 4..48.
    "learning_rate": {"low": 5e-5, "high": 5e-4, "log": True},
    "train_batch_size": {"choices": [12, 24, 48]},
    "gradient_accumulation_steps": {"low": 1, "high": 3, "step": 1},
}


@dataclasses.dataclass(frozen=True)
class Searcher:
    """What an entry point hands the study driver."""

    study_name: str
    domain: dict
    """Searchable names and what each may be; every corner of a space also goes through the run's config class
    (`dataclasses.replace(cfg, ...)`: FinetuneConfig / PretrainConfig's own checks)."""
    default_space: dict
    objective: Callable
    """objective(cfg) -> (metric name, "maximize" | "minimize", description for the study and report)."""
    run_trial: Callable
    """run_trial(trial_cfg, report) -> {"value", "best_step", "attrs": {...}} | {"pruned": True} | {"preempted": True};
    report(step, value) -> True when the trial should stop (pruned)."""
    copy_up: tuple[str, ...]
    """Files of the best trial copied to OUTPUT_DIR beside its hf_model/ (the run's config)."""
    result_key: str
    """The key of the objective's value in what `search` returns (finetune.main prints `validation`)."""
    evaluation: str
    """What the pruner is fed, for the report."""
    trial_overrides: dict = dataclasses.field(default_factory=dict)
    """Settings every trial's config takes (besides output_dir, hpo_trials, hpo_space, resume_from_checkpoint)."""


def _finetune_objective(cfg):
    from ort_training.tasks.finetuning import validation_metric

    metric, higher_is_better = validation_metric(cfg)
    direction = "maximize" if higher_is_better else "minimize"
    return metric, direction, {"metric": metric, "direction": direction, "split": "validation",
                               "of": "each trial's best evaluation (the weights early stopping keeps)"}


def _finetune_trial(tcfg, report) -> dict:
    from ort_training.tasks.finetuning import validation_metric
    from ort_training.tasks.runner import run

    result = run(tcfg, on_evaluation=report)
    if result.get("preempted") or result["pruned"]:
        return result
    return {"value": result["validation"][validation_metric(tcfg)[0]], "best_step": result["best_step"],
            "attrs": {"test": result.get("test")}}


def _pretrain_objective(cfg):
    from ort_training.objectives import get_objective

    metric = f"eval_{get_objective(cfg.objective).eval_loss}"
    return metric, "minimize", {"metric": metric, "direction": "minimize", "split": f"held-out (--eval_dir {cfg.eval_dir})",
                                "of": "each trial's lowest held-out loss (every --eval_every steps and at the end of its phase)"}


def _pretrain_trial(tcfg, report) -> dict:
    from ort_training.run_pretraining import run_trial

    return run_trial(tcfg, report)


FINETUNE = Searcher(STUDY_NAME, DOMAIN, DEFAULT_SPACE, _finetune_objective, _finetune_trial, ("finetune_config.json",),
                    "validation", "every validation evaluation")
PRETRAIN = Searcher("pretrain", PRETRAIN_DOMAIN, PRETRAIN_SPACE, _pretrain_objective, _pretrain_trial, ("pretrain_config.json",),
                    "held_out", "every held-out evaluation (--eval_every)",
                    # one TensorBoard folder and one summary file per trial (OUTPUT_DIR/trials/trial-NNN/...)
                    {"json_summary": None, "log_dir": None})


def check_search_settings(cfg) -> None:
    """PretrainConfig's checks of --hpo_trials / --hpo_space (config.py calls this from __post_init__): the flags a
    search needs, then the space and every corner of it through PretrainConfig, before OUTPUT_DIR is made."""
    if cfg.hpo_trials < 0:
        raise UsageError(f"--hpo_trials must be >= 0, got {cfg.hpo_trials}")
    if not cfg.hpo_trials:
        raise UsageError("--hpo_space without --hpo_trials N: say how many trials to run")
    if cfg.hpo_space and not Path(cfg.hpo_space).is_file():
        raise UsageError(f"--hpo_space {cfg.hpo_space}: no such file")
    if not (cfg.eval_dir and cfg.eval_every):
        raise UsageError(f"--hpo_trials {cfg.hpo_trials} needs --eval_dir and --eval_every N: each trial is judged (and pruned) "
                         "on its held-out loss")
    if cfg.resume_from_checkpoint:
        raise UsageError(f"--hpo_trials {cfg.hpo_trials} with --resume_from_checkpoint: a search continues when the same command "
                         "is run again (its study is OUTPUT_DIR/hpo.sqlite3); drop --resume_from_checkpoint")
    from ort_training.objectives import get_objective

    if get_objective(cfg.objective).eval_loss is None:
        raise UsageError(f"--hpo_trials: --objective {cfg.objective} has no held-out loss to search on")
    load_space(cfg.hpo_space, cfg=cfg, searcher=PRETRAIN)


def load_space(path: str | None, max_steps: int | None = None, cfg=None, searcher: Searcher = FINETUNE) -> dict[str, dict]:
    """The search space: the searcher's default, or the YAML file's `hpo` section (else the whole file), checked
    (`check_space`; with `cfg`, every corner of the space against the run's other settings too).
    Fine-tuning with --max_steps: the run's length is fixed, so the default space leaves out num_train_epochs and a
    file that searches it is refused (its trials would differ only in a value nothing reads)."""
    if not path:
        name = "DEFAULT_SPACE" if searcher is FINETUNE else "PRETRAIN_SPACE"
        space = check_space(searcher.default_space, f"ort_training.tasks.hpo.{name}", cfg, searcher.domain)
        if max_steps is not None and "num_train_epochs" in space:
            logger.info("--max_steps %d fixes each trial's length: the search leaves num_train_epochs out", max_steps)
            space.pop("num_train_epochs", None)
        return space
    import yaml

    where = f"--hpo_space {path}"
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UsageError(f"{where}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{where}: cannot be read ({exc})") from None
    space = data.get("hpo", data) if isinstance(data, dict) else None
    if not isinstance(space, dict) or not space:
        raise UsageError(f"{where}: expected a mapping (an 'hpo' section) of parameter: {{low, high}} or {{choices: [...]}}")
    if "num_train_epochs" in space and (max_steps is not None or "max_steps" in space):
        fixed = f"--max_steps {max_steps}" if max_steps is not None else "its max_steps"
        raise UsageError(f"{where}: num_train_epochs is searched but {fixed} sets each trial's length, so epochs are never read; "
                         "search one of them")
    return check_space(space, where, cfg, searcher.domain)


def _number(where: str, name: str, key: str, value, kind: str) -> float:
    """A YAML value as a finite number (YAML 1.1 reads 1e-5, without a dot, as a string); ints for int parameters."""
    if isinstance(value, bool):
        raise UsageError(f"{where}: {name}: {key} must be a number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{where}: {name}: {key} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise UsageError(f"{where}: {name}: {key} must be finite, got {value!r}")
    if kind == "int" and not x.is_integer():
        raise UsageError(f"{where}: {name}: {key} must be a whole number ({name} is an integer setting), got {value!r}")
    return x


def _in_domain(where: str, name: str, key: str, x: float, domain: dict = DOMAIN) -> None:
    _, low, high, open_low = domain[name]
    if (x <= low if open_low else x < low) or (high is not None and x >= high):
        allowed = f"{'>' if open_low else '>='} {low:g}" + (f" and < {high:g}" if high is not None else "")
        raise UsageError(f"{where}: {name}: {key} {x:g} is out of range; {name} must be {allowed}")


def check_space(space: dict, where: str, cfg=None, domain: dict = DOMAIN) -> dict[str, dict]:
    """The one checker of a search space, before OUTPUT_DIR or the study exist: every range as {low, high, log[, step]}
    with finite numbers inside the parameter's `domain`, low < high, log only with low > 0 and never with step, a step
    > 0 that fits the range; every list as {choices} of values in the domain. With `cfg` (the run's FinetuneConfig or
    PretrainConfig) each corner of the space (lowest, highest, every choice) is also put through the config's own
    checks with the run's other flags, so a trial is never refused for a value the space gives it (a batch size that
    --gradient_accumulation_steps does not divide, ...). Every error names `where` and the parameter."""
    out = {}
    for name, spec in space.items():
        if name not in domain:
            raise UsageError(f"{where}: {name!r} cannot be searched; choose among {', '.join(domain)}")
        kind = domain[name][0]
        if not isinstance(spec, dict) or not ("choices" in spec or {"low", "high"} <= set(spec)):
            raise UsageError(f"{where}: {name}: give {{low: .., high: ..}} (optional log: true, step: ..) or {{choices: [..]}}")
        unknown = sorted(set(spec) - ({"choices"} if "choices" in spec else {"low", "high", "log", "step"}))
        if unknown:
            raise UsageError(f"{where}: {name}: unknown key(s) {unknown}; a range has low, high, log, step; a list has choices only")
        if "choices" in spec:
            if not isinstance(spec["choices"], list) or not spec["choices"]:
                raise UsageError(f"{where}: {name}: choices must be a non-empty list")
            values = [_number(where, name, "choice", v, kind) for v in spec["choices"]]
            for x in values:
                _in_domain(where, name, "choice", x, domain)
            if len(set(values)) != len(values):
                raise UsageError(f"{where}: {name}: choices repeat a value ({spec['choices']})")
            out[name] = {"choices": [int(x) if kind == "int" else x for x in values]}
            continue
        low = _number(where, name, "low", spec["low"], kind)
        high = _number(where, name, "high", spec["high"], kind)
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise UsageError(f"{where}: {name}: log must be true or false, got {log!r}")
        if not low < high:
            raise UsageError(f"{where}: {name}: need low < high, got low {low:g}, high {high:g}")
        if log and low <= 0:
            raise UsageError(f"{where}: {name}: log: true needs low > 0, got {low:g}")
        _in_domain(where, name, "low", low, domain)
        _in_domain(where, name, "high", high, domain)
        step = None
        if spec.get("step") is not None:
            if log:
                raise UsageError(f"{where}: {name}: log: true and step exclude each other (optuna samples either on a log scale "
                                 "or on a grid); drop one")
            step = _number(where, name, "step", spec["step"], kind)
            if not 0 < step <= high - low:
                raise UsageError(f"{where}: {name}: step {step:g} must be > 0 and at most high - low ({high - low:g})")
        out[name] = {"low": low, "high": high, "log": log, **({"step": step} if step is not None else {})}
    if cfg is not None:
        _check_corners(out, where, cfg, domain)
    return out


def _check_corners(space: dict[str, dict], where: str, cfg, domain: dict = DOMAIN) -> None:
    """Each parameter's extreme values and choices (the others at the run's flags) through the run's config checks,
    and every batch size against every accumulation the space offers (an integer range value by value: 9 with
    accumulation 1..3 passes at both ends and fails at 2); an error names the space and the value."""
    def values(name, grid=False):
        spec = space.get(name)
        if spec is None:
            return [getattr(cfg, name)]
        if "choices" in spec:
            vals = spec["choices"]
        elif grid and domain[name][0] == "int" and (spec["high"] - spec["low"]) / spec.get("step", 1) < GRID_LIMIT:
            # what optuna's suggest_int can return: low, low + step, ... (a log range: every integer in it)
            vals = range(int(spec["low"]), int(spec["high"]) + 1, 1 if spec["log"] else int(spec.get("step", 1)))
        else:
            vals = [spec["low"], spec["high"]]
        return [int(v) if domain[name][0] == "int" else v for v in vals]

    batch = ("train_batch_size", "gradient_accumulation_steps")
    probes = [{name: v} for name in space if name not in batch for v in values(name)]
    if any(name in space for name in batch):
        # the batch and its accumulation together: first every pair the space can give (arithmetic: the first pair that
        # does not divide goes through the config for its message), then each value beside a partner from the space
        sizes, accs = values(batch[0], grid=True), values(batch[1], grid=True)
        bad = next(({batch[0]: b, batch[1]: a} for b in sizes for a in accs if b % a), None)
        probes += ([bad] if bad else []) + [{batch[0]: b, batch[1]: accs[0]} for b in values(batch[0])] + \
            [{batch[0]: sizes[0], batch[1]: a} for a in values(batch[1])]
    for params in probes:
        try:
            dataclasses.replace(cfg, hpo_trials=0, hpo_space=None, **params)
        except ValueError as exc:
            shown = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items())
            raise UsageError(f"{where}: a trial with {shown} would be refused ({exc}); narrow the space") from None


def suggest(trial, space: dict[str, dict], cfg) -> dict:
    """The trial's values, typed as the config's fields (ints stay ints)."""
    types = {f.name: f.type for f in dataclasses.fields(cfg)}
    params = {}
    for name, spec in space.items():
        if "choices" in spec:
            params[name] = trial.suggest_categorical(name, spec["choices"])
        elif "int" in str(types[name]):
            params[name] = trial.suggest_int(name, int(spec["low"]), int(spec["high"]), step=int(spec.get("step", 1)), log=spec["log"])
        else:
            params[name] = trial.suggest_float(name, spec["low"], spec["high"], step=spec.get("step"), log=spec["log"])
    return params


def study_url(out: Path) -> str:
    """The sqlite URL of OUTPUT_DIR/hpo.sqlite3, built by sqlalchemy (the library optuna parses it with), so an
    output folder named `run?x=1` or `a#b` stays a file name: string concatenation made `?x=1` a query and put the
    study elsewhere."""
    from sqlalchemy.engine import URL, make_url

    path = str((out / STUDY_FILE).resolve())
    url = URL.create("sqlite", database=path)
    rendered = url.render_as_string(hide_password=False)
    if make_url(rendered).database != path:  # the URL must name exactly this file
        raise UsageError(f"--output_dir {out}: its path cannot be written as an sqlite URL that names {path}; choose another folder")
    return rendered


# ----------------------------------------------------------------------------- the output folder
def search_files(out: Path) -> list[Path]:
    """What shows that a folder holds a search (its report or its study)."""
    return [out / f for f in (REPORT_FILE, STUDY_FILE) if (out / f).exists()]


def study_names(out: Path) -> list[str]:
    """The studies in OUTPUT_DIR/hpo.sqlite3, read without writing (sqlite read-only; optuna's storage would create or
    upgrade its tables), so a dry run can say what the folder holds."""
    import sqlite3

    path = out / STUDY_FILE
    if not path.is_file():
        return []
    try:
        with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True) as db:
            return sorted(row[0] for row in db.execute("SELECT study_name FROM studies"))
    except sqlite3.Error:  # killed before optuna made its tables
        return []


def check_output_folder(out: Path, searching: bool, single_run: str | None, what: str, study: str | None = None) -> None:
    """Fine-tuning's rule for both entry points: a finished run's output belongs to that run. A single run never writes
    into a search's folder (it would replace the search's best hf_model/ and leave hpo_report.json describing another
    model), and a search never into a single run's folder (`single_run`: the file or folder that shows one is there,
    None when there is none), nor into another kind's search (`study`: this search's study name). `what` names the
    single run ("fine-tuning", "pretraining"). Refused before anything is written, naming the folder and the file
    that shows whose it is."""
    from bundle.locking import file_in_the_way

    if problem := file_in_the_way(out):
        raise UsageError(problem)
    found = search_files(out)
    if not searching and found:
        raise UsageError(f"--output_dir {out}: holds a hyperparameter search ({found[0].name}); its hf_model/ is the "
                         f"search's best trial and a single {what} run would replace it. Use another --output_dir (or rerun the "
                         "search with its --hpo_trials)")
    if searching and not found and single_run:
        raise UsageError(f"--output_dir {out}: holds a single {what} run ({single_run}); a search would replace its hf_model/. "
                         "Use another --output_dir")
    others = [name for name in study_names(out) if name != study] if searching and study else []
    if others:
        raise UsageError(f"--output_dir {out}: {STUDY_FILE} holds a {others[0]!r} search, not a {study!r} one; use another "
                         "--output_dir")


def check_inputs_apart(out: Path, inputs: dict[str, str | None], searching: bool = True) -> None:
    """A search never writes over what it reads: OUTPUT_DIR must not be, or lie inside, an input (`--flag: path`),
    and no input may be, or lie inside, what the search writes (trials/, hf_model/, the study, the report and the
    copied config). Paths are compared after realpath (a symbolic link is what it points at)."""
    def real(p) -> Path:
        return Path(os.path.realpath(p))

    root = real(out)
    written = [root / TRIALS_DIR, root / "hf_model", root / STUDY_FILE, root / REPORT_FILE,
               *(root / name for s in (FINETUNE, PRETRAIN) for name in s.copy_up)]
    for flag, value in inputs.items():
        if not value or not Path(value).exists():
            continue
        path = real(value)
        if root == path or path in root.parents:
            raise UsageError(f"--output_dir {out}: is or lies inside --{flag} {value}; "
                             f"{'a search writes its trials' if searching else 'the run writes its checkpoints and model'} there. "
                             "Use an --output_dir outside the inputs")
        if not searching:  # a single run's outputs are checked by the trainer (a resume reads its own checkpoints)
            continue
        hit = next((w for w in written if w == path or w in path.parents), None)
        if hit is not None:
            raise UsageError(f"--{flag} {value}: lies in {hit}, which the search in --output_dir {out} writes; move the input "
                             "or use another --output_dir")


# ----------------------------------------------------------------------------- the study
def _trial_row(t) -> dict:
    return {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
            **{k: t.user_attrs[k] for k in ("output_dir", "best_step", "redo_of", "interrupted", "failed", "pruned_at")
               if k in t.user_attrs}}


def _failures() -> tuple[type[BaseException], ...]:
    """What ends a trial as FAILED (recorded with its reason) instead of ending the search: NaN/inf loss or weights."""
    from ort_training.loop.trainer import NonFiniteError

    return (NonFiniteError,)


def search(cfg, searcher: Searcher = FINETUNE) -> dict:
    """Run (or continue) the study; returns the best trial's summary (see the module doc). The caller
    (finetune.main, run_pretraining.main) holds OUTPUT_DIR's run lock and has checked the folder."""
    import optuna

    # optuna's lines go through the entry point's logging (one format, one stream) instead of a handler optuna binds
    # to whatever sys.stderr was at its first message
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    out = Path(cfg.output_dir)
    # fine-tuning's --max_steps (None: epochs) decides whether num_train_epochs is searched; pretraining has no epochs
    space = load_space(cfg.hpo_space, cfg.max_steps if "num_train_epochs" in searcher.domain else None, searcher=searcher)
    metric, direction, objective_desc = searcher.objective(cfg)
    out.mkdir(parents=True, exist_ok=True)
    storage = study_url(out)
    study = None
    if (out / STUDY_FILE).is_file():
        check_output_folder(out, True, None, "", searcher.study_name)
        try:
            study = optuna.load_study(study_name=searcher.study_name, storage=storage)
        except KeyError:  # killed between creating the file and the study
            study = None
    if study is not None:
        saved = study.user_attrs.get("objective"), study.user_attrs.get("space")
        if saved != (objective_desc, space):
            raise UsageError(f"{out / STUDY_FILE}: a study of {saved[0]} over {saved[1]} is there; this run's objective or "
                             "--hpo_space differs. Rerun with the same settings, or use a new --output_dir")
    redo = _take_back_interrupted(study) if study is not None else []
    so_far = len(study.trials) if study is not None else 0
    study = optuna.create_study(
        study_name=searcher.study_name, storage=storage, load_if_exists=True, direction=direction,
        sampler=optuna.samplers.TPESampler(seed=cfg.seed + so_far),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=0))
    study.set_user_attr("objective", objective_desc)
    study.set_user_attr("space", space)
    for t in redo:
        study.enqueue_trial(t.params, user_attrs={"redo_of": t.number})
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    finished = [t for t in study.trials if t.state in done or "failed" in t.user_attrs]
    todo = max(0, cfg.hpo_trials - len(finished))
    logger.info("hyperparameter search: %s of %s %s; %d trials finished, %d to run (study %s)",
                direction, objective_desc["split"], metric, len(finished), todo, out / STUDY_FILE)
    failures = _failures()

    def objective(trial):
        params = suggest(trial, space, cfg)
        folder = out / TRIALS_DIR / f"trial-{trial.number:03d}"
        trial.set_user_attr("output_dir", str(folder))
        logger.info("trial %d: %s", trial.number, params)
        tcfg = dataclasses.replace(cfg, output_dir=str(folder), hpo_trials=0, hpo_space=None, resume_from_checkpoint=False,
                                   **searcher.trial_overrides, **params)

        def report(step: int, value: float) -> bool:
            trial.report(value, step)
            return trial.should_prune()

        try:
            result = searcher.run_trial(tcfg, report)
        except failures as exc:  # recorded, and the search goes on (optimize's catch marks the trial FAILED)
            trial.set_user_attr("failed", one_line(exc))
            logger.warning("trial %d failed: %s", trial.number, one_line(exc))
            raise
        if result.get("preempted"):
            trial.set_user_attr("interrupted", True)
            raise InterruptedError(f"trial {trial.number} was preempted; rerun the same command to continue the search")
        if result.get("pruned"):
            if result.get("pruned_at") is not None:
                trial.set_user_attr("pruned_at", result["pruned_at"])
            raise optuna.TrialPruned()
        trial.set_user_attr("best_step", result["best_step"])
        for key, value in result.get("attrs", {}).items():
            trial.set_user_attr(key, value)
        return result["value"]

    if todo:
        study.optimize(objective, n_trials=todo, catch=failures)
    return write_report(cfg, study, space, objective_desc, searcher)


def _take_back_interrupted(study) -> list:
    """Trials a killed search left RUNNING (or a preempted one left FAIL, marked interrupted) and not yet rerun:
    marked FAIL (with the interrupted mark) and returned, so their parameters are run again."""
    from optuna.trial import TrialState

    rerun = {t.user_attrs.get("redo_of") for t in study.trials}
    back = []
    for t in study.trials:
        if t.state == TrialState.RUNNING:
            # optuna has no public call to close a trial of a dead process; its storage API does it.
            study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            back.append(t)
        elif t.state == TrialState.FAIL and t.user_attrs.get("interrupted") and t.number not in rerun:
            back.append(t)
    if back:
        logger.info("trials %s were interrupted: marked failed, their parameters queued again", [t.number for t in back])
    return back


def write_report(cfg, study, space: dict, objective_desc: dict, searcher: Searcher = FINETUNE) -> dict:
    import optuna

    out = Path(cfg.output_dir)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise UsageError(f"{out / STUDY_FILE}: no trial finished (all pruned or failed); see {out / TRIALS_DIR}")
    best = study.best_trial
    src = Path(best.user_attrs["output_dir"])
    with atomic_dir(out / "hf_model") as tmp:
        shutil.copytree(src / "hf_model", tmp, dirs_exist_ok=True)
    for name in searcher.copy_up:  # ort_training.predict reads finetune_config.json beside hf_model/
        shutil.copyfile(src / name, out / name)
    attrs = {k: v for k, v in best.user_attrs.items() if k not in ("output_dir", "best_step", "redo_of", "interrupted")}
    report = {"objective": objective_desc, "trials_requested": cfg.hpo_trials, "study": str(out / STUDY_FILE),
              "sampler": "TPESampler", "pruner": f"MedianPruner(n_startup_trials={PRUNER_STARTUP_TRIALS}) on {searcher.evaluation}",
              "space": space,
              "best_trial": {"number": best.number, "value": best.value, "params": best.params, "output_dir": str(src),
                             "best_step": best.user_attrs.get("best_step"), **({"test": None} if searcher is FINETUNE else {}),
                             **attrs},
              "hf_model": str(out / "hf_model"),
              "counts": {s.name: sum(t.state == s for t in study.trials) for s in optuna.trial.TrialState},
              "trials": [_trial_row(t) for t in study.trials]}
    atomic_write_text(out / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    logger.info("best trial %d: %s %s %.4f with %s", best.number, objective_desc["split"], objective_desc["metric"], best.value,
                best.params)
    return {"hpo": str(out / REPORT_FILE), "best_trial": best.number, "params": best.params,
            searcher.result_key: {objective_desc["metric"]: best.value}, **attrs, "hf_model": str(out / "hf_model")}
