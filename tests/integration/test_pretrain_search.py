"""The pretraining search (`python -m ort_training.run_pretraining ... --hpo_trials N`, tasks/hpo.py's PRETRAIN): a tiny
Llama on synthetic packed timelines (test_decoder.py's data), 3 trials minimising the held-out loss, one trial driven
to NaN (recorded FAILED with its reason, the search goes on), the best trial's export copied up with a report, a
pruned trial stopping at its evaluation, a killed search continued by the same command, and the refusals (made by
--dry-run too) before OUTPUT_DIR exists."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_decoder import write_sequences, write_tokenizer

from ort_training import run_pretraining
from ort_training.config import PretrainConfig
from ort_training.loop.metrics import read_metrics
from ort_training.tasks import hpo

ROOT = Path(__file__).resolve().parents[2]
SPACE = "hpo:\n  learning_rate: {low: 1.0e-3, high: 1.0e-2, log: true}\n  gradient_accumulation_steps: {choices: [1, 2]}\n"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """test_decoder.py's fixture: two training files of packed timelines, a held-out file, a WordLevel tokenizer."""
    root = tmp_path_factory.mktemp("search")
    (root / "train").mkdir()
    (root / "val").mkdir()
    for i in range(2):
        write_sequences(root / "train" / f"timelines_training_{i}.hdf5", 64, seed=i)
    write_sequences(root / "val" / "timelines_test_0.hdf5", 32, seed=9)
    space = root / "space.yaml"
    space.write_text(SPACE)
    return {"input_dir": str(root / "train"), "eval_dir": str(root / "val"), "vocab_file": str(write_tokenizer(root / "tokenizer")),
            "space": str(space), "root": root}


def argv(data, out, trials=3, **extra) -> list[str]:
    flags = {"input_dir": data["input_dir"], "eval_dir": data["eval_dir"], "vocab_file": data["vocab_file"],
             "config_file": "llama_tiny", "objective": "clm", "backend": "eager", "optimizer": "adamw", "lr_schedule": "cosine",
             "train_batch_size": 8, "gradient_accumulation_steps": 1, "max_steps": 6, "warmup_proportion": 0.2, "seed": 3,
             "eval_every": 2, "early_stopping_patience": 3, "eval_batches": 4, "num_steps_per_checkpoint": 2,
             "disable_progress_bar": True, "dropout": 0.0, "output_dir": str(out), "hpo_trials": trials, "hpo_space": data["space"],
             **extra}
    out_argv = []
    for k, v in flags.items():
        if v is True:
            out_argv.append(f"--{k}")
        elif v is not None:
            out_argv += [f"--{k}", str(v)]
    return out_argv


def nan_in(monkeypatch, trial_folder: str) -> None:
    """The loss of every step of the trial run in `trial_folder` becomes NaN (what a learning rate far too high does)."""
    from ort_training.loop.trainer import Trainer

    step = Trainer.train_step

    def train_step(self, it):
        out = step(self, it)
        if Path(self.cfg.output_dir).name == trial_folder:
            out["totals"][0] = torch.tensor(float("nan"))
        return out

    monkeypatch.setattr(Trainer, "train_step", train_step)


