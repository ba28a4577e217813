"""Training objectives, one train spec each (base.Objective): masked LM with and without next-sentence prediction,
causal LM, T5 span corruption, DEPTH, sequence and token classification. A new objective is a module here registered in OBJECTIVES, plus the
head its loss needs in the families that train it (models/); the trainer, metrics, plots and evaluation follow it.
"""

from __future__ import annotations

from ort_training.errors import UsageError
from ort_training.models import FAMILIES
from ort_training.objectives.base import Objective
from ort_training.objectives.causal_lm import CausalLM
from ort_training.objectives.depth import Depth, DepthHierarchical
from ort_training.objectives.span_corruption import SpanCorruption
from ort_training.objectives.classification import SequenceClassification, TokenClassification
from ort_training.objectives.masked_lm import MaskedLM, MaskedLMWithNSP, masked_lm_loss, mlm_accuracy

OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (MaskedLMWithNSP, MaskedLM, CausalLM, SequenceClassification,
                                                                    TokenClassification, SpanCorruption, Depth,
                                                                    DepthHierarchical)}
assert set(OBJECTIVES) == {task for family in FAMILIES.values() for task in family.task_classes}, "an objective per family task"

__all__ = ["OBJECTIVES", "CausalLM", "Depth", "DepthHierarchical", "MaskedLM", "MaskedLMWithNSP", "Objective",
           "SequenceClassification", "SpanCorruption", "TokenClassification", "get_objective", "masked_lm_loss", "mlm_accuracy"]


def get_objective(name: str) -> Objective:
    try:
        return OBJECTIVES[name]()
    except KeyError:
        raise UsageError(f"--objective {name!r} is not known; choose one of {sorted(OBJECTIVES)}") from None
