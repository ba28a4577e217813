"""Hyperparameter search for fine-tuning with optuna: `python -m ort_training.finetune ... --hpo_trials N`.

- objective: the validation metric the run early-stops on (finetune.validation_metric: macro-F1 / micro-F1
  maximised, RMSE minimised, entity F1 maximised for token_classification), the best evaluation of each
  trial (the weights it keeps). Named and given its direction explicitly, never a sum of metrics
  (transformers' `hyperparameter_search` without `compute_objective` minimises precision + recall + F1 +
  ..., keeping the worst trial);
- space: learning rate, batch size, warm-up, weight decay, epochs (DEFAULT_SPACE) or the `hpo` section of
  a YAML file (`--hpo_space`): `name: {low, high[, log][, step]}` or `name: {choices: [...]}`;
- pruning: every validation evaluation is reported to optuna's MedianPruner through EarlyStopping's
  `on_evaluation`; a pruned trial stops there (no export);
- storage: OUTPUT_DIR/hpo.sqlite3. A killed search rerun with the same command continues the study: the
  finished trials are kept, a trial that was running is marked failed and its parameters are run again
  (as a new trial), and the sampler is seeded by (--seed, trials so far) so it does not repeat itself;
- each trial in OUTPUT_DIR/trials/trial-NNN (a whole fine-tuning run: checkpoints, validation record, export,
  test report); the best trial's hf_model/ and finetune_config.json are copied to OUTPUT_DIR, and
  OUTPUT_DIR/hpo_report.json gives the objective, the best trial's parameters and test figures, and every trial.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from pathlib import Path

from bundle.atomic import atomic_dir, atomic_write_text
from ort_training.errors import UsageError

logger = logging.getLogger(__name__)

STUDY_FILE = "hpo.sqlite3"
STUDY_NAME = "finetune"
REPORT_FILE = "hpo_report.json"
TRIALS_DIR = "trials"
PRUNER_STARTUP_TRIALS = 2
"""Trials run to the end before the median pruner may stop one (it needs others' curves to compare with)."""
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


def load_space(path: str | None, max_steps: int | None = None, cfg=None) -> dict[str, dict]:
    """The search space: DEFAULT_SPACE, or the YAML file's `hpo` section (else the whole file), checked
    (`check_space`; with `cfg`, every corner of the space against the run's other settings too).
    With --max_steps the run's length is fixed, so the default space leaves out num_train_epochs and a file
    that searches it is refused (its trials would differ only in a value nothing reads)."""
    if not path:
        space = check_space(DEFAULT_SPACE, "ort_training.tasks.hpo.DEFAULT_SPACE", cfg)
        if max_steps is not None:
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
    return check_space(space, where, cfg)


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


def _in_domain(where: str, name: str, key: str, x: float) -> None:
    _, low, high, open_low = DOMAIN[name]
    if (x <= low if open_low else x < low) or (high is not None and x >= high):
        allowed = f"{'>' if open_low else '>='} {low:g}" + (f" and < {high:g}" if high is not None else "")
        raise UsageError(f"{where}: {name}: {key} {x:g} is out of range; {name} must be {allowed}")


def check_space(space: dict, where: str, cfg=None) -> dict[str, dict]:
    """The one checker of a search space, before OUTPUT_DIR or the study exist: every range as {low, high, log[, step]}
    with finite numbers inside the parameter's DOMAIN, low < high, log only with low > 0 and never with step, a step
    > 0 that fits the range; every list as {choices} of values in the DOMAIN. With `cfg` (the run's FinetuneConfig)
    each corner of the space (lowest, highest, every choice) is also put through FinetuneConfig's own checks with
    the run's other flags, so a trial is never refused for a value the space gives it (a batch size that
    --gradient_accumulation_steps does not divide, ...). Every error names `where` and the parameter."""
    out = {}
    for name, spec in space.items():
        if name not in SEARCHABLE:
            raise UsageError(f"{where}: {name!r} cannot be searched; choose among {', '.join(SEARCHABLE)}")
        kind = DOMAIN[name][0]
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
                _in_domain(where, name, "choice", x)
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
        _in_domain(where, name, "low", low)
        _in_domain(where, name, "high", high)
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
        _check_corners(out, where, cfg)
    return out


def _check_corners(space: dict[str, dict], where: str, cfg) -> None:
    """Each parameter's extreme values and choices (the others at the run's flags, and the batch size against every
    accumulation the space offers) through FinetuneConfig's checks; an error names the space and the value."""
    def values(name):
        spec = space.get(name)
        if spec is None:
            return [getattr(cfg, name)]
        vals = spec["choices"] if "choices" in spec else [spec["low"], spec["high"]]
        return [int(v) if DOMAIN[name][0] == "int" else v for v in vals]

    probes = [{name: v} for name in space for v in values(name)]
    if "train_batch_size" in space or "gradient_accumulation_steps" in space:
        probes += [{"train_batch_size": b, "gradient_accumulation_steps": a}
                   for b in values("train_batch_size") for a in values("gradient_accumulation_steps")]
    for params in probes:
        try:
            dataclasses.replace(cfg, hpo_trials=0, hpo_space=None, **params)
        except ValueError as exc:
            shown = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items())
            raise UsageError(f"{where}: a trial with {shown} would be refused ({exc}); narrow the space") from None


