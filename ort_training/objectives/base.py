"""What an objective owns, as torchtitan's train spec owns it: the Hugging Face class that holds the weights (the
config's architecture family answers that, models/), the collator that makes its batch from raw sequences, the
batch keys its loss reads, the loss, its step metrics and curves, its held-out evaluation and the summary's
headline metric. The trainer, the metrics log, the plots and the evaluation follow the objective; none of them
asks which one it runs.

The loss is computed inside the model's forward, so ORTModule exports (and optimizes) forward, loss and
gradients as one graph. `forward` returns (loss, stats): `stats` is a 1-D tensor of the values named in
`stat_names`, summed over micro-batches and averaged over ranks by the trainer, then turned into metrics by
`metrics`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar, Iterable

import torch
from transformers import PretrainedConfig, PreTrainedModel

from ort_training.errors import UsageError
from ort_training.models import ModelFamily, family_of


class Objective(ABC):
    name: ClassVar[str]
    inputs_keys: ClassVar[tuple[str, ...]]
    """Batch entries forward takes, in this order (ORTModule exports positional inputs most reliably);
    `segment_ids` is left out for families without segment ids (`batch_keys`)."""
    stat_names: ClassVar[tuple[str, ...]]
    curves: ClassVar[tuple[str, ...]]
    """Metrics drawn in training_curves.png beside the loss."""
    headline: ClassVar[str | None] = None
    """The step metric the phase summary reports as `final_<headline>` (and evaluation as `eval_<headline>`)."""
    eval_loss: ClassVar[str | None] = None
    """The key of `evaluate`'s held-out loss (what --early_stopping_patience watches)."""
    premasked_data: ClassVar[bool] = False
    """Whether NVIDIA-schema HDF5 (masks and sentence pairs stored, batches arrive made) serves this objective."""
    family: ModelFamily | None = None
    """Set by `build`: the architecture family of the config."""
    scores_exports: ClassVar[bool] = False
    """Whether `python -m ort_training.evaluate` scores a family's exports with this objective on packed data (the
    plain objective of each kind: masked LM, next token, span corruption; every model of a family on the same batches)."""

    @property
    def batch_keys(self) -> tuple[str, ...]:
        if self.family is not None and not self.family.token_types:
            return tuple(k for k in self.inputs_keys if k != "segment_ids")
        return self.inputs_keys

    def build(self, config: PretrainedConfig) -> PreTrainedModel:
        """The config's family's Hugging Face class for this objective (also the class of the export)."""
        model = family_of(config).hf_class(self.name)(config)
        self.attach(model)
        return model

    def attach(self, model: PreTrainedModel) -> None:
        """Learn what batches and losses need from a model of this objective's class (built here, or an export loaded
        for evaluation): its architecture family."""
        self.family = family_of(model.config)

    def inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        missing = [k for k in self.batch_keys if k not in batch]
        if missing:
            raise KeyError(f"objective {self.name!r} needs batch keys {missing}; the data holds {sorted(batch)}")
        return tuple(batch[k] for k in self.batch_keys)

    def _encoder_inputs(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, tuple]:
        """(input_ids, segment_ids or None, input_mask, the rest) of forward's positional inputs."""
        if self.family.token_types:
            input_ids, segment_ids, input_mask, *rest = inputs
        else:
            (input_ids, input_mask, *rest), segment_ids = inputs, None
        return input_ids, segment_ids, input_mask, tuple(rest)

    def collator(self, family: ModelFamily, mask_rate: float | None = None):
        """The collator that makes this objective's batches from packed sequences (ort_training.data.collate)."""
        raise UsageError(f"--objective {self.name} does not train on packed token sequences")

    def check_premasked(self, where: str) -> None:
        """NVIDIA-schema HDF5 arrives masked: refuse it for an objective that needs raw sequences."""
        if not self.premasked_data:
            raise UsageError(f"{where}: NVIDIA-schema HDF5 holds masked-LM instances, which --objective {self.name} cannot "
                             "train on; make packed token sequences (`python -m data_prep packed` or `timelines`) and pass that folder")

    @abstractmethod
    def forward(self, model: PreTrainedModel, dense_seq_output: bool, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ...

    @abstractmethod
    def metrics(self, sums: dict[str, float], micro_batches: int) -> dict[str, float]:
        """Step metrics from the stats summed over `micro_batches` micro-batches (mean over ranks)."""

    def evaluate(self, model: PreTrainedModel, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Held-out metrics of a Hugging Face model of this objective's class (the trainer's weights or the export),
        each held-out batch once."""
        raise UsageError(f"--objective {self.name} has no held-out pretraining evaluation; leave --eval_dir out")

    def baselines(self, model: PreTrainedModel, held_out: list[Path], train_dir: Path, max_files: int) -> dict:
        """What a model that learnt nothing scores on `evaluate`'s metrics (e.g. a unigram model of the training files
        in `train_dir`), reported beside an export's held-out evaluation; none by default."""
        return {}

    def summary(self, last_record: dict) -> dict:
        """The phase summary's objective-specific entries, from the last logged step."""
        return {f"final_{self.headline}": last_record.get(self.headline)} if self.headline else {}