def test_search_of_three_trials_with_a_nan_trial(data, tmp_path, monkeypatch, capsys):
    import optuna

    nan_in(monkeypatch, "trial-001")
    out = tmp_path / "search"
    t0 = time.perf_counter()
    assert run_pretraining.main(argv(data, out)) == 0
    seconds = time.perf_counter() - t0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    trials = optuna.load_study(study_name="pretrain", storage=hpo.study_url(out)).trials
    states = [t.state.name for t in trials]
    assert len(trials) == 3 and states[1] == "FAIL" and states.count("FAIL") == 1  # the NaN trial counts; no 4th trial
    assert "the loss is nan" in trials[1].user_attrs["failed"] and not trials[1].user_attrs.get("interrupted")
    assert not (out / "trials" / "trial-001" / "hf_model").exists()  # nothing saved from NaN weights
    report = json.loads((out / hpo.REPORT_FILE).read_text())
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    best = min(complete, key=lambda t: t.value)
    assert report["objective"]["metric"] == "eval_clm_loss" and report["objective"]["direction"] == "minimize"
    assert report["best_trial"]["number"] == best.number == result["best_trial"]
    assert report["counts"]["FAIL"] == 1 and report["trials"][1]["failed"].startswith("step 1: the loss is nan")
    for t in complete:  # the value is the trial's lowest held-out loss, every evaluation was reported to the pruner
        evals = [r["eval_clm_loss"] for r in read_metrics(Path(t.user_attrs["output_dir"]) / "metrics.jsonl") if "eval_clm_loss" in r]
        assert len(evals) == 3 and t.value == pytest.approx(min(evals)) and sorted(t.intermediate_values) == [2, 4, 6]
        assert set(t.params) == {"learning_rate", "gradient_accumulation_steps"}
    # the best trial's export and its run's settings, copied up
    src = Path(best.user_attrs["output_dir"])
    assert (out / "hf_model" / "model.safetensors").read_bytes() == (src / "hf_model" / "model.safetensors").read_bytes()
    saved = json.loads((out / "pretrain_config.json").read_text())
    assert saved["learning_rate"] == best.params["learning_rate"] and saved["output_dir"] == str(src) and saved["hpo_trials"] == 0
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "hf_model", trust_remote_code=False).config.model_type == "llama"
    print(f"3-trial search: {seconds:.1f} s; values {[t.value for t in trials]}; params {[t.params for t in trials]}")
    # a rerun of the finished search runs nothing and reports the same best trial
    assert run_pretraining.main(argv(data, out)) == 0
    assert len(optuna.load_study(study_name="pretrain", storage=hpo.study_url(out)).trials) == 3
    assert json.loads((out / hpo.REPORT_FILE).read_text())["best_trial"] == report["best_trial"]


def test_a_pruned_trial_stops_at_its_evaluation_and_early_stopping_works_inside_a_trial(data, tmp_path):
    kw = dict(input_dir=data["input_dir"], eval_dir=data["eval_dir"], vocab_file=data["vocab_file"], config_file="llama_tiny",
              objective="clm", backend="eager", optimizer="adamw", train_batch_size=8, max_steps=12, eval_every=2, eval_batches=4,
              disable_progress_bar=True, dropout=0.0, num_steps_per_checkpoint=2)
    seen = []
    pruned = run_pretraining.run_trial(PretrainConfig(output_dir=str(tmp_path / "p"), **kw),
                                       lambda step, loss: seen.append(step) or step == 4)
    assert pruned == {"pruned": True, "pruned_at": 4} and seen == [2, 4]
    assert [r["step"] for r in read_metrics(tmp_path / "p" / "metrics.jsonl")][-1] == 4
    assert not (tmp_path / "p" / "hf_model").exists()  # no export of a pruned trial
    # a learning rate far too high: the held-out loss stops improving and patience 2 ends the trial early (test_decoder's case)
    done = run_pretraining.run_trial(PretrainConfig(output_dir=str(tmp_path / "e"), learning_rate=0.5, early_stopping_patience=2,
                                                    warmup_proportion=0.0, lr_schedule="poly", **{**kw, "eval_every": 1}),
                                     lambda step, loss: False)
    assert done["attrs"]["finished_early"] and done["attrs"]["global_step"] < 12
    assert (tmp_path / "e" / "hf_model" / "config.json").is_file()
    records = [r for r in read_metrics(tmp_path / "e" / "metrics.jsonl") if "eval_clm_loss" in r]
    assert done["value"] == pytest.approx(min(r["eval_clm_loss"] for r in records)) and done["best_step"] == min(
        records, key=lambda r: r["eval_clm_loss"])["step"]


