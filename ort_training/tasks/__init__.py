"""Fine-tuning task types beyond single-label classification (`python -m ort_training.finetune --task ...`)."""
