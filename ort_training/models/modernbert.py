"""ModernBERT (Warner et al. 2024; Clinical / BioClinical ModernBERT): RoPE, alternating local/global
attention, 8,192 tokens, no segment ids, MLM only. Eager and torch.compile backends: ORTModule fails to
build its graph."""

from __future__ import annotations

from ort_training.models.base import ModelFamily, WeightNames


def _encode(model, input_ids, token_type_ids, attention_mask):
    return model.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)[0], None


def _mlm_head(model):
    return lambda hidden: model.decoder(model.head(hidden))


MODERNBERT = ModelFamily(
    name="modernbert",
    model_type="modernbert",
    config_class_name="ModernBertConfig",
    task_classes={"mlm": "ModernBertForMaskedLM", "sequence_classification": "ModernBertForSequenceClassification",
                  "token_classification": "ModernBertForTokenClassification"},
    backends=("eager", "compile"),
    backend_refusal=("ONNX Runtime training (ORTModule, frozen at 1.19.2) cannot build ModernBERT's training graph "
                     "(\"This is an invalid model. Error: Duplicate definition of name (_grad)\")."),
    attention={"eager": ("eager", "sdpa"), "compile": ("eager", "sdpa")},
    # CPU: SDPA at every length (bench_backends.py --sweep on a quiet 2-core machine, torch 2.6: 1.06x eager at 512
    # tokens up to 1.30x at 4,096, and a flat peak memory); GPU: SDPA (FlashAttention / memory-efficient kernels).
    # The sweep says whether this choice is ever the slower one (docs/ort_training.md, "Benchmark").
    auto_attention={"cpu": ((None, "sdpa"),), "cuda": ((None, "sdpa"),)},
    token_types=False,
    mask_rate=0.30,  # ModernBERT and MosaicBERT mask 30% (answerdotai/ModernBERT's training configs)
    dropout_fields=("embedding_dropout", "attention_dropout", "mlp_dropout"),
    # The tokenizer decides these ids; a config from elsewhere (ModernBERT's 50,368-token BPE) would point past a
    # corpus-trained vocabulary.
    special_token_fields={"pad_token_id": "pad", "cls_token_id": "cls", "sep_token_id": "sep", "bos_token_id": "cls",
                          "eos_token_id": "sep"},
    weights=WeightNames(
        prefix="model.",
        bare_markers=("embeddings.", "layers."),
        vocab_keys=("model.embeddings.tok_embeddings.weight", "decoder.weight", "decoder.bias"),
        head_prefixes=("head.", "decoder."),
        head_groups=("head.", "decoder."),
        embedding="model.embeddings.tok_embeddings.weight",
        decoder="decoder.weight",
        config_must_match=("num_attention_heads", "hidden_activation", "global_attn_every_n_layers", "local_attention",
                           "global_rope_theta", "local_rope_theta", "classifier_pooling"),
    ),
    shipped_configs=("modernbert_tiny", "modernbert_base", "modernbert_large"),
    encode=_encode,
    heads={"mlm": _mlm_head},
)
