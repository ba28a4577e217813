"""Typed configuration for `python -m ort_training.run_pretraining`.

One dataclass holds every setting; argparse flags are generated from its fields so the flag list,
defaults, help text and choices live in one place. Flag names follow NVIDIA's
`run_pretraining.py` (`--train_batch_size`, `--phase2`, ...). Precedence: dataclass defaults <
`--config FILE.yaml` < command-line flags.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal, Optional

import yaml

from bundle.cli import add_arguments, from_dict, parse_into
from ort_training.models import ATTENTION_CHOICES, CONFIG_DIR, FAMILIES, SHIPPED_CONFIGS, family_of_file, resolve_config_file
from ort_training.models.base import FINETUNING_TASKS
from ort_training.errors import UsageError

PACKAGE_CONFIGS = CONFIG_DIR

Backend = Literal["ort", "eager", "compile"]
Attention = Literal[ATTENTION_CHOICES]
Precision = Literal["fp32", "fp16", "bf16"]
OPTIMIZERS = ("lamb", "adamw", "stable_adamw", "adamwscale")
"""What ort_training.loop.optim.build_optimizer builds (named here, where the flags are made, without importing torch)."""
SCHEDULES = ("poly", "cosine", "wsd")
"""What ort_training.loop.optim.build_scheduler builds."""
Optimizer = Literal[OPTIMIZERS]
Schedule = Literal[SCHEDULES]


def setting(default, help: str, **kw):
    """A dataclass field with its flag's help (bundle.cli builds the flags from these)."""
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainingArgs:
    """The settings every training entry point shares (pretraining a phase, fine-tuning), defined once: their flags,
    help and checks (`check_optimisation`) follow from here. A subclass redeclares a field only to change its default."""

    # --- io
    output_dir: str = setting("results", "Where checkpoints/, hf_model/, metrics and the summary are written.")
    config_file: Optional[str] = setting(None, "Model config JSON; its model_type picks the architecture (bert, modernbert, llama, t5; "
                                          "none: BERT). Or a shipped name: " + ", ".join(SHIPPED_CONFIGS) + " (default: the "
                                          "config.json of a Hugging Face --init_checkpoint).")
    init_checkpoint: Optional[str] = setting(None, "Weights to start from: a checkpoint folder of this bundle (or an output dir: its newest), "
                                              "a Hugging Face folder of the family, or an NVIDIA DeepLearningExamples .pt.")
    vocab_file: Optional[str] = setting(None, "The tokenizer, carried by the HF export: a WordPiece vocab.txt, a tokenizer.json or a "
                                         "Hugging Face tokenizer folder. Default: the data's (pretraining: the one data_prep's manifest "
                                         "names; fine-tuning: the --init_checkpoint folder's).", aliases=("--tokenizer",))
    # --- optimisation
    train_batch_size: int = setting(64, "Sequences per rank per optimizer step (split into --gradient_accumulation_steps micro-batches).")
    gradient_accumulation_steps: int = setting(1, "Micro-batches accumulated per optimizer step.")
    optimizer: Optimizer = setting("lamb", "lamb (NVIDIA's BERT recipe), adamw (decoders, fms-ehrs) or stable_adamw (ModernBERT's recipes); "
                                      "each clips the global gradient norm at --max_grad_norm.")
    lr_schedule: Schedule = setting("poly", "poly (NVIDIA's warm-up + poly decay), cosine (warm-up + half cosine to 0) or wsd "
                                       "(warm-up, constant, linear decay over the last 10% of steps: ModernBERT).")
    learning_rate: float = setting(5e-5, "Peak learning rate.")
    warmup_proportion: float = setting(0.01, "Fraction of the steps spent in linear warm-up.")
    weight_decay: float = setting(0.01, "Decoupled weight decay (not applied to biases and LayerNorm weights).")
    max_grad_norm: float = setting(1.0, "Global gradient-norm clip applied by the optimizer before its moments (0: none).")
    seed: int = setting(42, "Seed for weights, dropout and data order.")
    dropout: Optional[float] = setting(None, "Override the model's dropout (0 for deterministic parity tests).")
    checkpoint_activations: bool = setting(False, "Recompute each transformer layer's activations in the backward pass (less memory, "
                                             "~30% more compute); under ORT this is ORT's layer recompute (memory_opt_level 1).")
    # --- precision / backend
    precision: Precision = setting("fp32", "Numeric precision: fp32, fp16 (dynamic loss scaling) or bf16.")
    backend: Backend = setting("ort", "ort = ORTModule (torch-ort), eager = plain PyTorch, compile = torch.compile.")
    attention: Attention = setting("auto", "Attention kernel: eager, sdpa (torch's scaled_dot_product_attention: Flash / memory-efficient "
                                      "kernels on GPUs), or auto = the measured faster one for the architecture on this device "
                                      "(models/).")
    ort_optimizations: bool = setting(True, "ORT's compute optimizer (FLOP reduction, label sparsity); --no-ort_optimizations turns it off to compare.")
    deepspeed: Optional[str] = setting(None, "DeepSpeed JSON config or a shipped one: zero1, zero2 (ZeRO stage 0-2); our optimizer is used.")
    # --- checkpoints / logging
    resume_from_checkpoint: bool = setting(False, "Continue from the newest checkpoint in OUTPUT_DIR/checkpoints.")
    num_steps_per_checkpoint: int = setting(200, "Save a checkpoint every N optimizer steps (and on SIGTERM, an early stop and at the end).")
    keep_checkpoints: int = setting(3, "Keep only the newest K checkpoints.")
    log_freq: int = setting(1, "Log metrics every N optimizer steps.")
    disable_progress_bar: bool = setting(False, "Turn the tqdm progress bar off.")
    # --- hyperparameter search (ort_training/tasks/hpo.py)
    hpo_trials: int = setting(0, "Run an optuna search of N trials (each in OUTPUT_DIR/trials/trial-NNN, the study in "
                            "OUTPUT_DIR/hpo.sqlite3); the best trial's hf_model/ is copied to OUTPUT_DIR. Pretraining minimises "
                            "the held-out loss (needs --eval_dir and --eval_every); fine-tuning optimises its validation metric.")
    hpo_space: Optional[str] = setting(None, "YAML search space (its 'hpo' section, or the whole file); default: ort_training/tasks/hpo.py's.")

    def shared(self) -> dict:
        """This run's values of the shared settings (what a fine-tuning run hands the trainer's PretrainConfig)."""
        return {f.name: getattr(self, f.name) for f in fields(TrainingArgs)}


