"""Fine-tuning task types (`python -m ort_training.finetune --task ...`): sequence.py (single-label, multi-label,
regression), token_classification.py (entity tagging); calibration.py and hpo.py serve them."""
