"""NVIDIA-style flags -> PretrainConfig; YAML precedence; checks right after parsing; shipped BERT configs."""

import json

import pytest

from ort_training.config import PACKAGE_CONFIGS, parse_config, resolve_config_file
from ort_training.models import load_model_config


def test_nvidia_flags_parse():
    cfg = parse_config(["--input_dir", "d", "--output_dir", "o", "--config_file", "tiny", "--train_batch_size", "64",
                        "--gradient_accumulation_steps", "8", "--learning_rate", "5e-3", "--warmup_proportion", "0.25",
                        "--max_steps", "1500", "--phase2", "--phase1_end_step", "7000", "--resume_from_checkpoint", "--fp16",
                        "--seed", "42", "--num_steps_per_checkpoint", "200", "--log_freq", "10", "--allreduce_post_accumulation",
                        "--allreduce_post_accumulation_fp16", "--backend", "eager"])
    assert cfg.micro_batch_size == 8 and cfg.precision == "fp16" and cfg.phase2 and cfg.phase1_end_step == 7000
    assert resolve_config_file(cfg.config_file) == str(PACKAGE_CONFIGS / "bert_tiny_config.json")
    assert parse_config([]).backend == "ort" and parse_config([]).dense_seq_output
    assert not parse_config(["--no-dense_seq_output"]).dense_seq_output
    assert parse_config(["--local-rank=3"]).local_rank == 3


def test_yaml_then_flags(tmp_path, capsys):
    y = tmp_path / "c.yaml"
    y.write_text("learning_rate: 0.001\nmax_steps: 7\nbf16: true\n")
    cfg = parse_config(["--config", str(y), "--max_steps", "9"])
    assert (cfg.learning_rate, cfg.max_steps, cfg.precision) == (0.001, 9, "bf16")
    # The command line's precision wins over the file's, whichever spelling either uses.
    assert parse_config(["--config", str(y), "--precision", "fp32"]).precision == "fp32"
    assert parse_config(["--config", str(y), "--fp16"]).precision == "fp16"
    y.write_text("precision: bf16\n")
    assert parse_config(["--config", str(y), "--fp16"]).precision == "fp16"
    y.write_text("learning_rat: 0.001\n")
    with pytest.raises(SystemExit) as exc:
        parse_config(["--config", str(y)])
    assert exc.value.code == 2
    assert "unknown setting(s) 'learning_rat' (did you mean 'learning_rate'?)" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--train_batch_size", "10", "--gradient_accumulation_steps", "4"], "divisible"),
    (["--phase2"], "--phase2 needs"),
    (["--config_file", "nope.json"], "nope.json: no such file"),
    (["--fp16", "--bf16"], "mutually exclusive"),
    (["--warmup_proportion", "1.5"], "warmup_proportion"),
    (["--learning_rate=-1e-3"], "--learning_rate must be > 0"),
    (["--objective", "span"], "--objective 'span': choose one of"),
])
def test_bad_values_are_named(argv, message, capsys):
    """A bad value is a usage error (exit 2, no traceback) whose message names the flag."""
    with pytest.raises(SystemExit) as exc:
        parse_config(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_bad_choice_is_rejected(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--backend", "tensorrt"])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("name,layers,hidden", [("tiny", 2, 128), ("base", 12, 768), ("large", 24, 1024)])
def test_shipped_configs(name, layers, hidden):
    path = PACKAGE_CONFIGS / f"bert_{name}_config.json"
    raw = json.loads(path.read_text())
    assert (raw["num_hidden_layers"], raw["hidden_size"], raw["vocab_size"]) == (layers, hidden, 30522)
    cfg = load_model_config(str(path))
    assert cfg.vocab_size == 30528 and cfg.original_vocab_size == 30522