@dataclass
class PretrainConfig(TrainingArgs):
    """All settings of one pretraining phase. Defaults are those of NVIDIA's run_pretraining.py where
    it has the flag; a recipe's numbers live in its file under ort_training/recipes/, not here. The settings it shares
    with fine-tuning are TrainingArgs'."""

    # --- data / io
    input_dir: Optional[str] = setting(None, "Folder of data_prep's training files (`*training*.hdf5`, searched recursively): NVIDIA-schema "
                                        "HDF5 (masks stored) or packed token sequences (`data_prep packed`: masked as read).")
    do_lower_case: bool = setting(True, "Tokenizer lower-cases text (written into the exported tokenizer).")
    eval_dir: Optional[str] = setting(None, "Optional folder of held-out HDF5 shards; MLM accuracy is reported at the end of the phase.")
    eval_batches: int = setting(20, "At most this many micro-batches of --eval_dir are evaluated, each held-out sequence once.")
    eval_every: int = setting(0, "Also evaluate on --eval_dir every N optimizer steps (0: at the end of the phase only); the "
                            "eval_* values join that step's metrics record.")
    early_stopping_patience: int = setting(0, "With --eval_every: end the phase (checkpoint and export) once the held-out loss has "
                                         "not improved for this many evaluations (0: never; fms-ehrs uses 3).")
    log_dir: Optional[str] = setting(None, "TensorBoard folder (default OUTPUT_DIR/tensorboard).")
    max_seq_length: Optional[int] = setting(None, "Expected sequence length of the HDF5 (checked when the data is opened).")
    max_predictions_per_seq: Optional[int] = setting(None, "Expected masked positions per sequence of the HDF5 (checked likewise).")
    mask_rate: Optional[float] = setting(None, "Packed data: fraction of tokens masked each time a sequence is read, 80/10/10 (default: the "
                                          "architecture's: 0.15 BERT, 0.30 ModernBERT). NVIDIA HDF5 stores its masks.")
    # --- objective / optimisation
    objective: str = setting("mlm_nsp", "Training objective: mlm_nsp (BERT: masked LM + next sentence), mlm (masked LM only: BERT, "
                                   "ModernBERT) or clm (next-token prediction: Llama).")
    max_steps: int = setting(1000, "Optimizer steps of this phase (phase 2: steps after --phase1_end_step).")
    dense_seq_output: bool = setting(True, "Compute the MLM head only on masked positions (NVIDIA's dense sequence output).")
    # --- precision / backend
    fp16: bool = setting(False, "Same as --precision fp16 (dynamic loss scaling).")
    bf16: bool = setting(False, "Same as --precision bf16.")
    ort_memory_opt_level: int = setting(0, "ORTMODULE_MEMORY_OPT_LEVEL: 0 off, 1 recompute all transformer layers, 2 aggressive.")
    # --- phases / checkpoints
    phase2: bool = setting(False, "This is phase 2: start from phase 1's checkpoint with a fresh optimizer and schedule.")
    phase1_end_step: int = setting(0, "Global step at which phase 1 ended; phase-2 steps are numbered after it (0: the phase-1 checkpoint's step).")
    resume_step: int = setting(-1, "With --resume_from_checkpoint: the global step to resume from (-1: the newest checkpoint).")
    export_onnx: bool = setting(False, "Also export an ONNX inference model (hf_model/model.onnx) at the end of the phase.")
    skip_hf_export: bool = setting(False, "Do not write the Hugging Face export at the end of the phase.")
    json_summary: Optional[str] = setting(None, "Also write the end-of-phase summary to this JSON file (NVIDIA's dllogger file).",
                                     aliases=("--json-summary",))
    # --- distribution
    local_rank: int = setting(-1, "Accepted for torch.distributed.launch compatibility; the environment wins.", aliases=("--local-rank",))
    allreduce_post_accumulation: bool = setting(False, "Accepted for NVIDIA compatibility (DDP already reduces once per optimizer step).")
    allreduce_post_accumulation_fp16: bool = setting(False, "Accepted for NVIDIA compatibility (ignored).")
    bert_model: Optional[str] = setting(None, "Accepted for NVIDIA compatibility (e.g. bert-large-uncased); the architecture comes from --config_file.")
    do_train: bool = setting(True, "Accepted for NVIDIA compatibility (this entry point always trains).")
    # --- logging
    prefetch: bool = setting(True, "Read the next HDF5 file in a background thread.")

    def __post_init__(self) -> None:
        if self.fp16 and self.bf16:
            raise UsageError("--fp16 and --bf16 are mutually exclusive")
        if self.fp16:
            self.precision = "fp16"
        elif self.bf16:
            self.precision = "bf16"
        self.fp16 = self.precision == "fp16"
        self.bf16 = self.precision == "bf16"
        check_optimisation(self)
        for name in ("max_steps", "num_steps_per_checkpoint", "log_freq", "keep_checkpoints", "eval_batches"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every < 0 or self.early_stopping_patience < 0:
            raise UsageError("--eval_every and --early_stopping_patience must be >= 0")
        if self.eval_every and not self.eval_dir:
            raise UsageError("--eval_every needs --eval_dir (the held-out folder to evaluate on)")
        if self.early_stopping_patience and not self.eval_every:
            raise UsageError("--early_stopping_patience needs --eval_every N (how often the held-out loss is measured)")
        if self.mask_rate is not None and not 0.0 < self.mask_rate < 1.0:
            raise UsageError(f"--mask_rate must be in (0, 1), got {self.mask_rate}")
        for name in ("max_seq_length", "max_predictions_per_seq"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UsageError(f"--{name} must be >= 1, got {getattr(self, name)}")
        objectives = sorted({task for family in FAMILIES.values() for task in family.task_classes})  # ort_training.objectives' names
        if self.objective not in objectives:
            raise UsageError(f"--objective {self.objective!r}: choose one of {objectives}")
        if self.phase2 and not (self.resume_from_checkpoint or self.init_checkpoint):
            raise UsageError("--phase2 needs --resume_from_checkpoint (same output dir) or --init_checkpoint PATH")
        if self.config_file is not None:
            resolve_config_file(self.config_file)  # checked now; kept as given, so a command line stays portable
        if self.config_file is not None or (self.init_checkpoint and Path(self.init_checkpoint).exists()):
            self.check_architecture()
        if self.deepspeed is not None:
            resolve_deepspeed_config(self.deepspeed)
        if self.hpo_trials or self.hpo_space:
            from ort_training.tasks.hpo import check_search_settings

            check_search_settings(self)  # the space and every corner of it: refused here, before OUTPUT_DIR is made

    def model_config_path(self) -> str:
        """--config_file, else the config.json of a Hugging Face --init_checkpoint, else the shipped base."""
        if self.config_file is not None:
            return resolve_config_file(self.config_file)
        if self.init_checkpoint:
            from ort_training.weights_import import hf_config_path

            found = hf_config_path(self.init_checkpoint)
            if found is not None:
                return str(found)
        return resolve_config_file("base")

    def check_architecture(self) -> None:
        """The config's family must run this backend, attention choice and objective: said at start-up."""
        family = family_of_file(self.model_config_path())
        family.check_backend(self.backend)
        family.check_precision(self.precision)
        if self.attention != "auto":
            family.resolve_attention(self.attention, self.backend, "cpu")  # explicit choices do not depend on the device
        if self.objective not in family.task_classes and self.objective in FINETUNING_TASKS:  # finetune's --task
            tasks = ", ".join(t for t in family.task_classes if t in FINETUNING_TASKS) or "none"
            raise UsageError(f"{family.name} has no {self.objective} model here (its fine-tuning models: {tasks}; "
                             "sequence_classification serves --task single_label, multi_label and regression)")
        if self.objective not in family.task_classes:
            raise UsageError(f"--objective {self.objective} is not available for {family.name} (it pretrains with "
                             f"{', '.join(family.pretraining_tasks)}); pass --objective {family.pretraining_tasks[-1]}")

    @property
    def micro_batch_size(self) -> int:
        return self.train_batch_size // self.gradient_accumulation_steps


def check_optimisation(cfg) -> None:
    """The batch and optimizer settings every training entry point shares (pretraining, fine-tuning and, through
    them, the launchers): checked here once. `cfg` has train_batch_size, gradient_accumulation_steps,
    learning_rate, warmup_proportion, weight_decay, max_grad_norm and dropout, named as the flags."""
    for name in ("train_batch_size", "gradient_accumulation_steps"):  # before the division below
        if getattr(cfg, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.train_batch_size % cfg.gradient_accumulation_steps:
        raise UsageError(f"--train_batch_size {cfg.train_batch_size} must be divisible by --gradient_accumulation_steps "
                         f"{cfg.gradient_accumulation_steps}")
    if not (math.isfinite(cfg.learning_rate) and cfg.learning_rate > 0):  # nan and inf fail here, not as NaN weights later
        raise UsageError(f"--learning_rate must be > 0 and finite, got {cfg.learning_rate}")
    if not 0.0 <= cfg.warmup_proportion < 1.0:
        raise UsageError(f"--warmup_proportion must be in [0, 1), got {cfg.warmup_proportion}")
    for name in ("weight_decay", "max_grad_norm"):
        if not (math.isfinite(getattr(cfg, name)) and getattr(cfg, name) >= 0):
            raise UsageError(f"--{name} must be >= 0 and finite, got {getattr(cfg, name)}")
    if cfg.dropout is not None and not 0.0 <= cfg.dropout < 1.0:
        raise UsageError(f"--dropout must be in [0, 1), got {cfg.dropout}")


SHIPPED_DEEPSPEED = ("zero1", "zero2")


def resolve_deepspeed_config(name: str) -> str:
    """A DeepSpeed JSON path, or a shipped one by name ("zero1", "zero2": only the ZeRO stage; batch,
    accumulation and precision are filled from the trainer's flags)."""
    if Path(name).is_file():
        return name
    shipped = PACKAGE_CONFIGS / f"deepspeed_{name}.json"
    if shipped.is_file():
        return str(shipped)
    raise UsageError(f"--deepspeed {name}: no such file (shipped: {', '.join(SHIPPED_DEEPSPEED)})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ort_training.run_pretraining",
        description="One phase of LAMB pretraining of BERT with ONNX Runtime (ORTModule), eager or torch.compile. "
                    "Both phases of a recipe: python -m ort_training.pretrain --recipe NAME.",
    )
    parser.add_argument("--config", default=None, help="YAML file with any of the options below (flags override it).")
    add_arguments(parser, PretrainConfig)
    return parser


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping, or a ValueError naming the file."""
    try:
        with open(path) as fh:
            loaded = yaml.safe_load(fh)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML ({exc})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UsageError(f"{path}: expected a mapping of settings, got {type(loaded).__name__}")
    return loaded


def merge_settings(*layers: dict) -> dict:
    """Later layers win. --precision, --fp16 and --bf16 are one setting: any of them in a later layer
    replaces all three from earlier ones (else a file's `fp16: true` would beat `--precision fp32`)."""
    values: dict = {}
    for layer in layers:
        if {"precision", "fp16", "bf16"} & set(layer):
            for key in ("precision", "fp16", "bf16"):
                values.pop(key, None)
        values.update(layer)
    return values


def parse_config(argv: list[str] | None = None) -> PretrainConfig:
    """defaults < --config YAML < flags, resolved here only."""
    parser = build_parser()

    def build(ns: dict) -> PretrainConfig:
        yaml_path = ns.pop("config")
        loaded = read_yaml(yaml_path) if yaml_path else {}
        return from_dict(PretrainConfig, merge_settings(loaded, ns), source=f"--config {yaml_path}" if yaml_path else "flags")

    return parse_into(parser, build, argv)