def test_a_killed_search_continues(data, tmp_path):
    """SIGKILLed while its second trial runs: the rerun keeps the finished trial, runs the killed trial's parameters
    again (a new trial), and ends with 2 finished trials and the best one's export."""
    import optuna

    out = tmp_path / "search"
    args = argv(data, out, trials=2, max_steps=8)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ort_training.run_pretraining", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    storage = hpo.study_url(out)
    deadline = time.time() + 600
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.25)
            try:
                trials = optuna.load_study(study_name="pretrain", storage=storage).trials
            except Exception:  # noqa: BLE001 -- the study is not created yet
                continue
            states = [t.state.name for t in trials]
            if "COMPLETE" in states and states[-1] == "RUNNING" and "output_dir" in trials[-1].user_attrs:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = optuna.load_study(study_name="pretrain", storage=storage).trials
    killed = before[-1]
    assert killed.state.name == "RUNNING" and len(killed.params) == 2
    kept = {t.number: (t.value, t.params) for t in before if t.state.name in ("COMPLETE", "PRUNED")}
    assert kept

    assert run_pretraining.main(args) == 0
    after = optuna.load_study(study_name="pretrain", storage=storage).trials
    assert {t.number: (t.value, t.params) for t in after if t.number in kept} == kept
    assert after[killed.number].state.name == "FAIL" and after[killed.number].user_attrs["interrupted"]
    redo = [t for t in after if t.user_attrs.get("redo_of") == killed.number]
    assert len(redo) == 1 and redo[0].params == killed.params
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in after) == 2
    report = json.loads((out / hpo.REPORT_FILE).read_text())
    best = min((t for t in after if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert report["best_trial"]["number"] == best.number and (out / "hf_model" / "config.json").is_file()


@pytest.mark.parametrize("case", ["no_eval_every", "resume", "bad_space", "indivisible", "unknown", "into_single_run",
                                  "inside_input", "single_into_search", "finetune_search"])
def test_refusals_before_output_dir(data, tmp_path, capfd, case):
    """Each refusal names the flag or folder, exit 2, from the search and from its --dry-run alike, and nothing is
    written (settings and spaces: refused while the config is built, as argparse errors)."""
    out = tmp_path / "out"
    space = tmp_path / "space.yaml"
    extra, needle = {}, None
    if case == "no_eval_every":
        extra, needle = {"eval_every": 0, "early_stopping_patience": 0}, "needs --eval_dir and --eval_every"
    elif case == "resume":
        extra, needle = {"resume_from_checkpoint": True}, "drop --resume_from_checkpoint"
    elif case == "bad_space":
        space.write_text("hpo:\n  learning_rate: {low: 1.0e-3, high: 1.0e-2, log: true, step: 1.0e-3}\n")
        extra, needle = {"hpo_space": space}, "log: true and step exclude each other"
    elif case == "indivisible":  # 9 passes with accumulation 1 and 3, not with 2
        space.write_text("hpo:\n  train_batch_size: {choices: [6, 9]}\n  gradient_accumulation_steps: {low: 1, high: 3}\n")
        extra, needle = {"hpo_space": space}, "train_batch_size 9, gradient_accumulation_steps 2 would be refused"
    elif case == "unknown":
        space.write_text("hpo:\n  dropout: {low: 0.0, high: 0.2}\n")
        extra, needle = {"hpo_space": space}, "'dropout' cannot be searched"
    elif case == "into_single_run":
        (out / "checkpoints").mkdir(parents=True)
        needle = "holds a single pretraining run (checkpoints)"
    elif case == "inside_input":
        out = Path(data["input_dir"]) / "search"
        needle = "lies inside --input_dir"
    elif case == "single_into_search":
        out.mkdir()
        (out / hpo.REPORT_FILE).write_text("{}")
        extra, needle = {"hpo_trials": 0, "hpo_space": None}, "holds a hyperparameter search (hpo_report.json)"
    elif case == "finetune_search":
        import optuna

        out.mkdir()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # its INFO line would go to a handler optuna bound to an
        try:                                                   # earlier test's capture stream, closed since
            optuna.create_study(study_name="finetune", storage=hpo.study_url(out))
        finally:
            optuna.logging.set_verbosity(optuna.logging.INFO)
        needle = "holds a 'finetune' search"
    before = sorted(p.name for p in out.iterdir()) if out.exists() else None
    for dry in ([], ["--dry-run"]):
        try:
            rc = run_pretraining.main(argv(data, out, **extra) + dry)
        except SystemExit as exc:  # a setting the config refuses: argparse's usage and the line, exit 2
            rc = exc.code
        err = capfd.readouterr().err
        assert rc == 2 and needle in err, err
        assert "Traceback" not in err
        assert (sorted(p.name for p in out.iterdir()) if out.exists() else None) == before

def test_dry_run_prints_the_plan_and_writes_nothing(data, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_pretraining.main(argv(data, out) + ["--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "search of 3 trials" in printed and "held-out eval_clm_loss" in printed and "learning_rate" in printed
    assert not out.exists()
    # the default space is fms-ehrs's (learning rate 5e-5..5e-4 log, accumulation 1..3) with batches every accumulation divides
    space = hpo.load_space(None, cfg=PretrainConfig(**{**dict(input_dir=data["input_dir"], eval_dir=data["eval_dir"],
                                                                 config_file="llama_tiny", objective="clm", backend="eager",
                                                                 train_batch_size=12, eval_every=2)}),
                           searcher=hpo.PRETRAIN)
    assert space["learning_rate"] == {"low": 5e-5, "high": 5e-4, "log": True}
    assert space["gradient_accumulation_steps"] == {"low": 1, "high": 3, "log": False, "step": 1}
