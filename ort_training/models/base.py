"""What an architecture family owns, in one object: its config class and how its config is read (vocab
padding, dropout, attention), the Hugging Face class for each task, which backends and attention kernels
it runs with, the tensor names weight import needs, and what the objectives ask of it: the base model's hidden
states (`encode`) and a head per task (`heads`: "mlm", "nsp", "lm").

The training loop never names an architecture; objectives ask the family of the config they build.
A new family is a new module beside bert.py, modernbert.py and llama.py, registered in models/__init__.py
(docs/ort_training.md, "Adding an architecture").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar

from ort_training.errors import UsageError

if TYPE_CHECKING:  # transformers (and torch) load when a class is first asked for: a launcher or dry run never needs them
    import torch
    from transformers import PretrainedConfig, PreTrainedModel

ATTENTION_CHOICES = ("auto", "eager", "sdpa")
BACKENDS = ("ort", "eager", "compile")
FINETUNING_TASKS = ("sequence_classification", "token_classification")
VOCAB_MULTIPLE = 8
"""Training pads the embedding rows to a multiple of this (tensor-core friendly, as NVIDIA does); the export trims them."""


@dataclass(frozen=True)
class WeightNames:
    """Tensor names `weights_import` needs to map a published checkpoint onto the family's HF classes."""

    prefix: str
    """The base model's attribute in the task classes ('bert.', 'model.'); a bare base model lacks it."""
    bare_markers: tuple[str, ...]
    """Key beginnings that mark a bare base model (no prefix: sentence-transformers, AutoModel)."""
    vocab_keys: tuple[str, ...]
    """Tensors whose first dimension is the vocabulary (may differ by padding only)."""
    head_prefixes: tuple[str, ...]
    """What a source may lack: heads. Missing tensors elsewhere are an error."""
    head_groups: tuple[str, ...]
    """Head groups a source may have that the model does not (skipped and listed)."""
    embedding: str
    decoder: str
    """The MLM decoder weight tied to `embedding`."""
    bias_aliases: tuple[tuple[str, str], ...] = ()
    """Pairs of names for one tensor (a checkpoint may store either)."""
    renames: tuple[tuple[str, str], ...] = ()
    """Substring renames of a foreign naming (NVIDIA's modeling.py) to HF's."""
    config_must_match: tuple[str, ...] = ()
    """Config fields that change the computation without changing a tensor's shape."""


