"""Entry point: `python -m ort_training.run_pretraining` / `bert-pretrain` (NVIDIA-compatible flags)."""

from __future__ import annotations

import json
import logging
import os
import sys

from .config import parse_config
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
    if rank == 0:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
