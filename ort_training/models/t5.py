"""T5 (encoder-decoder: T5 v1.1 shapes, as nanoT5 and DEPTH pretrain them): relative position buckets instead of
position embeddings, gated-GELU feed-forward, RMS layer norm, untied input and output embeddings. Pretrained with
span corruption or DEPTH's sentence un-shuffling (ort_training.objectives.span_corruption, .depth); the exported
class is T5ForConditionalGeneration (AutoModelForSeq2SeqLM).

What differs from the other families, and where it is said:
- Attention: eager only. transformers refuses SDPA for T5 (its attention adds a learned position bias to the scores,
  which SDPA's kernels do not take); ORTModule trains it with the eager kernel (gradients within 3e-8 of PyTorch's).
- Precision: fp32 and bf16. T5's activations overflow fp16 (the feed-forward outputs grow past 65504 and the loss
  turns NaN; T5 v1.1 was trained in bf16), so --precision fp16 is refused at start-up (ModelFamily.precisions).
- Config: T5 configs have no max_position_embeddings or intermediate_size; the family checks its own fields
  (architecture_fields) and any sequence length is accepted (relative positions; memory is the limit).
- Vocabulary: the objectives reserve sentinels, <eosen> and sentence tokens above the data tokenizer's ids
  (ort_training.data.collate_t5.reserved_tokens): the config's vocab_size must leave room for them.
- Fine-tuning (`python -m ort_training.finetune --task single_label|multi_label|regression`): the encoder only, its
  states mean-pooled over the real tokens, then a linear layer (models/t5_classifier.py,
  T5EncoderForSequenceClassification). Not transformers' T5ForSequenceClassification: that runs the decoder as well
  and reads the decoder's state at the last EOS, which needs the same count of EOS ids in every text (the family's EOS
  is the data tokenizer's [SEP]), and a span-corruption decoder has never read a whole text; the encoder is what
  pretraining trained to represent text (and what issue 29 asks for). The weights come from the export's `shared.`
  and `encoder.` tensors (`classifier_base`); the decoder and lm_head are left out. No token classification yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ort_training.models.base import ModelFamily, WeightNames

if TYPE_CHECKING:  # torch loads when a mask is built: the family registry (launchers, dry runs) never needs it
    import torch


@dataclass(frozen=True)
class T5Family(ModelFamily):
    def check_sequence_length(self, config, seq_len, source, config_source) -> None:
        """Relative position buckets read any length: nothing to refuse (the collator sizes the encoder and decoder)."""


def hierarchical_mask(input_mask: torch.Tensor, sentence_index: torch.Tensor, sentence_token: torch.Tensor,
                      dtype: torch.dtype | None = None) -> torch.Tensor:
    """DEPTH's hierarchical encoder self-attention as a [B, 1, L, L] additive mask: query i may attend key j when j is
    a real token and, if i is a sentence token, j belongs to i's sentence (`sentence_index` equal); other tokens see
    every real token. Without sentence tokens it is the plain padding mask (float32 unless `dtype` says)."""
    import torch

    dtype = dtype or torch.float32
    real = input_mask[:, None, :].to(dtype)
    same = (sentence_index[:, :, None] == sentence_index[:, None, :]).to(dtype)
    is_sentence = sentence_token[:, :, None].to(dtype)
    allowed = real * (1 - is_sentence + is_sentence * same)
    return ((1.0 - allowed) * torch.finfo(dtype).min)[:, None]


def hierarchical_logits(model, input_ids, input_mask, decoder_input_ids, sentence_index, sentence_token) -> torch.Tensor:
    """T5ForConditionalGeneration's target scores with the encoder's self-attention mask replaced by
    `hierarchical_mask`. transformers 4.57's T5Stack takes a 2-D mask only and hands its [B, 1, 1, L] form to the first
    block, which adds it to the relative position bias that every later block reuses: a forward pre-hook on that block
    swaps in the [B, 1, L, L] mask (cross-attention keeps the 2-D padding mask)."""
    def swap(module, args):
        mask = hierarchical_mask(input_mask, sentence_index, sentence_token, args[1].dtype)
        return (args[0], mask, *args[2:])

    handle = model.encoder.block[0].register_forward_pre_hook(swap)
    try:
        return model(input_ids=input_ids, attention_mask=input_mask, decoder_input_ids=decoder_input_ids, use_cache=False,
                     return_dict=False)[0]
    finally:
        handle.remove()


def _encode(model, input_ids, token_type_ids, attention_mask):
    return model.encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)[0], None


T5 = T5Family(
    name="t5",
    model_type="t5",
    config_class_name="T5Config",
    task_classes={"span_corruption": "T5ForConditionalGeneration", "depth": "T5ForConditionalGeneration",
                  "depth_hierarchical": "T5ForConditionalGeneration",
                  "sequence_classification": "ort_training.models.t5_classifier:T5EncoderForSequenceClassification"},
    backends=("ort", "eager"),
    backend_refusal="torch.compile has not been measured on T5 in this bundle.",
    attention={"ort": ("eager",), "eager": ("eager",)},
    auto_attention={"cpu": ((None, "eager"),), "cuda": ((None, "eager"),)},
    precisions=("fp32", "bf16"),
    precision_refusal="T5's activations overflow fp16 (the loss turns NaN); T5 v1.1 trains in bf16.",
    token_types=False,
    dropout_fields=("dropout_rate",),
    # Packed data has no T5 <pad>/</s>: the data tokenizer's [PAD] starts the decoder, its [SEP] ends a target.
    special_token_fields={"pad_token_id": "pad", "decoder_start_token_id": "pad", "eos_token_id": "sep"},
    weights=WeightNames(
        prefix="",
        bare_markers=("shared.", "encoder.block."),
        vocab_keys=("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight",
                    "transformer.shared.weight", "transformer.encoder.embed_tokens.weight"),  # the last two: the classifier's
        head_prefixes=("lm_head.",),
        head_groups=("lm_head.",),
        embedding="shared.weight",
        decoder="lm_head.weight",
        # T5's encoder and decoder read the shared embedding: save_pretrained stores it once, as shared.weight
        bias_aliases=(("shared.weight", "encoder.embed_tokens.weight"), ("shared.weight", "decoder.embed_tokens.weight")),
        config_must_match=("num_heads", "d_kv", "feed_forward_proj", "relative_attention_num_buckets",
                           "relative_attention_max_distance", "tie_word_embeddings", "layer_norm_epsilon"),
    ),
    architecture_fields=("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
                         "relative_attention_num_buckets"),
    shipped_configs=("t5_tiny", "t5_base"),
    encode=_encode,
    heads={"lm": lambda model: model.lm_head},
    classifier_base="transformer",
)