@dataclass(frozen=True)
class ModelFamily:
    name: str
    model_type: str
    """The `model_type` of its Hugging Face config.json."""
    config_class_name: str
    """The Hugging Face config class, by name: classes are imported when first used (ModernBERT's modeling
    module compiles functions at import and starts an inductor worker pool; a BERT run never pays for it)."""
    task_classes: dict[str, str]
    """Objective/task name -> the name of the HF class that holds the weights (and is exported): a transformers class
    by name, or 'module:Class' for one of the bundle's own (T5's encoder classifier, models/t5_classifier.py)."""
    backends: tuple[str, ...]
    backend_refusal: str = ""
    """Why the other backends cannot train this family (said at start-up)."""
    attention: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Backend -> the attention implementations it can run."""
    precisions: tuple[str, ...] = ("fp32", "fp16", "bf16")
    precision_refusal: str = ""
    """Why the other precisions cannot train this family (T5: fp16 overflows); checked where the backend is."""
    auto_attention: dict[str, tuple[tuple[int | None, str], ...]] = field(default_factory=dict)
    """Device type -> what `--attention auto` picks by sequence length: (longest length or None for any, kernel) steps
    in order, from benchmarks/bench_backends.py --sweep's measurements."""
    token_types: bool = True
    """Whether the model reads segment ids (token_type_ids)."""
    mask_rate: float = 0.15
    """Fraction of tokens masked when packed data is read (--mask_rate's default for the family)."""
    vocab_from_data: bool = False
    """From scratch, the vocabulary is the data's tokenizer's (decoders on EHR timelines: a few hundred event tokens,
    where a config's 128k-token vocabulary would be mostly untrained rows); a config's vocab_size is then an upper bound."""
    dropout_fields: tuple[str, ...] = ()
    special_token_fields: dict[str, str] = field(default_factory=dict)
    """config field -> tokenizer special token role ('pad', 'cls', 'sep', 'mask') the config must agree with."""
    weights: WeightNames | None = None
    architecture_fields: tuple[str, ...] = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                            "intermediate_size", "max_position_embeddings")
    """Config fields that fix the parameters' shapes and how they are read: checked when a config is loaded and
    recorded by checkpoints, so a resume with another architecture is refused by name (`architecture`)."""
    shipped_configs: tuple[str, ...] = ()
    encode: Callable = None
    """encode(hf_model, input_ids, token_type_ids, attention_mask) -> (sequence_output, pooled_output or None): the
    base model's hidden states, with the attention mask in the form this family trains with on every backend."""
    model_mask: Callable | None = None
    """model_mask(attention_mask [B, L] of 1/0) -> the mask the family's models are called with (None: the 2-D mask
    as it is). Llama's is a prebuilt 4-D additive causal mask: the form ORTModule can export."""
    heads: dict[str, Callable] = field(default_factory=dict)
    """Head name -> head(hf_model): the module (or function) an objective applies to hidden states: "mlm" (vocabulary
    scores of masked positions), "nsp" (next-sentence scores of the pooled output), "lm" (next-token scores)."""
    classifier_base: str | None = None
    """The attribute of the fine-tuning classes that holds the pretrained base model, where it is not `weights.prefix`
    (T5: 'transformer', the encoder of T5EncoderForSequenceClassification, while the pretraining class is bare)."""
    legacy_prefixes: tuple[str, ...] = ()
    """Prefixes older checkpoints of this bundle used for the Hugging Face model (renamed to `hf_model.` on load)."""
    onnx_optimizer: str | None = None
    """onnxruntime.transformers.optimizer's model_type for this family's ONNX graphs (None: ORT's own graph optimizations)."""

    SHIPPED: ClassVar[Path] = Path(__file__).resolve().parents[1] / "configs"

    @property
    def config_class(self) -> type[PretrainedConfig]:
        import transformers

        return getattr(transformers, self.config_class_name)

    def hf_class(self, task: str) -> type[PreTrainedModel]:
        try:
            name = self.task_classes[task]
        except KeyError:
            raise UsageError(f"{self.name} has no {task!r} model here; it supports {', '.join(self.task_classes)}") from None
        if ":" in name:  # one of the bundle's own classes (imported on first use, as transformers' are)
            import importlib

            module, _, attr = name.partition(":")
            return getattr(importlib.import_module(module), attr)
        import transformers

        return getattr(transformers, name)

    def classifier_class(self, config: dict) -> type[PreTrainedModel] | None:
        """The class that loads a classifier folder whose config.json is `config`, where transformers' Auto classes
        would pick another one: the family's own sequence classifier when the config names it (T5's encoder
        classifier; AutoModelForSequenceClassification would build T5ForSequenceClassification and drop its weights).
        None: the Auto class is right."""
        name = self.task_classes.get("sequence_classification", "")
        if ":" in name and name.partition(":")[2] in (config.get("architectures") or []):
            return self.hf_class("sequence_classification")
        return None

    @property
    def pretraining_tasks(self) -> tuple[str, ...]:
        """The family's pretraining objectives (task classes a published checkpoint's weights are imported into)."""
        return tuple(t for t in self.task_classes if t not in FINETUNING_TASKS)

    def head(self, model: PreTrainedModel, name: str):
        try:
            return self.heads[name](model)
        except KeyError:
            raise UsageError(f"{self.name} has no {name!r} head; it has {', '.join(self.heads)}") from None

    def check_backend(self, backend: str) -> None:
        if backend not in self.backends:
            raise UsageError(f"--backend {backend} cannot train {self.name}: {self.backend_refusal} "
                             f"Use --backend {' or --backend '.join(self.backends)}.")

    def check_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            raise UsageError(f"--precision {precision} cannot train {self.name}: {self.precision_refusal} "
                             f"Use --precision {' or --precision '.join(self.precisions)}.")

    def resolve_attention(self, requested: str, backend: str, device_type: str, seq_len: int | None = None) -> str:
        """The attention implementation to build with: `auto` takes the measured choice of the device for sequences
        of `seq_len` tokens (None: the shortest), limited to what the backend can run; an explicit choice the backend
        cannot run is refused."""
        allowed = self.attention.get(backend, ())
        if requested == "auto":
            steps = self.auto_attention.get(device_type, ((None, "eager"),))
            choice = next((kernel for limit, kernel in steps if limit is None or seq_len is None or seq_len <= limit),
                          steps[-1][1])
            return choice if choice in allowed else allowed[0]
        if requested not in allowed:
            raise UsageError(f"--attention {requested} is not available for {self.name} under --backend {backend} "
                             f"(it runs {', '.join(allowed)}); use --attention auto")
        return requested

    def load_config(self, path: str | Path, dropout: float | None = None, attention: str = "eager") -> PretrainedConfig:
        """The config at `path` with the vocab padded to a multiple of VOCAB_MULTIPLE (the real size kept
        as `original_vocab_size`), dropout overridden when given, and the attention implementation set (the trainer
        sets the resolved one once the data's length is known)."""
        try:
            config = self.config_class.from_json_file(str(path))
        except (OSError, ValueError) as exc:
            raise UsageError(f"--config_file {path}: not a readable {self.name} config JSON ({exc})") from None
        self.check_config(config, path)
        config.original_vocab_size = config.vocab_size
        config.vocab_size += -config.vocab_size % VOCAB_MULTIPLE
        if dropout is not None:
            for name in self.dropout_fields:
                setattr(config, name, dropout)
        config._attn_implementation = attention
        return config

    def check_config(self, config: PretrainedConfig, path: str | Path) -> None:
        """The sizes must be positive integers and the hidden size split evenly over the heads: said here, naming
        the file, instead of as a division error deep in the model's attention."""
        for name in self.architecture_fields:
            value = getattr(config, name, None)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UsageError(f"{path}: {name} must be a positive integer, got {value!r}")
        if config.hidden_size % config.num_attention_heads:
            raise UsageError(f"{path}: hidden_size {config.hidden_size} is not divisible by num_attention_heads "
                             f"{config.num_attention_heads}; each head takes hidden_size / num_attention_heads dimensions")

    def check_sequence_length(self, config: PretrainedConfig, seq_len: int, source: str, config_source: str) -> None:
        """Sequences of `seq_len` tokens need at least that many positions: refused by name rather than as an index
        error in the position embeddings (or, for rotary positions, lengths the model was never built for)."""
        if seq_len > config.max_position_embeddings:
            raise UsageError(f"{source}: sequences of {seq_len} tokens, but {config_source} has max_position_embeddings "
                             f"{config.max_position_embeddings}; use a config with max_position_embeddings >= {seq_len}, "
                             "or shorter sequences")

    def architecture(self, config: PretrainedConfig | dict, task_class: str) -> dict:
        """What a checkpoint's weights are: the family, the task's Hugging Face class and the architecture fields
        (vocab_size as trained: padded). Two equal records load into each other."""
        get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
        record = {"family": self.name, "class": task_class, **{k: get(k) for k in self.architecture_fields}}
        if task_class.endswith("ForSequenceClassification"):
            record["num_labels"] = len(get("id2label") or {}) or get("num_labels")
        return record

    def seq_logits(self, model: PreTrainedModel, input_ids, token_type_ids, attention_mask) -> torch.Tensor:
        """Logits of a task model's own forward (classification heads pool as the family defines)."""
        mask = self.model_mask(attention_mask) if self.model_mask is not None else attention_mask
        kwargs = {"input_ids": input_ids, "attention_mask": mask, "return_dict": False}
        if self.token_types:
            kwargs["token_type_ids"] = token_type_ids
        return model(**kwargs)[0]


def read_config_json(path: str | Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"--config_file {path}: not a readable config JSON ({exc})") from None
