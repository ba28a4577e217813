"""Hugging Face export (safetensors + tokenizer) and optional ONNX inference export.

The training config pads vocab_size to a multiple of 8; the export trims embeddings and the MLM
decoder back to the real vocabulary so the model and tokenizer agree (a fill-mask pipeline would
otherwise be able to predict ids the tokenizer cannot decode).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from transformers import BertForMaskedLM, BertForPreTraining, BertTokenizerFast

from .checkpoint import atomic_dir
from .model import BertPretrainingModel

logger = logging.getLogger(__name__)

_VOCAB_ROWS = ("bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight", "cls.predictions.bias", "cls.predictions.decoder.bias")


def export_hf(model: BertPretrainingModel, out_dir: str | Path, vocab_file: str | None = None, do_lower_case: bool = True,
              export_onnx: bool = False) -> Path:
    """Write `save_pretrained` model (+ tokenizer when a vocab is given) to out_dir atomically."""
    out = Path(out_dir)
    vocab_size = getattr(model.config, "original_vocab_size", model.config.vocab_size)
    tokenizer = BertTokenizerFast(vocab_file=vocab_file, do_lower_case=do_lower_case) if vocab_file else None
    if tokenizer is not None:
        vocab_size = len(tokenizer)
    config = copy.deepcopy(model.config)
    config.vocab_size = vocab_size
    config.architectures = ["BertForPreTraining"]
    for attr in ("original_vocab_size",):
        if hasattr(config, attr):
            delattr(config, attr)
    state = {k: (v[:vocab_size] if k in _VOCAB_ROWS else v) for k, v in model.bert.state_dict().items()}
    hf = BertForPreTraining(config)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if m not in _VOCAB_ROWS]:
        raise RuntimeError(f"HF export: state dict mismatch (missing {missing}, unexpected {unexpected})")
    hf.tie_weights()
    with atomic_dir(out) as tmp:
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        hf.save_pretrained(tmp, safe_serialization=True)
        if export_onnx:
            export_onnx_model(tmp, tmp / "model.onnx")
    logger.info("exported Hugging Face model to %s", out)
    return out


def export_onnx_model(hf_dir: str | Path, onnx_path: str | Path, seq_len: int = 128) -> Path:
    """ONNX (opset 17) of BertForMaskedLM for inference: inputs input_ids/attention_mask/token_type_ids, output logits."""
    model = BertForMaskedLM.from_pretrained(hf_dir, attn_implementation="eager").eval()
    dummy = torch.ones(1, seq_len, dtype=torch.long)
    axes = {0: "batch", 1: "sequence"}
    torch.onnx.export(
        model,
        (dummy, dummy, torch.zeros_like(dummy)),
        str(onnx_path),
        input_names=["input_ids", "attention_mask", "token_type_ids"],
        output_names=["logits"],
        dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes, "logits": axes},
        opset_version=17,
    )
    return Path(onnx_path)
