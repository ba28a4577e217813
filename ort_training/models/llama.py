"""Llama (decoders: Llama-3.2-1B-shaped EHR foundation models as bbj-lab/fms-ehrs trains them on tokenized CLIF
timelines): RoPE, grouped-query attention, SwiGLU, RMSNorm, causal LM. Every backend.

ORTModule (onnxruntime-training 1.19.2) exports HF Llama only when the model receives a prebuilt 4-D additive
attention mask: with a 2-D mask transformers' mask construction fails to export (`aten::bitwise_and` at opset 17),
with none it fails on `aten::diff`; with the 4-D mask it trains with PyTorch's loss (gradients within 3e-8). So the
family builds the causal + padding mask itself, from arithmetic every exporter knows, on every backend (one path).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ort_training.models.base import ModelFamily, WeightNames

if TYPE_CHECKING:  # torch loads when a mask is built: the family registry (launchers, dry runs) never needs it
    import torch


def additive_causal_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, L] 1/0 padding mask -> [B, 1, L, L] float32 additive mask: 0 where query t may attend key s (s <= t and
    s is a real token), float32's lowest value elsewhere. A padded query row still sees the real keys before it,
    so no row is fully masked (no NaN in softmax)."""
    import torch

    length = attention_mask.shape[1]
    causal = torch.ones(length, length, device=attention_mask.device).tril()
    allowed = causal[None, None, :, :] * attention_mask[:, None, None, :].float()
    return (1.0 - allowed) * torch.finfo(torch.float32).min


def _encode(model, input_ids, token_type_ids, attention_mask):
    out = model.model(input_ids=input_ids, attention_mask=additive_causal_mask(attention_mask), use_cache=False, return_dict=False)
    return out[0], None


LLAMA = ModelFamily(
    name="llama",
    model_type="llama",
    config_class_name="LlamaConfig",
    task_classes={"clm": "LlamaForCausalLM", "sequence_classification": "LlamaForSequenceClassification"},
    backends=("ort", "eager", "compile"),
    attention={"ort": ("eager", "sdpa"), "eager": ("eager", "sdpa"), "compile": ("eager", "sdpa")},
    # Not swept yet for Llama: SDPA everywhere, as for ModernBERT (rotary, no learned positions).
    auto_attention={"cpu": ((None, "sdpa"),), "cuda": ((None, "sdpa"),)},
    token_types=False,
    vocab_from_data=True,  # fms-ehrs: the vocabulary is the timelines'
    dropout_fields=("attention_dropout",),
    # The timeline tokenizer decides these ids (data_prep timelines: [TL_START] / [TL_END] / [PAD]).
    special_token_fields={"pad_token_id": "pad", "bos_token_id": "cls", "eos_token_id": "sep"},
    weights=WeightNames(
        prefix="model.",
        bare_markers=("embed_tokens.", "layers."),
        vocab_keys=("model.embed_tokens.weight", "lm_head.weight"),
        head_prefixes=("lm_head.",),
        head_groups=("lm_head.",),
        embedding="model.embed_tokens.weight",
        decoder="lm_head.weight",
        config_must_match=("num_attention_heads", "num_key_value_heads", "hidden_act", "rope_theta", "rms_norm_eps",
                           "rope_scaling", "head_dim"),
    ),
    architecture_fields=("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                         "intermediate_size", "max_position_embeddings"),
    shipped_configs=("llama_tiny", "llama_1b"),
    encode=_encode,
    model_mask=additive_causal_mask,
    heads={"lm": lambda model: model.lm_head},
)
