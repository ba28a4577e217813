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


def load_space(path: str | None, max_steps: int | None = None) -> dict[str, dict]:
    """The search space: DEFAULT_SPACE, or the YAML file's `hpo` section (else the whole file), checked.
    With --max_steps the run's length is fixed, so the default space leaves out num_train_epochs and a file
    that searches it is refused (its trials would differ only in a value nothing reads)."""
    if not path:
        space = check_space(DEFAULT_SPACE, "ort_training.tasks.hpo.DEFAULT_SPACE")
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
    space = data.get("hpo", data) if isinstance(data, dict) else None
    if not isinstance(space, dict) or not space:
        raise UsageError(f"{where}: expected a mapping (an 'hpo' section) of parameter: {{low, high}} or {{choices: [...]}}")
    if "num_train_epochs" in space and (max_steps is not None or "max_steps" in space):
        fixed = f"--max_steps {max_steps}" if max_steps is not None else "its max_steps"
        raise UsageError(f"{where}: num_train_epochs is searched but {fixed} sets each trial's length, so epochs are never read; "
                         "search one of them")
    return check_space(space, where)


def check_space(space: dict, where: str) -> dict[str, dict]:
    """Every range as {low, high, log[, step]} with numbers, every list as {choices}: what `suggest` reads."""
    out = {}
    for name, spec in space.items():
        if name not in SEARCHABLE:
            raise UsageError(f"{where}: {name!r} cannot be searched; choose among {', '.join(SEARCHABLE)}")
        if not isinstance(spec, dict) or not ("choices" in spec or {"low", "high"} <= set(spec)):
            raise UsageError(f"{where}: {name}: give {{low: .., high: ..}} (optional log: true, step: ..) or {{choices: [..]}}")
        if "choices" in spec:
            if not isinstance(spec["choices"], list) or not spec["choices"]:
                raise UsageError(f"{where}: {name}: choices must be a non-empty list")
            out[name] = {"choices": spec["choices"]}
            continue
        try:  # YAML 1.1 reads 1e-5 (no dot) as a string
            low, high = float(spec["low"]), float(spec["high"])
        except (TypeError, ValueError):
            raise UsageError(f"{where}: {name}: low and high must be numbers, got {spec['low']!r}, {spec['high']!r}") from None
        if not low < high or (spec.get("log") and low <= 0):
            raise UsageError(f"{where}: {name}: need low < high (and low > 0 with log: true), got {low}, {high}")
        out[name] = {"low": low, "high": high, "log": bool(spec.get("log", False)),
                     **({"step": float(spec["step"])} if spec.get("step") is not None else {})}
    return out


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
    storage = f"sqlite:///{(out / STUDY_FILE).resolve()}"
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
