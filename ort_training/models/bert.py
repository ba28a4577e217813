"""BERT (Devlin et al. 2019; NVIDIA's and the ORT bioBERT recipe): every backend, segment ids, MLM + NSP."""

from __future__ import annotations

from ort_training.models.base import ModelFamily, WeightNames


def _encode(model, input_ids, token_type_ids, attention_mask):
    out = model.bert(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask, return_dict=False)
    return out[0], (out[1] if model.bert.pooler is not None else None)


BERT = ModelFamily(
    name="bert",
    model_type="bert",
    config_class_name="BertConfig",
    task_classes={"mlm_nsp": "BertForPreTraining", "mlm": "BertForMaskedLM",
                  "sequence_classification": "BertForSequenceClassification", "token_classification": "BertForTokenClassification"},
    backends=("ort", "eager", "compile"),
    # SDPA fails in ORT's gradient builder; the eager attention exports cleanly.
    attention={"ort": ("eager",), "eager": ("eager", "sdpa"), "compile": ("eager", "sdpa")},
    # CPU: eager up to 1,024 tokens, SDPA beyond (bench_backends.py --sweep on a quiet 2-core machine, torch 2.6:
    # eager 1.06x SDPA at 512, even at 1,024, SDPA 1.09x eager at 2,048 and 4,096); GPU: SDPA, which dispatches to
    # FlashAttention / memory-efficient kernels. The sweep says whether this choice is ever the slower one
    # (docs/ort_training.md, "Benchmark").
    auto_attention={"cpu": ((1024, "eager"), (None, "sdpa")), "cuda": ((None, "sdpa"),)},
    token_types=True,
    dropout_fields=("hidden_dropout_prob", "attention_probs_dropout_prob"),
    weights=WeightNames(
        prefix="bert.",
        bare_markers=("embeddings.", "encoder."),
        vocab_keys=("bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight",
                    "cls.predictions.bias", "cls.predictions.decoder.bias"),
        head_prefixes=("cls.", "bert.pooler."),
        head_groups=("cls.predictions.", "cls.seq_relationship.", "bert.pooler."),
        embedding="bert.embeddings.word_embeddings.weight",
        decoder="cls.predictions.decoder.weight",
        bias_aliases=(("cls.predictions.bias", "cls.predictions.decoder.bias"),),
        # NVIDIA modeling.py -> HF names (the published differences).
        renames=((".intermediate.dense_act.", ".intermediate.dense."),
                 ("bert.pooler.dense_act.", "bert.pooler.dense."),
                 ("cls.predictions.transform.dense_act.", "cls.predictions.transform.dense.")),
        config_must_match=("num_attention_heads", "hidden_act", "position_embedding_type"),
    ),
    architecture_fields=("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                         "max_position_embeddings", "type_vocab_size"),
    shipped_configs=("tiny", "base", "large"),
    encode=_encode,
    heads={"mlm": lambda model: model.cls.predictions, "nsp": lambda model: model.cls.seq_relationship},
    legacy_prefixes=("bert.",),  # checkpoints written before the model seam kept the HF model under `bert.`
    onnx_optimizer="bert",  # fuses attention, SkipLayerNorm and bias-GELU
)
