"""Entry point: `python -m ort_training.run_pretraining` / `bert-pretrain` (NVIDIA-compatible flags)."""

from __future__ import annotations

import json
import logging
import os
import sys

from .config import parse_config
from .run_status import PREEMPTED_EXIT_CODE
from .trainer import Trainer


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(argv)
    rank = int(os.environ.get("RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
    )
    trainer = Trainer(cfg)
    try:
        summary = trainer.train()
    finally:
        trainer.close()
    if summary.get("preempted"):
        logging.getLogger(__name__).warning("preempted at step %d: checkpoint written, exiting %d; rerun with "
                                            "--resume_from_checkpoint to continue", summary["global_step"], PREEMPTED_EXIT_CODE)
    if rank == 0:
        print(json.dumps(summary), flush=True)  # the last line of stdout: wrappers parse it
    # The checkpoint is on disk; a non-zero status keeps wrappers from treating a preempted phase as done.
    return PREEMPTED_EXIT_CODE if summary.get("preempted") else 0


if __name__ == "__main__":
    sys.exit(main())
