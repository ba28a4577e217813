"""ModernBERT end to end through the model seam (issue 14): PubMed sample -> byte-level BPE -> packed sequences
(two lengths, masked at load time) -> both phases from scratch -> export (AutoModelForMaskedLM + fill-mask) ->
continued pretraining from that Hugging Face folder -> fine-tuning; eager and SDPA attention agree; exact resume."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from cli_runs import run_data_prep
from safetensors.torch import load_file

from bundle import layout
from ort_training.config import PretrainConfig
from ort_training.loop.checkpoint import load_checkpoint
from ort_training.loop.trainer import Trainer
from ort_training.models import CONFIG_DIR

ASSETS = Path(__file__).parents[1] / "assets" / "pubmed"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Shards of the 99-abstract sample, a BPE tokenizer trained on them, packed folders of 64 and 128 tokens,
    and a 2-layer ModernBERT config (one local, one global attention layer) sized to the tokenizer."""
    w = tmp_path_factory.mktemp("mb")
    run_data_prep("all", "--input", ASSETS / "pubmed20n0014_sample.xml.gz", "--work-dir", w, "--vocab-file",
                  ASSETS / "bert-base-uncased-vocab.txt", "--max-seq-lengths", "32", "--max-predictions", "4", "--num-shards", "2",
                  "--test-fraction", "0.1", "--dupe-factor", "1", "--processes", "2", "--splitter", "blingfire")
    run_data_prep("vocab", "--shard-dir", w / "shards", "--out-dir", w / "bpe", "--tokenizer-type", "bpe", "--vocab-size", "600")
    for length in (64, 128):
        run_data_prep("packed", "--shard-dir", w / "shards", "--tokenizer", w / "bpe", "--out-root", w, "--max-seq-length", length)
    config = json.loads((CONFIG_DIR / "modernbert_tiny_config.json").read_text())
    config.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, global_attn_every_n_layers=2,
                  local_attention=16, vocab_size=600, max_position_embeddings=256, pad_token_id=50, cls_token_id=51,
                  sep_token_id=52, bos_token_id=51, eos_token_id=52)  # wrong ids on purpose: the data's tokenizer sets them
    (w / "modernbert.json").write_text(json.dumps(config))
    return {"w": w, "config": str(w / "modernbert.json"), "p1": str(layout.find_data_dir(w, format="packed", seq_len=64)),
            "p2": str(layout.find_data_dir(w, format="packed", seq_len=128))}


def train(data, out, phase2=False, **kw):
    settings = dict(config_file=data["config"], input_dir=data["p2" if phase2 else "p1"], output_dir=str(out), backend="eager",
                    objective="mlm", train_batch_size=4, learning_rate=2e-3, warmup_proportion=0.25, max_steps=3 if phase2 else 4,
                    num_steps_per_checkpoint=2, disable_progress_bar=True, dropout=0.0, seed=7, phase2=phase2,
                    resume_from_checkpoint=phase2)
    trainer = Trainer(PretrainConfig(**{**settings, **kw}))
    losses = {}
    trainer.hooks.append(lambda tr, rec: losses.__setitem__(rec["step"], rec["loss"]))
    try:
        return trainer.train(), losses, trainer
    finally:
        trainer.close()


@pytest.fixture(scope="module")
def scratch(data, tmp_path_factory):
    """Both phases from scratch with SDPA, and phase 1 again with eager attention."""
    runs = {}
    for attention in ("sdpa", "eager"):
        out = tmp_path_factory.mktemp(attention)
        summary1, losses1, tr = train(data, out, attention=attention, eval_dir=data["p1"], eval_batches=2)
        runs[attention] = {"out": out, "losses": losses1, "summary": summary1, "attention": tr.attention, "mask_rate": tr.input.mask_rate,
                           "export1": {k: v.clone() for k, v in load_file(str(out / "hf_model" / "model.safetensors")).items()},
                           "config1": json.loads((out / "hf_model" / "config.json").read_text())}
        if attention == "sdpa":
            runs[attention]["summary2"], runs[attention]["losses2"], _ = train(data, out, phase2=True, attention=attention)
    return runs


def test_both_phases_from_scratch_and_the_export_answers_fill_mask(data, scratch):
    from transformers import AutoModelForMaskedLM, pipeline

    run = scratch["sdpa"]
    assert run["attention"] == "sdpa" and run["mask_rate"] == pytest.approx(0.30)  # ModernBERT's default rate
    assert run["summary"]["global_step"] == 4 and run["summary2"]["global_step"] == 7
    assert 0 <= run["summary"]["eval_mlm_accuracy"] <= 1 and run["summary"]["eval_masked_tokens"] > 0
    ckpt = load_checkpoint(run["out"])
    assert ckpt["model_config"]["model_type"] == "modernbert" and ckpt["model_config"]["pad_token_id"] == 0  # the data's [PAD]
    export = run["out"] / "hf_model"
    model = AutoModelForMaskedLM.from_pretrained(export)
    assert type(model).__name__ == "ModernBertForMaskedLM" and model.config.vocab_size == 600
    # The export carries the tokenizer that made the data, byte for byte.
    assert json.loads((export / "tokenizer.json").read_text()) == json.loads((data["w"] / "bpe" / "tokenizer.json").read_text())
    fill = pipeline("fill-mask", model=str(export))
    answers = fill(f"The patient was treated with {fill.tokenizer.mask_token} for pneumonia.")
    assert len(answers) == 5 and all(0 <= a["score"] <= 1 for a in answers)


