"""Calibration of a classifier's probabilities: expected calibration error, the reliability diagram and
temperature scaling (Guo et al., 2017), for fine-tuning's single- and multi-label tasks.

Single-label: the top class's probability against whether it is right (top-label ECE). Multi-label:
every (text, label) probability against whether the label applies. Temperature scaling divides the
logits by one T > 0 fitted on the validation set (negative log-likelihood of the per-document
probabilities); T is folded into the classifier layer, so the export and scoring give calibrated
probabilities without knowing about it. It changes no single-label decision (argmax) and, with
multi-label thresholds chosen after it, no F1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bundle.atomic import save_figure

BINS = 15
"""Equal-width confidence bins of the ECE and the diagram (Guo et al.'s choice)."""


def confidence_outcome(y: np.ndarray, probs: np.ndarray, multi_label: bool) -> tuple[np.ndarray, np.ndarray]:
    if multi_label:
        return probs.reshape(-1), np.asarray(y).reshape(-1).astype(np.float64)
    return probs.max(1), (probs.argmax(1) == np.asarray(y)).astype(np.float64)


def reliability(confidence: np.ndarray, outcome: np.ndarray, bins: int = BINS) -> dict:
    """ECE (the bin-size-weighted mean |accuracy - confidence|), maximum calibration error and the bins."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows, ece, mce = [], 0.0, 0.0
    for b in range(bins):
        sel = which == b
        n = int(sel.sum())
        if not n:
            continue
        acc, conf = float(outcome[sel].mean()), float(confidence[sel].mean())
        ece += n / len(confidence) * abs(acc - conf)
        mce = max(mce, abs(acc - conf))
        rows.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": n, "accuracy": acc, "confidence": conf})
    return {"ece": float(ece), "mce": float(mce), "bins": rows}


def plot_reliability(rel: dict, path: Path, title: str, what: str) -> Path:
    """Bars: the observed frequency per confidence bin; the diagonal is perfect calibration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, axn) = plt.subplots(2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    width = 1.0 / BINS
    for b in rel["bins"]:
        ax.bar(b["low"], b["accuracy"], width=width, align="edge", color="tab:blue", edgecolor="white", alpha=0.8)
        ax.bar(b["low"], b["confidence"] - b["accuracy"], bottom=b["accuracy"], width=width, align="edge", color="tab:red",
               alpha=0.3, edgecolor="none")
        axn.bar(b["low"], b["count"], width=width, align="edge", color="grey")
    ax.plot([0, 1], [0, 1], color="black", ls="--", lw=1)
    ax.set_ylabel(what)
    ax.set_ylim(0, 1)
    ax.set_title(f"{title}\nECE {rel['ece']:.3f}, MCE {rel['mce']:.3f} ({BINS} bins; red: gap to the diagonal)", fontsize=9)
    axn.set_xlabel("predicted probability (confidence)")
    axn.set_ylabel("count")
    axn.set_yscale("log")
    return save_figure(fig, path)


def fit_temperature(logits: torch.Tensor, doc_index: torch.Tensor, y: np.ndarray, multi_label: bool) -> float:
    """T minimising the validation NLL of the per-document probabilities (windows averaged as in finetune.predict),
    searched over log T in [-3, 3] (scipy's bounded scalar minimiser)."""
    from scipy.optimize import minimize_scalar

    from ort_training.tasks.finetuning import doc_average

    num_docs = len(y)
    target = torch.as_tensor(np.asarray(y))

    def nll(log_t: float) -> float:
        scaled = logits.double() / float(np.exp(log_t))
        probs = doc_average(torch.sigmoid(scaled) if multi_label else torch.softmax(scaled, -1), doc_index, num_docs)
        probs = probs.clamp(1e-12, 1 - 1e-12)
        if multi_label:
            t = target.double()
            return float(-(t * probs.log() + (1 - t) * (1 - probs).log()).mean())
        return float(-probs[torch.arange(num_docs), target.long()].log().mean())

    res = minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))


@torch.no_grad()
def fold_temperature(hf_model, temperature: float) -> None:
    """logits / T, folded into the last linear layer (`classifier`, BERT and ModernBERT)."""
    hf_model.classifier.weight.div_(temperature)
    hf_model.classifier.bias.div_(temperature)
