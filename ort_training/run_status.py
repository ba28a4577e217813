"""What a finished, a preempted and a half-done phase look like on disk: the contract between the
trainer, the two-phase runner and the launchers (scripts, Slurm, Azure ML)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

# Exit status of a run stopped by SIGTERM after its checkpoint was written (128 + SIGTERM, the
# shell's convention): non-zero so a pipeline does not start phase 2 on half-trained weights.
PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM
# Also written to OUTPUT_DIR on preemption (removed when a run starts): launchers such as torchrun
# report a failed worker with their own status, so wrappers look for this file instead.
PREEMPTED_MARKER = "preempted.json"
SUMMARY_FILE = "summary.json"
EXPORT_DIR = "hf_model"


def phase_finished(output_dir: str | Path, cfg=None) -> bool:
    """A phase is finished when its summary says it reached its last step and its export exists
    (unless the run was told to skip the export)."""
    out = Path(output_dir)
    try:
        summary = json.loads((out / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return False
    if summary.get("preempted") or "global_step" not in summary:
        return False
    if cfg is not None:
        skip_export = cfg.skip_hf_export
        if summary.get("max_steps") not in (None, cfg.max_steps):
            return False
    else:
        skip_export = False
    return skip_export or (out / EXPORT_DIR / "config.json").is_file()