def test_eager_and_sdpa_agree_and_the_export_does_not_depend_on_the_choice(scratch):
    eager, sdpa = scratch["eager"], scratch["sdpa"]
    assert eager["attention"] == "eager"
    assert list(eager["losses"]) == list(sdpa["losses"]) == [1, 2, 3, 4]
    for step in eager["losses"]:  # fp32, dropout 0: the kernels differ in summation order only
        assert eager["losses"][step] == pytest.approx(sdpa["losses"][step], rel=1e-5)
    assert eager["config1"] == sdpa["config1"]  # nothing of the attention choice is written into the export
    assert eager["export1"].keys() == sdpa["export1"].keys()
    for name, tensor in eager["export1"].items():
        torch.testing.assert_close(tensor, sdpa["export1"][name], atol=1e-5, rtol=1e-4)


def test_continued_pretraining_from_a_hugging_face_folder(data, scratch, tmp_path, caplog):
    published = tmp_path / "published"
    shutil.copytree(scratch["sdpa"]["out"] / "hf_model", published)
    caplog.set_level("INFO")
    summary, losses, trainer = train(data, tmp_path / "cont", init_checkpoint=str(published), config_file=None, max_steps=2)
    assert summary["global_step"] == 2
    assert any("hf checkpoint" in r.getMessage() and "tensors loaded" in r.getMessage() for r in caplog.records)
    # Continued from trained weights: the first loss is below the scratch run's first loss.
    assert losses[1] < scratch["sdpa"]["losses"][1]


def test_resume_after_preemption_is_bitwise(data, tmp_path):
    _, ref, _ = train(data, tmp_path / "ref", max_steps=4)
    first = Trainer(PretrainConfig(config_file=data["config"], input_dir=data["p1"], output_dir=str(tmp_path / "cut"), backend="eager",
                                   objective="mlm", train_batch_size=4, learning_rate=2e-3, warmup_proportion=0.25, max_steps=4,
                                   num_steps_per_checkpoint=2, disable_progress_bar=True, dropout=0.0, seed=7))
    first.hooks.append(lambda tr, rec: tr.request_stop() if tr.global_step == 2 else None)
    try:
        assert first.train()["preempted"]
    finally:
        first.close()
    _, resumed, _ = train(data, tmp_path / "cut", max_steps=4, resume_from_checkpoint=True)
    assert list(resumed) == [3, 4] and resumed[3] == ref[3] and resumed[4] == ref[4]
    assert all(torch.equal(a, b) for a, b in zip(load_checkpoint(tmp_path / "ref")["model"].values(),
                                                 load_checkpoint(tmp_path / "cut")["model"].values()))


def test_finetune_a_modernbert_export(data, scratch, tmp_path):
    import csv

    from transformers import AutoModelForSequenceClassification

    from ort_training.finetune import main as finetune_main

    rows = [("the patient had a fever and cough", "infection"), ("blood pressure was high in the trial", "cardio"),
            ("the infection was treated with antibiotics", "infection"), ("heart rate and blood pressure fell", "cardio")] * 6
    path = tmp_path / "task.csv"
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([("text", "label"), *rows])
    out = tmp_path / "ft"
    assert finetune_main(["--train_file", str(path), "--init_checkpoint", str(scratch["sdpa"]["out"] / "hf_model"), "--output_dir",
                          str(out), "--backend", "eager", "--max_steps", "3", "--eval_steps", "3", "--max_seq_length", "32",
                          "--train_batch_size", "4", "--learning_rate", "1e-3", "--disable_progress_bar"]) == 0
    model = AutoModelForSequenceClassification.from_pretrained(out / "hf_model")
    assert type(model).__name__ == "ModernBertForSequenceClassification" and set(model.config.label2id) == {"infection", "cardio"}
    assert json.loads((out / "test_report.json").read_text())["documents"] > 0


def test_ort_backend_is_refused_at_start_up(data, tmp_path):
    with pytest.raises(ValueError, match="--backend ort cannot train modernbert.*--backend eager"):
        PretrainConfig(config_file=data["config"], input_dir=data["p1"], output_dir=str(tmp_path), backend="ort", objective="mlm")
    with pytest.raises(ValueError, match="--objective mlm_nsp is not available for modernbert"):
        PretrainConfig(config_file=data["config"], input_dir=data["p1"], output_dir=str(tmp_path), backend="eager")
