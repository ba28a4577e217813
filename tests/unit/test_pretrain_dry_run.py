"""`python -m ort_training.pretrain --dry-run` plans a run: data that does not exist yet is a note, a missing
init checkpoint is refused, the batch split and (with a corpus size) a sizing estimate are printed."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ort_training.pretrain import build_parser, main
from ort_training.recipe import load_recipe
from ort_training.sizing import instance_bytes, phase_size, recommended_shards

REPO = Path(__file__).resolve().parents[2]


def test_made_up_data_paths_are_a_note_and_the_batch_split_is_printed(tmp_path, capsys):
    rc = main(["--recipe", "bert_large_biobert", "--phase1.input_dir", str(tmp_path / "later1"), "--phase2.input_dir",
               str(tmp_path / "later2"), "--output_dir", str(tmp_path / "out"), "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0
    assert f"# note: phase1: {tmp_path / 'later1'} does not exist yet" in out and "# note: phase2:" in out
    assert "# phase1: global batch 65,536 = 8 GPU process(es) x 64 sequences x 128 accumulation steps" in out
    assert not (tmp_path / "out").exists()


def test_a_missing_init_checkpoint_is_refused(tmp_path, capsys):
    rc = main(["--recipe", "continued_pretraining", "--phase1.init_checkpoint", str(tmp_path / "no_model"),
               "--phase1.input_dir", "d1", "--phase2.input_dir", "d2", "--dry-run"])
    assert rc == 2 and f"--phase1.init_checkpoint {tmp_path / 'no_model'}: no such file or folder" in capsys.readouterr().err


def test_sizing_estimate_from_documents(tmp_path, capsys):
    # A published model the dry run can check (its weights against the recipe's architecture, as the run does).
    import json

    from transformers import BertConfig, BertForPreTraining

    model = tmp_path / "published"
    config = json.loads((REPO / "ort_training" / "configs" / "bert_tiny_config.json").read_text())
    BertForPreTraining(BertConfig(**config)).save_pretrained(model)
    rc = main(["--recipe", "continued_pretraining", "--phase1.init_checkpoint", str(model), "--nproc_per_node", "8",
               "--device", "cuda", "--phase1.input_dir", "d1", "--phase2.input_dir", "d2", "--dry-run",
               "--corpus_documents", "2000000", "--tokens_per_document", "1500"])
    out = capsys.readouterr().out
    assert rc == 0, out
    recipe = load_recipe("continued_pretraining")
    p1 = phase_size("phase1", 3_000_000_000, 128, 20, recipe.phase1["global_batch_size"], recipe.phase1["max_steps"],
                    tokens_per_document=1500)
    assert f"# sizing: corpus: 3,000,000,000 tokens; data_prep shard --num-shards {recommended_shards(3_000_000_000, 8)}" in out
    assert f"# sizing: {p1.describe()}" in out
    # More than 5 x 3e9 / 125 = 120 M (NSP pairs put sentences back; 10% short targets); 256 x 2,000 sequences is a sliver.
    assert 120_000_000 < p1.instances < 200_000_000 and p1.epochs < 0.01


def test_sizing_arithmetic():
    assert instance_bytes(128, 20) == 128 * (4 + 1 + 1) + 20 * (4 + 4) + 1  # int32 ids, int8 mask/segments, int8 label
    assert recommended_shards(10_000, 8) == 8 and recommended_shards(3_000_000_000, 8) == 120
    size = phase_size("phase2", 1_000_000, 512, 80, 32_768, 1_563)
    # 4,000 abstracts of 250 tokens: at least one instance per document and copy (not 5 x 1e6 / 509 = 9,824).
    assert size.instances > 5 * 4_000 and size.disk_bytes == size.instances * instance_bytes(512, 80)
    assert size.instances_bound == math.ceil(size.instances * 1.2)


def test_corpus_size_needs_dry_run_and_both_halves(capsys):
    assert main(["--recipe", "tiny_cpu", "--corpus_tokens", "1000"]) == 2
    assert "add --dry-run" in capsys.readouterr().err
    assert main(["--recipe", "tiny_cpu", "--dry-run", "--corpus_documents", "10"]) == 2
    assert "--tokens_per_document together" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--learning_rate", "--phase1.max_steps", "--nproc_per_node"])
def test_help_shows_no_trainer_default_for_an_override(flag):
    action = next(a for a in build_parser()._actions if flag in a.option_strings)
    assert "(default:" not in action.help  # the recipe's value applies, not the dataclass's


def test_the_launchers_import_no_torch():
    """The two-phase runner and the per-phase entry point start before every phase (the demo starts 15 of them): the
    family registry and the configs load torch and transformers only when a model is built, not at import."""
    code = ("import sys, ort_training.pretrain, ort_training.run_pretraining, ort_training.models; "
            "bad = {'torch', 'transformers'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