def suggest(trial, space: dict[str, dict], cfg) -> dict:
    """The trial's values, typed as FinetuneConfig's fields (ints stay ints)."""
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


def _trial_row(t) -> dict:
    return {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
            **{k: t.user_attrs[k] for k in ("output_dir", "best_step", "redo_of", "interrupted") if k in t.user_attrs}}


def search(cfg) -> dict:
    """Run (or continue) the study; returns the best trial's summary (see the module doc). The caller
    (finetune.main) holds OUTPUT_DIR's run lock."""
    import optuna

    from ort_training.finetune import run, validation_metric

    out = Path(cfg.output_dir)
    space = load_space(cfg.hpo_space, cfg.max_steps)
    metric, higher_is_better = validation_metric(cfg)
    direction = "maximize" if higher_is_better else "minimize"
    objective_desc = {"metric": metric, "direction": direction, "split": "validation",
                      "of": "each trial's best evaluation (the weights early stopping keeps)"}
    out.mkdir(parents=True, exist_ok=True)
    storage = study_url(out)
    try:
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage) if (out / STUDY_FILE).is_file() else None
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
        study_name=STUDY_NAME, storage=storage, load_if_exists=True, direction=direction,
        sampler=optuna.samplers.TPESampler(seed=cfg.seed + so_far),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=0))
    study.set_user_attr("objective", objective_desc)
    study.set_user_attr("space", space)
    for t in redo:
        study.enqueue_trial(t.params, user_attrs={"redo_of": t.number})
    finished = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    todo = max(0, cfg.hpo_trials - len(finished))
    logger.info("hyperparameter search: %s of validation %s; %d trials finished, %d to run (study %s)",
                direction, metric, len(finished), todo, out / STUDY_FILE)

    def objective(trial):
        params = suggest(trial, space, cfg)
        folder = out / TRIALS_DIR / f"trial-{trial.number:03d}"
        trial.set_user_attr("output_dir", str(folder))
        logger.info("trial %d: %s", trial.number, params)
        tcfg = dataclasses.replace(cfg, output_dir=str(folder), hpo_trials=0, hpo_space=None, resume_from_checkpoint=False, **params)

        def report(step: int, value: float) -> bool:
            trial.report(value, step)
            return trial.should_prune()

        result = run(tcfg, on_evaluation=report)
        if result.get("preempted"):
            trial.set_user_attr("interrupted", True)
            raise InterruptedError(f"trial {trial.number} was preempted; rerun the same command to continue the search")
        if result["pruned"]:
            raise optuna.TrialPruned()
        trial.set_user_attr("best_step", result["best_step"])
        trial.set_user_attr("test", result.get("test"))
        return result["validation"][metric]

    if todo:
        study.optimize(objective, n_trials=todo, catch=())
    return write_report(cfg, study, space, objective_desc)


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


def write_report(cfg, study, space: dict, objective_desc: dict) -> dict:
    import optuna

    out = Path(cfg.output_dir)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise UsageError(f"{out / STUDY_FILE}: no trial finished (all pruned or failed); see {out / TRIALS_DIR}")
    best = study.best_trial
    src = Path(best.user_attrs["output_dir"])
    with atomic_dir(out / "hf_model") as tmp:
        shutil.copytree(src / "hf_model", tmp, dirs_exist_ok=True)
    shutil.copyfile(src / "finetune_config.json", out / "finetune_config.json")  # ort_training.predict reads it beside hf_model/
    report = {"objective": objective_desc, "trials_requested": cfg.hpo_trials, "study": str(out / STUDY_FILE),
              "sampler": "TPESampler", "pruner": f"MedianPruner(n_startup_trials={PRUNER_STARTUP_TRIALS}) on every validation evaluation",
              "space": space,
              "best_trial": {"number": best.number, "value": best.value, "params": best.params, "output_dir": str(src),
                             "best_step": best.user_attrs.get("best_step"), "test": best.user_attrs.get("test")},
              "hf_model": str(out / "hf_model"),
              "counts": {s.name: sum(t.state == s for t in study.trials) for s in optuna.trial.TrialState},
              "trials": [_trial_row(t) for t in study.trials]}
    atomic_write_text(out / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    logger.info("best trial %d: validation %s %.4f with %s", best.number, objective_desc["metric"], best.value, best.params)
    return {"hpo": str(out / REPORT_FILE), "best_trial": best.number, "params": best.params,
            "validation": {objective_desc["metric"]: best.value}, "test": best.user_attrs.get("test"), "hf_model": str(out / "hf_model")}
