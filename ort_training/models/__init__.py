"""The architecture registry: a config's `model_type` picks its family (as Hugging Face's Auto* classes
do); NVIDIA's bert_config.json files carry no model_type and are BERT. Encoders (BERT, ModernBERT) and decoders
(Llama)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ort_training.models.base import ATTENTION_CHOICES, BACKENDS, VOCAB_MULTIPLE, ModelFamily, WeightNames, read_config_json
from ort_training.models.bert import BERT
from ort_training.models.llama import LLAMA
from ort_training.models.modernbert import MODERNBERT
from ort_training.models.t5 import T5
from ort_training.errors import UsageError

if TYPE_CHECKING:
    from transformers import PretrainedConfig

FAMILIES: dict[str, ModelFamily] = {f.model_type: f for f in (BERT, MODERNBERT, LLAMA, T5)}
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
SHIPPED_CONFIGS: tuple[str, ...] = tuple(name for f in FAMILIES.values() for name in f.shipped_configs)

__all__ = ["ATTENTION_CHOICES", "BACKENDS", "BERT", "CONFIG_DIR", "FAMILIES", "LLAMA", "MODERNBERT", "SHIPPED_CONFIGS", "T5", "VOCAB_MULTIPLE",
           "ModelFamily", "WeightNames", "family_of", "family_of_file", "resolve_config_file"]


def family_of(config: PretrainedConfig | dict) -> ModelFamily:
    model_type = config.get("model_type", "bert") if isinstance(config, dict) else getattr(config, "model_type", "bert")
    try:
        return FAMILIES[model_type or "bert"]
    except KeyError:
        raise UsageError(f"model_type {model_type!r} is not supported; this bundle trains {', '.join(FAMILIES)}") from None


def resolve_config_file(name: str) -> str:
    """A path, or a shipped config by name ("tiny", "modernbert_base", "bert_tiny_config.json")."""
    if Path(name).is_file():
        return name
    for cand in (CONFIG_DIR / name, CONFIG_DIR / f"{name}_config.json", CONFIG_DIR / f"bert_{name}_config.json"):
        if cand.is_file():
            return str(cand)
    raise UsageError(f"--config_file {name}: no such file (shipped: {', '.join(SHIPPED_CONFIGS)})")


def family_of_file(path: str | Path) -> ModelFamily:
    """The family of a config JSON (a path or a shipped name); an unknown model_type is an error naming the file."""
    path = resolve_config_file(str(path))
    config = read_config_json(path)
    if not isinstance(config, dict):
        raise UsageError(f"{path}: expected a JSON object of config fields, got {type(config).__name__}")
    try:
        return family_of(config)
    except UsageError as exc:
        raise UsageError(f"{path}: {exc}") from None


def load_model_config(path: str | Path, dropout: float | None = None, attention: str = "eager") -> PretrainedConfig:
    """Read a config JSON of any family (see ModelFamily.load_config)."""
    path = resolve_config_file(str(path))
    return family_of_file(path).load_config(path, dropout, attention)
