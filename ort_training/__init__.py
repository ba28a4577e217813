"""Two-phase LAMB pretraining of BERT with ONNX Runtime (ORTModule), eager PyTorch or torch.compile."""
