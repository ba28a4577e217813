"""The trained module: a Hugging Face model of the config's family (its objective's class) whose forward
computes the objective's loss, so ORTModule exports forward, loss and gradients as one graph."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig

from ort_training.objectives import Objective, get_objective
from ort_training.errors import UsageError


def check_vocab_fits(n_tokens: int, tokenizer_source: str, config: PretrainedConfig, config_file: str) -> None:
    """A tokenizer larger than the config's vocab_size gives token ids past the embedding table (an index
    error deep in training, or garbage after the export trims the rows): refuse it up front."""
    limit = getattr(config, "original_vocab_size", config.vocab_size)
    if n_tokens > limit:
        raise UsageError(f"{tokenizer_source} has {n_tokens} tokens but --config_file {config_file} has vocab_size "
                         f"{limit}; use a config with vocab_size >= {n_tokens} (the tokenizer the data was made with)")


class PretrainingModel(nn.Module):
    """A Hugging Face model (`self.hf_model`, the objective's class for the config's architecture family)
    whose forward computes the objective's loss: forward(*objective.batch_keys) -> (loss, stats). See
    objectives.py and models/."""

    def __init__(self, config: PretrainedConfig, dense_seq_output: bool = True, objective: str | Objective = "mlm_nsp"):
        super().__init__()
        self.config = config
        self.dense_seq_output = dense_seq_output
        self.objective = get_objective(objective) if isinstance(objective, str) else objective
        self.hf_model = self.objective.build(config)
        self.family = self.objective.family
        self._register_load_state_dict_pre_hook(self._rename_legacy_keys)

    def forward(self, *inputs):
        return self.objective.forward(self.hf_model, self.dense_seq_output, *inputs)

    def inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Positional inputs in forward's order (ORTModule exports positional args most reliably)."""
        return self.objective.inputs(batch)

    def _rename_legacy_keys(self, state_dict, prefix, *args) -> None:
        """Checkpoints written before the model seam kept the Hugging Face model under the family's legacy prefix."""
        for legacy in self.family.legacy_prefixes:
            for key in [k for k in state_dict if k.startswith(prefix + legacy)]:
                state_dict[prefix + "hf_model." + key[len(prefix + legacy):]] = state_dict.pop(key)
