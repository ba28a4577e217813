"""Metrics sinks on rank 0: JSON lines, TensorBoard, MLflow (inside Azure ML), summary JSON and PNG."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from bundle.atomic import atomic_write_text, save_figure
from ort_training.errors import UsageError

logger = logging.getLogger(__name__)


class MetricsLogger:
    """Writes each step's metrics to OUTPUT_DIR/metrics.jsonl (appended, so a resumed run continues
    the same file; `truncate_after` drops records past the resumed step first, so no step appears
    twice), TensorBoard, and MLflow when running in an Azure ML job."""

    def __init__(self, output_dir: str, log_dir: str | None, enabled: bool = True, truncate_after: int | None = None):
        self.enabled = enabled
        self.output_dir = Path(output_dir)
        self.history: list[dict] = []
        self._tb = self._mlflow = self._fh = None
        if not enabled:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / "metrics.jsonl"
        if truncate_after is not None and path.is_file():
            kept = [r for r in _records(path) if r["step"] <= truncate_after]
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
        self._fh = open(path, "a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir or str(self.output_dir / "tensorboard"))
        except ImportError:
            logger.warning("tensorboard is not installed; TensorBoard logging is off")
        if os.environ.get("AZUREML_RUN_ID") or os.environ.get("MLFLOW_TRACKING_URI", "").startswith("azureml"):
            try:
                import mlflow

                self._mlflow = mlflow
                if mlflow.active_run() is None:
                    mlflow.start_run()
            except Exception as exc:  # mlflow missing or tracking server unreachable: keep training
                logger.warning("MLflow logging is off (%s)", exc)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self.history.append(record)
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        step = record["step"]
        numeric = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        if self._tb is not None:
            for k, v in numeric.items():
                self._tb.add_scalar(f"train/{k}", v, step)
        if self._mlflow is not None:
            self._mlflow.log_metrics(numeric, step=step)

    def summary(self, summary: dict, curves: tuple[str, ...] = ()) -> None:
        if not self.enabled:
            return
        atomic_write_text(self.output_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        if self._mlflow is not None:
            self._mlflow.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        self.plot(self.output_dir / "training_curves.png", curves)
        logger.info("summary: %s", json.dumps(summary))

    def plot(self, path: Path, curves: tuple[str, ...] = ()) -> None:
        """Loss (plus the objective's `curves`) and learning rate of this run (the whole metrics.jsonl,
        so resumed runs included)."""
        records = read_metrics(self.output_dir / "metrics.jsonl")
        if not records:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [r["step"] for r in records]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        ax1.plot(steps, [r["loss"] for r in records], label="loss")
        for name in curves:
            ax1.plot(steps, [r.get(name) for r in records], label=name, alpha=0.7)
        ax1.set_xlabel("step")
        ax1.set_ylabel("loss")
        ax1.legend()
        ax2.plot(steps, [r["lr"] for r in records])
        ax2.set_xlabel("step")
        ax2.set_ylabel("learning rate")
        save_figure(fig, path, dpi=100)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._mlflow is not None:
            self._mlflow.end_run()
            self._mlflow = None


def read_metrics(path: str | Path) -> list[dict]:
    """Records of a metrics.jsonl; later records for the same step (after a resume) replace earlier ones."""
    by_step = {r["step"]: r for r in _records(Path(path))}
    return [by_step[k] for k in sorted(by_step)]


def _records(path: Path) -> list[dict]:
    """Parsed lines of a metrics.jsonl. A torn last line (a kill or a full disk during an append) is
    dropped with a warning: it is a step the resumed run redoes. A bad line before it is an error."""
    if not path.is_file():
        return []
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            r = json.loads(line)
            if not isinstance(r, dict) or "step" not in r:
                raise ValueError("not a step record")
        except ValueError as exc:
            if i == len(lines) - 1:
                logger.warning("%s: dropping a torn last line (%s)", path, exc)
                break
            raise UsageError(f"{path}: line {i + 1} is not a metrics record ({exc}); remove the line or the file") from None
        records.append(r)
    return records
