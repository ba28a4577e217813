"""Held-out MLM accuracy of an exported model on NVIDIA-schema HDF5 files.

    python -m ort_training.evaluate --model_dir OUT/hf_model --input_dir TEST_HDF5_DIR [--untrained]
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass

import torch
from transformers import AutoConfig, AutoModelForMaskedLM

from .data import IGNORE_INDEX, PretrainingDataLoader, list_hdf5_files


@dataclass
class EvalConfig:
    model_dir: str
    input_dir: str
    batch_size: int = 32
    max_batches: int = 50
    split: str = "test"
    untrained: bool = False
    seed: int = 0


@torch.no_grad()
def mlm_accuracy(model: torch.nn.Module, batches) -> dict:
    """Accuracy of argmax predictions on masked positions, plus the mean MLM loss. `model` is an HF
    BertForMaskedLM (the export) or BertForPreTraining (the trainer's weights, end-of-phase eval)."""
    model.eval()
    correct = total = 0
    loss_sum = 0.0
    for batch in batches:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["input_mask"], token_type_ids=batch["segment_ids"])
        logits = out.logits if hasattr(out, "logits") else out.prediction_logits
        picked = logits.gather(1, batch["masked_lm_positions"].unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
        labels = batch["masked_lm_labels"]
        valid = labels != IGNORE_INDEX
        correct += int(((picked.argmax(-1) == labels) & valid).sum())
        total += int(valid.sum())
        loss_sum += float(torch.nn.functional.cross_entropy(picked.reshape(-1, picked.shape[-1]).float(), labels.reshape(-1),
                                                            ignore_index=IGNORE_INDEX, reduction="sum"))
    return {"mlm_accuracy": correct / max(total, 1), "mlm_loss": loss_sum / max(total, 1), "masked_tokens": total}


def evaluate(cfg: EvalConfig) -> dict:
    if cfg.untrained:  # same architecture, random weights: the baseline the trained model is compared with
        torch.manual_seed(cfg.seed)
        model = AutoModelForMaskedLM.from_config(AutoConfig.from_pretrained(cfg.model_dir))
    else:
        model = AutoModelForMaskedLM.from_pretrained(cfg.model_dir)
    loader = PretrainingDataLoader(list_hdf5_files(cfg.input_dir, cfg.split, require_match=True), cfg.batch_size, cfg.seed, prefetch=False)
    it = iter(loader)
    batches = (next(it) for _ in range(cfg.max_batches))
    result = mlm_accuracy(model, batches)
    loader.close()
    return {"model_dir": cfg.model_dir, "untrained": cfg.untrained, **result}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m ort_training.evaluate", description=__doc__.strip().splitlines()[0])
    p.add_argument("--model_dir", required=True, help="Hugging Face export folder (OUTPUT_DIR/hf_model).")
    p.add_argument("--input_dir", required=True, help="Folder of held-out NVIDIA-schema HDF5 files.")
    p.add_argument("--batch_size", type=int, default=32, help="Sequences per batch.")
    p.add_argument("--max_batches", type=int, default=50, help="Batches evaluated (the reader cycles files if needed).")
    p.add_argument("--split", default="test", help="Evaluate only files whose name contains this (an error if none do; '' = every *.hdf5).")
    p.add_argument("--untrained", action="store_true", help="Evaluate a randomly initialised model of the same config instead.")
    p.add_argument("--seed", type=int, default=0, help="Seed for sample order and --untrained weights.")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = evaluate(EvalConfig(**vars(args)))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
