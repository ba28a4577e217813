"""BERT's masked-LM replacement rule, defined once for both halves: data_prep's NVIDIA-schema instances
(`data_prep.instances.mask_tokens`, masks stored in the HDF5) and the packed reader's masking at load time
(`ort_training.data.collate.MaskingCollator`).

Of the positions chosen for prediction, 80% become [MASK], 10% a random token and 10% keep their token
(Devlin et al. 2019; google-research/bert's `create_masked_lm_predictions` draws "80%: [MASK]", then "half of
the rest: keep, the other half: random"). Each caller chooses its positions and draws one uniform number per
position from its own generator; this module turns those numbers into the decision, so the two halves cannot
drift apart.
"""

from __future__ import annotations

import numpy as np

MASK_FRACTION = 0.8
"""u < 0.8: the position becomes [MASK]."""
KEEP_FRACTION = 0.1
"""0.8 <= u < 0.9: the position keeps its token (it is still a prediction target)."""
RANDOM_FRACTION = 1.0 - MASK_FRACTION - KEEP_FRACTION
"""u >= 0.9: the position becomes a random non-special token."""


def replacement_kinds(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(to_mask, to_random) boolean arrays for uniform draws `u` in [0, 1), one per chosen position."""
    return u < MASK_FRACTION, u >= MASK_FRACTION + KEEP_FRACTION
